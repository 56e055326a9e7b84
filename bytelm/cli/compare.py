"""`bytelm compare` (a compression table: corpora x patchers) and `bytelm patch` (one text)."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

from bytelm import config as C
from bytelm.cli.common import add_command, named_entropy_model
from bytelm.evals.compression import DEFAULT_SPECS, default_entropy_model

DEFAULT_TARGET = C.PatcherConfig.target_bytes_per_patch  # entropy:X when no --patcher is given


def _have_default_entropy_model() -> bool:
    return Path(default_entropy_model(), "model.safetensors").is_file()


def corpora_from_args(corpus_args: list[str], per_language: list[str], data_cfg) -> dict[str, dict]:
    """`NAME=SRC[,SRC...]` or `SRC` (named after it) and per-language directories -> corpora."""
    from bytelm.data import load_corpus

    specs = []
    for c in corpus_args or ([] if per_language else ["stdlib"]):
        name, _, src = c.rpartition("=")
        srcs = tuple(s for s in src.split(",") if s)
        specs.append((name or Path(srcs[0]).stem or srcs[0], srcs))
    for d in per_language or []:
        exts: dict[str, int] = {}
        for p in Path(d).rglob("*"):
            if p.is_file() and p.suffix and not any(x.startswith(".") for x in p.parts):
                exts[p.suffix] = exts.get(p.suffix, 0) + 1
        for ext in sorted(e for e, n in exts.items() if n >= 2):  # a split needs two documents
            specs.append((ext.lstrip("."), (str(Path(d) / "**" / f"*{ext}"),)))
    return {
        name: load_corpus(dataclasses.replace(data_cfg, sources=srcs), progress=False)
        for name, srcs in specs
    }


# ------------------------------------------------------------------------ compare


def cmd_compare(args, overrides) -> int:
    from bytelm.evals.compression import compare, plot, to_markdown, write_csv

    run = C.override(C.load_preset(args.preset), overrides)
    entropy_model = named_entropy_model(args.entropy_model)
    specs = args.patchers
    if specs is None:
        specs = list(DEFAULT_SPECS)
        if entropy_model is None and not _have_default_entropy_model():
            specs = [s for s in specs if not s.startswith("entropy")]
            print(
                f"(no entropy model at {default_entropy_model()}: entropy rows skipped; "
                "`make demo` trains one)"
            )
    checkpoints = {}
    for c in args.checkpoint:
        spec, _, path = c.partition("=")
        if not path:
            raise ValueError(f"bytelm: --checkpoint wants SPEC=CKPT, got {c!r}")
        checkpoints[spec] = path
    corpora = corpora_from_args(args.corpus, args.per_language, run.data)
    rows = compare(
        corpora,
        specs,
        model_cfg=run.model,
        entropy_model=entropy_model,
        max_bytes=args.max_bytes or None,
        checkpoints=checkpoints,
        calibrate_on=args.calibrate_on,
        max_patch_len=args.max_patch_len,
        mode=args.mode,
        seq_len=run.data.seq_len,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = to_markdown(rows)
    (out / "compare.md").write_text(md)
    write_csv(rows, out / "compare.csv")
    plot(rows, out / "compare.png")
    print(md)
    print(f"wrote {out / 'compare.md'}, {out / 'compare.csv'}, {out / 'compare.png'}")
    return 0


def add_compare_parser(sub) -> None:
    p = add_command(
        sub,
        "compare",
        cmd_compare,
        help="compression table: corpora x patchers (bytes/patch, FLOPs/byte, bpb)",
        description="Patch held-out data with each patcher and tabulate bytes per patch, latent "
        "steps, FLOPs per byte and (with --checkpoint) bpb. Extra --data.* options set the "
        "split, e.g. --data.split tail --data.heldout_fraction 0.1.",
        config_keys="data.",
    )
    p.add_argument(
        "--corpus",
        action="append",
        help="NAME=SOURCES or SOURCES (stdlib, files, dirs, globs; comma-separated); repeat for more",
    )
    p.add_argument(
        "--per-language",
        action="append",
        metavar="DIR",
        help="one corpus per file extension under DIR",
    )
    p.add_argument(
        "--patchers",
        nargs="+",
        default=None,
        help=f"patcher specs (default: {' '.join(DEFAULT_SPECS)})",
    )
    p.add_argument(
        "--entropy-model",
        default=None,
        help=f"entropy-model checkpoint (default: {default_entropy_model()}, which `make demo` "
        "trains; entropy rows are skipped when it is missing)",
    )
    p.add_argument(
        "--preset",
        default="demo",
        help="the ByteLM config whose FLOPs/byte are reported (default: demo)",
    )
    p.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="SPEC=CKPT",
        help="a ByteLM checkpoint for a patcher spec: its held-out bpb fills the bpb column",
    )
    p.add_argument(
        "--calibrate-on",
        default=None,
        metavar="CORPUS",
        help="fit θ and BPE on this corpus and apply them to all (default: each corpus its own)",
    )
    p.add_argument(
        "--max-bytes",
        type=int,
        default=C.CALIBRATION_BYTES,
        help=f"held-out positions per corpus (0 = all; default {C.CALIBRATION_BYTES})",
    )
    p.add_argument("--max-patch-len", type=int, default=C.MAX_PATCH_LEN)
    p.add_argument("--mode", default=C.PatcherConfig.mode, choices=C.PATCHER_MODES)
    p.add_argument(
        "--out", default="runs/compare", help="directory for compare.md, compare.csv, compare.png"
    )


# -------------------------------------------------------------------------- patch


def cmd_patch(args, overrides) -> int:
    from bytelm.evals.compression import PatcherFactory, parse_spec
    from bytelm.viz import entropy_table, plot_entropies, render
    from bytelm.vocab import encode

    if args.text is not None:
        data = args.text.encode("utf-8")
    elif args.file:
        data = Path(args.file).read_bytes()
    else:
        data = sys.stdin.buffer.read()
    entropy_model = named_entropy_model(args.entropy_model)  # named: it exists, or an error
    text = args.patcher
    if text is None:
        if entropy_model is not None or _have_default_entropy_model():
            text = f"entropy:{DEFAULT_TARGET:g}"
        else:
            text = "space"
            print(
                f"(no entropy model at {default_entropy_model()}: patching with space; "
                "`bytelm train-entropy` trains one)",
                file=sys.stderr,
            )
    spec = parse_spec(text)
    learned = spec.kind == "learned"
    if learned and args.threshold is not None:  # θ as given: nothing to calibrate
        spec = dataclasses.replace(spec, value=0.0)
    factory = PatcherFactory(entropy_model, args.max_patch_len, args.mode)
    corpus = None
    if (
        spec.kind == "bpe"
        or (spec.kind == "entropy" and args.threshold is None)
        or spec.value
        and learned
    ):
        from bytelm.checkpoint import load_config
        from bytelm.data import load_corpus

        base = C.RunConfig().data
        if spec.kind == "entropy":
            base = load_config(factory.entropy_base().source).data
        if learned:  # calibrate on the checkpoint's own training split
            base = load_config(spec.path).data
        data_cfg = C.override(C.RunConfig(data=base), overrides).data
        corpus = load_corpus(data_cfg, progress=True)
    if spec.kind == "entropy" and args.threshold is not None:
        patcher, theta = factory.entropy_base(), args.threshold  # this factory's own patcher
        patcher.threshold = theta
    else:
        patcher, theta = factory.build(spec, corpus, C.CALIBRATION_BYTES)
    if learned and args.threshold is not None:
        patcher.model.patcher.threshold = theta = args.threshold
    ids = encode(data, bos=True, eos=False)[None]
    lengths = patcher.patch(ids)[0]
    lengths = lengths[lengths > 0].tolist()
    ids_l = ids[0].tolist()
    color = not args.no_color and sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    print(render(ids_l, lengths, color=color))
    print(
        f"\n{spec.text}: {len(ids_l)} bytes (with BOS) in {len(lengths)} patches, "
        f"{len(ids_l) / len(lengths):.2f} bytes/patch"
        + (f", θ = {theta:.4f} (router p)" if learned else "")
        + (f", θ = {theta:.4f} bits ({patcher.mode})" if theta is not None and not learned else "")
    )
    if spec.kind == "entropy" and (args.entropies or args.plot):
        H = patcher.entropies(ids)[0].tolist()
        if args.entropies:
            print(entropy_table(ids_l, lengths, H))
        if args.plot:
            ends = patcher.ends(ids)[0].tolist()
            plot_entropies(ids_l, H, ends, theta, patcher.mode, args.plot)
            print(f"wrote {args.plot}")
    elif args.plot or args.entropies:
        print("(entropies and --plot need an entropy:X patcher)")
    return 0


def add_patch_parser(sub) -> None:
    p = add_command(
        sub,
        "patch",
        cmd_patch,
        help="show how a text is patched (terminal colours, entropies, PNG plot)",
        description="Show how a text is patched. Extra --data.* options pick the corpus used to "
        "calibrate θ (entropy:X) or train BPE (bpe:V); default: the entropy model's own data.",
        config_keys="data.",
    )
    p.add_argument("text", nargs="?", help="the text (default: --file, or stdin)")
    p.add_argument("--file", help="read the bytes from a file")
    p.add_argument(
        "--patcher",
        default=None,
        help=f"a spec: fixed:4, space, entropy:6, bpe:8k, learned:CKPT[@6] (default: "
        f"entropy:{DEFAULT_TARGET:g} if an entropy model exists, else space)",
    )
    p.add_argument(
        "--entropy-model",
        default=None,
        help="entropy-model checkpoint; it must exist if given (default: the sibling run of "
        f"train.out_dir, {default_entropy_model()})",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="use this θ instead of calibrating entropy:X (or of learned:CKPT's own)",
    )
    p.add_argument("--mode", default=C.PatcherConfig.mode, choices=C.PATCHER_MODES)
    p.add_argument("--max-patch-len", type=int, default=C.MAX_PATCH_LEN)
    p.add_argument(
        "--entropies", action="store_true", help="also print the entropy after each byte"
    )
    p.add_argument(
        "--plot", metavar="OUT.png", help="write an entropy plot with θ and the patch starts"
    )
    p.add_argument(
        "--no-color", action="store_true", help="separate patches with '|' instead of colours"
    )


def add_parsers(sub) -> None:
    add_patch_parser(sub)
    add_compare_parser(sub)
