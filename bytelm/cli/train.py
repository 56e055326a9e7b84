"""`bytelm train`, `train-entropy`, `eval`, `convert` and `demo`: the commands that train, score
or convert a model."""

from __future__ import annotations

import sys

from bytelm.cli.common import ALL_KEYS, add_command, add_config_source, default_of, resolve_config
from bytelm.evals.bpb import bpb_of_checkpoint


def cmd_train(args, overrides) -> int:
    from bytelm.train import Trainer

    preset = args.preset or args.default_preset
    cfg = resolve_config(None if args.config else preset, args.config, overrides)
    trainer = Trainer(cfg)
    last = trainer.fit(resume=args.resume)
    if trainer.acc.is_main_process:
        print(
            f"step {trainer.step}: loss {last.get('loss', float('nan')):.4f}, "
            f"held-out bpb {last.get('bpb', float('nan')):.4f} ({cfg.data.heldout_rule()}); "
            f"checkpoint in {cfg.train.out_dir}/checkpoint"
        )
    return 0


def save_calibration(path, target: float, threshold: float, measured: float):
    """Write a re-calibrated θ into a checkpoint's config.json (model.patcher.threshold,
    measured_bytes_per_patch and target_bytes_per_patch; nothing else), atomically and
    durably; the weights are untouched. -> the checkpoint directory."""
    import json

    from bytelm.checkpoint import CONFIG_FILE, _durable_text, load_config, resolve_checkpoint

    ckpt = resolve_checkpoint(path)
    d = json.loads((ckpt / CONFIG_FILE).read_text())
    d["model"]["patcher"].update(
        threshold=threshold, measured_bytes_per_patch=measured, target_bytes_per_patch=target
    )
    _durable_text(ckpt / CONFIG_FILE, json.dumps(d, indent=2) + "\n")
    load_config(ckpt)  # it still loads
    return ckpt


def cmd_eval(args, overrides) -> int:
    if args.save and not args.target_bytes_per_patch:
        raise ValueError("bytelm: eval --save writes a calibrated θ: give --target-bytes-per-patch")
    if args.latent and args.target_bytes_per_patch:
        raise ValueError(
            "bytelm: eval --latent measures at the checkpoint's own patching; "
            "drop --target-bytes-per-patch"
        )
    if args.target_bytes_per_patch:  # turn the compression knob of an entropy or learned model
        from bytelm.evals.compression import eval_at_target

        target = args.target_bytes_per_patch
        r = eval_at_target(args.checkpoint, target, args.data or None, args.max_bytes or None,
                           args.batch_size)  # fmt: skip
        print(
            f"{args.checkpoint}: {r['bpb']:.4f} bits per byte over {r['bytes']:,} held-out bytes at "
            f"θ = {r['threshold']:.4f} ({r['calibrated_bytes_per_patch']:.2f} bytes/patch "
            f"calibrated, {r['eval_bytes_per_patch']:.2f} in the eval windows; trained at "
            f"{r['trained_target']:g}; {r['heldout_rule']})"
        )
        if args.save:
            ckpt = save_calibration(
                args.checkpoint, target, r["threshold"], r["calibrated_bytes_per_patch"]
            )
            print(f"{ckpt}: θ = {r['threshold']:.4f} (target {target:g}) saved in its config")
        return 0
    if args.latent:
        return _eval_latent(args)
    r = bpb_of_checkpoint(
        args.checkpoint, args.data or None, args.max_bytes or None, args.batch_size
    )
    print(
        f"{args.checkpoint}: {r['bpb']:.4f} bits per byte over {r['bytes']:,} held-out bytes "
        f"({r['heldout_rule']})"
    )
    return 0


def _eval_latent(args) -> int:
    from bytelm.evals.latent import ablation_of_checkpoint

    r = ablation_of_checkpoint(args.checkpoint, args.data or None, args.max_bytes or None,
                               args.batch_size)  # fmt: skip
    print(f"{args.checkpoint}: {r['bpb']:.4f} bits per byte ({r['heldout_rule']}); with the "
          "latent output")  # fmt: skip
    for kind, what in (
        ("zeroed", "zeroed (no latent)"),
        ("mean", "replaced by its batch mean (a constant: no content)"),
        ("shuffled", "of another window (the latent's content gain)"),
    ):
        print(f"  {what:<54} {r[kind]:.4f}  {r[kind] - r['bpb']:+.4f}")
    return 0


def cmd_convert(args, overrides) -> int:
    from bytelm.checkpoint import convert_legacy

    print(
        f"bytelm convert: warning: this unpickles the trainer_state.pt under {args.checkpoint}, "
        "which can run any code in it; convert only checkpoints you trust",
        file=sys.stderr,
    )
    path = convert_legacy(args.checkpoint, allow_pickle=True)
    print(f"{path}: converted to trainer_state.json + trainer_state.safetensors; --resume reads it")
    return 0


def cmd_demo(args, overrides) -> int:
    from bytelm.demo import run_demo

    preset = None if args.config else args.preset or "demo"  # --config alone: no preset
    cfg = resolve_config(preset, args.config, overrides)
    return run_demo(cfg)


def add_parsers(sub) -> None:
    for name, preset, help in (
        ("train", None, "train a model (ByteLM or the plain ByteTransformer)"),
        ("train-entropy", "entropy", "train the entropy patcher's byte LM (preset 'entropy')"),
    ):
        p = add_command(sub, name, cmd_train, help, config_keys=ALL_KEYS)
        add_config_source(p)
        p.add_argument(
            "--resume",
            action="store_true",
            help="continue from the newest complete checkpoint in OUT_DIR (none there: start "
            "afresh; a run there without one: an error)",
        )
        p.set_defaults(default_preset=preset)

    p = add_command(sub, "eval", cmd_eval, "held-out bits-per-byte of a checkpoint")
    p.add_argument("checkpoint", help="a checkpoint directory")
    p.add_argument("--data", nargs="*", help="corpus sources (default: the checkpoint's own)")
    p.add_argument(
        "--max-bytes", type=int, default=0, help="evaluate at most this many bytes (0 = all)"
    )
    p.add_argument("--batch-size", type=int, default=default_of(bpb_of_checkpoint, "batch_size"))
    p.add_argument(
        "--latent",
        action="store_true",
        help="ByteLM: also the bpb with the latent output zeroed, made constant, and taken "
        "from another window: what the latent transformer is worth",
    )
    p.add_argument(
        "--target-bytes-per-patch",
        type=float,
        default=0,
        help="entropy or learned patcher: re-calibrate θ to this mean patch size first (on a "
        "sample of the training split; the bpb and bytes/patch are then held-out)",
    )
    p.add_argument(
        "--save",
        action="store_true",
        help="with --target-bytes-per-patch: write the calibrated θ into the checkpoint's "
        "config (patcher.threshold, measured_bytes_per_patch), as training does",
    )

    p = add_command(
        sub,
        "convert",
        cmd_convert,
        "convert an old-format checkpoint (trainer_state.pt) to safetensors + JSON, in place",
        description="Convert an old-format checkpoint, whose trainer state is a pickle "
        "(trainer_state.pt), in place to trainer_state.json + trainer_state.safetensors, which "
        "--resume reads; a run's metric history goes to its metrics.jsonl. Unpickling can run "
        "code: convert only checkpoints you trust.",
    )
    p.add_argument(
        "checkpoint", help="the old checkpoint directory, or the run directory holding it"
    )

    p = add_command(
        sub,
        "demo",
        cmd_demo,
        "train a small ByteLM on the stdlib corpus and compare it with gzip and xz",
        config_keys=ALL_KEYS,
    )
    add_config_source(p)
