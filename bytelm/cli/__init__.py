"""The `bytelm` command: every sub-command and its parser.

    train, train-entropy, eval,         bytelm.cli.train
    convert, demo
    generate                            bytelm.cli.generate
    compare, patch                      bytelm.cli.compare
    sweep {plan,run}, fit               bytelm.cli.sweep

Configs come from TOML presets (`bytelm/configs/*.toml`) plus dotted overrides such as
`--model.latent.dim 256`; `bytelm train --help` lists every key and its default. A user
error is one line on stderr that starts with `bytelm: `, exit code 2 (`common.dispatch`).
Library modules never import this package; it imports them.
"""

from __future__ import annotations

from collections.abc import Sequence

from bytelm.cli import compare, generate, sweep, train
from bytelm.cli.common import Parser, dispatch

DESCRIPTION = "bytelm: tokenizer-free byte-level language models"


def build_parser() -> Parser:
    parser = Parser(prog="bytelm", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train.add_parsers(sub)
    compare.add_parsers(sub)
    sweep.add_parsers(sub)
    generate.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `bytelm ARGV...` (default: sys.argv[1:]); returns the exit code."""
    return dispatch(build_parser(), argv)


__all__ = ["build_parser", "main"]
