"""The `bytelm` command: train, train-entropy, eval, patch, compare, demo.

Configs come from TOML presets (`configs/*.toml`) plus dotted overrides such as
`--model.latent.dim 256`; `bytelm train --help` lists every key and its default.
"""

from __future__ import annotations

import argparse
import sys

from bytelm import config as C

DESCRIPTION = "bytelm: tokenizer-free byte-level language models"


class CLIError(ValueError):
    pass


def _split_overrides(rest: list[str]) -> dict[str, str]:
    """['--a.b', '1', '--c.d=x'] -> {'a.b': '1', 'c.d': 'x'}."""
    out, i = {}, 0
    while i < len(rest):
        tok = rest[i]
        if not tok.startswith("--"):
            raise CLIError(f"bytelm: unexpected argument '{tok}'")
        key = tok[2:]
        if "=" in key:
            key, val = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(rest):
                raise CLIError(f"bytelm: option '{tok}' needs a value")
            val, i = rest[i + 1], i + 2
        if "." not in key:
            raise CLIError(f"bytelm: unknown option '--{key}'; config keys look like --train.steps")
        out[key.replace("-", "_")] = val
    return out


def _config_help() -> str:
    lines = ["config keys (set any with --KEY VALUE; defaults shown):"]
    for key, typ, default in C.flat_fields():
        lines.append(f"  --{key} ({typ}, default {default!r})")
    return "\n".join(lines)


def resolve_config(
    preset: str | None, config_file: str | None, overrides: dict[str, str]
) -> C.RunConfig:
    if preset and config_file:
        raise CLIError("bytelm: give --preset or --config, not both")
    cfg = C.load(config_file) if config_file else C.load_preset(preset) if preset else C.RunConfig()
    return C.override(cfg, overrides)


def _run_parser(name: str, help: str, sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name,
        help=help,
        description=help,
        epilog=_config_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", help=f"a preset name ({', '.join(C.preset_names())}) or a TOML file")
    p.add_argument("--config", help="a TOML or JSON config file (e.g. a checkpoint's config.json)")
    return p


def cmd_train(args, overrides) -> int:
    from bytelm.train import Trainer

    preset = args.preset or getattr(args, "default_preset", None)
    cfg = resolve_config(None if args.config else preset, args.config, overrides)
    trainer = Trainer(cfg)
    last = trainer.fit(resume=args.resume)
    if trainer.acc.is_main_process:
        print(
            f"step {trainer.step}: loss {last.get('loss', float('nan')):.4f}, "
            f"held-out bpb {last.get('bpb', float('nan')):.4f}; checkpoint in {cfg.train.out_dir}/checkpoint"
        )
    return 0


def cmd_eval(args, overrides) -> int:
    from bytelm.evals.bpb import bpb_of_checkpoint

    if overrides:
        raise CLIError(f"bytelm: eval takes no config overrides (got --{next(iter(overrides))})")
    if args.target_bytes_per_patch:  # turn the compression knob of an entropy-patched model
        from bytelm.evals.compression import eval_at_target

        r = eval_at_target(args.checkpoint, args.target_bytes_per_patch, args.data or None,
                           args.max_bytes or None, args.batch_size)  # fmt: skip
        print(
            f"{args.checkpoint}: {r['bpb']:.4f} bits per byte over {r['bytes']:,} held-out bytes at "
            f"θ = {r['threshold']:.4f} ({r['calibrated_bytes_per_patch']:.2f} bytes/patch "
            f"calibrated, {r['eval_bytes_per_patch']:.2f} in the eval windows; trained at "
            f"{r['trained_target']:g})"
        )
        return 0
    r = bpb_of_checkpoint(
        args.checkpoint, args.data or None, args.max_bytes or None, args.batch_size
    )
    print(f"{args.checkpoint}: {r['bpb']:.4f} bits per byte over {r['bytes']:,} held-out bytes")
    return 0


def cmd_sweep(args, overrides) -> int:
    from bytelm.evals import sweep

    action, *argv = args.argv or ["--help"]
    if action in ("-h", "--help"):
        print("usage: bytelm sweep {plan,run} ...  (bytelm sweep plan --help for its options)")
        return 0
    if action == "plan":
        return sweep.plan_main(argv)
    if action == "run":
        return sweep.run_main(argv)
    raise CLIError(f"bytelm: unknown sweep action '{action}'; use 'bytelm sweep plan' or 'run'")


def cmd_fit(args, overrides) -> int:
    from bytelm.evals import sweep

    return sweep.fit_main(args.argv)


def cmd_demo(args, overrides) -> int:
    from bytelm.demo import run_demo

    cfg = resolve_config(args.preset or "demo", args.config, overrides)
    return run_demo(cfg)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bytelm", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)

    p = _run_parser("train", "train a model (ByteLM or the plain ByteTransformer)", sub)
    p.add_argument(
        "--resume", action="store_true", help="continue from OUT_DIR/checkpoint if it exists"
    )
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser(
        "eval", help="held-out bits-per-byte of a checkpoint", description="held-out bits-per-byte"
    )
    p.add_argument("checkpoint", help="a checkpoint directory")
    p.add_argument("--data", nargs="*", help="corpus sources (default: the checkpoint's own)")
    p.add_argument(
        "--max-bytes", type=int, default=0, help="evaluate at most this many bytes (0 = all)"
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--target-bytes-per-patch",
        type=float,
        default=0,
        help="entropy patcher: re-calibrate θ to this mean patch size on the held-out split first",
    )
    p.set_defaults(fn=cmd_eval)

    p = _run_parser("train-entropy", "train the entropy patcher's byte LM (preset 'entropy')", sub)
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/checkpoint")
    p.set_defaults(fn=cmd_train, default_preset="entropy")

    from bytelm.evals.compression import add_compare_parser
    from bytelm.viz import add_patch_parser

    add_patch_parser(sub)
    add_compare_parser(sub)

    # scaling sweeps parse their own options (bytelm.evals.sweep)
    for name, fn, help in (
        ("sweep", cmd_sweep, "plan or run a scaling sweep: bytelm sweep {plan,run} --help"),
        ("fit", cmd_fit, "fit a compression-aware scaling law to a sweep's runs CSV"),
    ):
        p = sub.add_parser(name, help=help, add_help=False, prefix_chars="\0")
        p.add_argument("argv", nargs=argparse.REMAINDER)
        p.set_defaults(fn=fn)

    p = _run_parser(
        "demo", "train a small ByteLM on the stdlib corpus and compare it with gzip and xz", sub
    )
    p.set_defaults(fn=cmd_demo)

    from bytelm.generate import add_generate_parser

    add_generate_parser(sub)  # `bytelm generate CKPT --prompt ...`

    args, rest = parser.parse_known_args(argv)
    try:
        return args.fn(args, _split_overrides(rest))
    except ValueError as e:
        msg = str(e)
        if not msg.startswith("bytelm:"):
            raise
        print(msg.splitlines()[0], file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bytelm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
