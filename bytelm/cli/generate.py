"""`bytelm generate CKPT --prompt ...`: stream a continuation to stdout as raw bytes."""

from __future__ import annotations

import sys

from bytelm.cli.common import add_command
from bytelm.generate import GenerationConfig, generate


def cmd_generate(args, overrides) -> int:
    import codecs

    from bytelm.checkpoint import load_model

    given = {
        "max_new_bytes": args.max_bytes,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "seed": args.seed,
        "speculative": args.speculative or (args.draft_heads is not None) or None,
        "draft_heads": args.draft_heads,
        "cross_patches": args.cross_patches,
        "stop": args.stop and tuple(codecs.escape_decode(s.encode())[0] for s in args.stop),
    }
    cfg = GenerationConfig(**{k: v for k, v in given.items() if v is not None})
    prompt = sys.stdin.buffer.read() if args.prompt == "-" else args.prompt.encode("utf-8")
    model, _ = load_model(args.checkpoint, args.device)
    stream = generate(model, prompt, **vars(cfg), stream=True, compile=args.compile)
    out = sys.stdout.buffer
    for chunk in stream:
        out.write(chunk)
        out.flush()
    print("\n" + stream.result.stats.summary(), file=sys.stderr)
    return 0


def add_parsers(sub) -> None:
    """Options left unset take their defaults from `GenerationConfig`."""
    d = GenerationConfig()
    p = add_command(
        sub,
        "generate",
        cmd_generate,
        help="continue a prompt with a checkpoint, streaming raw bytes to stdout",
        description="Continue a prompt with a checkpoint. The new bytes go to stdout as raw "
        "bytes (invalid UTF-8 included), the statistics to stderr.",
    )
    p.add_argument("checkpoint", help="a checkpoint directory")
    p.add_argument("--prompt", default="", help="the prompt text, or - to read bytes from stdin")
    p.add_argument("--max-bytes", type=int, help=f"new bytes at most (default {d.max_new_bytes})")
    p.add_argument("--temperature", type=float, help=f"0 = greedy (default {d.temperature})")
    p.add_argument(
        "--top-k",
        type=int,
        help=f"sample from the k most likely bytes (0 = all; default {d.top_k})",
    )
    p.add_argument(
        "--top-p", type=float, help=f"nucleus sampling mass (1 = all; default {d.top_p})"
    )
    p.add_argument("--seed", type=int, help=f"random seed (default {d.seed})")
    p.add_argument(
        "--speculative", action="store_true", default=None, help="self-speculative decoding"
    )
    p.add_argument(
        "--draft-heads",
        type=int,
        help="bytes drafted per forward pass, implies --speculative (default: every extra head)",
    )
    p.add_argument(
        "--cross-patches",
        action="store_true",
        default=None,
        help="speculative: verify drafts across patch ends too (default: a verify block stops "
        "at the end of its patch, so the latent steps once per patch)",
    )
    p.add_argument(
        "--stop",
        action="append",
        help="stop after this string (backslash escapes such as \\n work); repeatable",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="compile the decode step (torch.compile; CUDA graphs on CUDA): pays on long "
        "generations; a rule or learned patcher only",
    )
