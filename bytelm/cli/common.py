"""What every `bytelm` command shares: the parser class, config overrides, the error rule.

The rule: a user error is one line on stderr that starts with `bytelm: `, and the exit code
is 2; a traceback means a bug. Library code raises `ValueError("bytelm: ...")` (ConfigError,
ScalingError, CheckpointError, ... are ValueErrors); `dispatch` turns it into that line. Usage
errors that argparse finds become the same kind of line (`Parser.error`), and so does an
OSError that names a path (no space, no permission): the environment refused, not a bug.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

from bytelm import config as C

ALL_KEYS = ""  # config_keys of a command that takes every config key (a prefix of all keys)


class CLIError(ValueError):
    """A user error found by the command line itself; the message starts with `bytelm: `."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one `bytelm: ...` line, like every user error."""

    def _name(self) -> str:
        return self.prog.removeprefix("bytelm").strip()

    def error(self, message):
        where = f"{self._name()}: " if self._name() else ""
        raise CLIError(f"bytelm: {where}{message}; see '{self.prog} --help'")

    def _check_value(self, action, value):
        if isinstance(action, argparse._SubParsersAction) and value not in action.choices:
            what = f"{self._name()} action" if self._name() else "command"
            raise CLIError(
                f"bytelm: unknown {what} '{value}'; choose from {', '.join(action.choices)}"
            )
        super()._check_value(action, value)


def paragraphs(text: str, width: int = 79) -> str:
    """A docstring or long help text as filled paragraphs (help keeps epilogs verbatim)."""
    parts = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(textwrap.fill(" ".join(p.split()), width) for p in parts)


def config_help(prefix: str = ALL_KEYS) -> str:
    """The config keys under `prefix` with their types and defaults, for a command's --help."""
    lines = ["config keys (set any with --KEY VALUE; defaults shown):"]
    for key, typ, default in C.flat_fields():
        if key.startswith(prefix):
            lines.append(f"  --{key} ({typ}, default {default!r})")
    return "\n".join(lines)


def add_command(
    sub,
    name: str,
    fn: Callable,
    help: str,
    description: str | None = None,
    config_keys: str | None = None,
) -> Parser:
    """A sub-command parser that runs `fn(args, overrides)`.

    config_keys: None if the command takes no `--section.field VALUE` options, ALL_KEYS if it
    takes every key, or a prefix such as "data." that the keys it takes start with; its --help
    then lists them.
    """
    p = sub.add_parser(
        name,
        help=help,
        description=paragraphs(description or help),
        epilog=None if config_keys is None else config_help(config_keys),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(fn=fn, config_keys=config_keys, parser=p)
    return p


def default_of(fn: Callable, name: str):
    """The default of `fn`'s parameter `name`: an option shows and uses the library's own."""
    return inspect.signature(fn).parameters[name].default


# ------------------------------------------------------------------ config overrides


def split_overrides(rest: Sequence[str], prog: str, config_keys: str | None) -> dict[str, str]:
    """['--a.b', '1', '--c.d=x'] -> {'a.b': '1', 'c.d': 'x'}, checked against what the
    command `prog` takes (see `add_command`)."""
    if config_keys is None and rest:
        tok = rest[0]
        what = "unknown option" if tok.startswith("-") else "unexpected argument"
        raise CLIError(f"bytelm: {what} '{tok}'; see '{prog} --help'")
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
            example = f"--{config_keys}KEY" if config_keys else "--train.steps"
            raise CLIError(f"bytelm: unknown option '--{key}'; config keys look like {example}")
        if not key.startswith(config_keys):
            raise CLIError(
                f"bytelm: {prog.removeprefix('bytelm ')} takes only --{config_keys}* config "
                f"options (got --{key})"
            )
        out[key.replace("-", "_")] = val
    return out


def resolve_config(
    preset: str | None, config_file: str | None, overrides: dict[str, str]
) -> C.RunConfig:
    """A preset (name or file) or a config file, then the dotted overrides."""
    if preset and config_file:
        raise CLIError("bytelm: give --preset or --config, not both")
    cfg = C.load(config_file) if config_file else C.load_preset(preset) if preset else C.RunConfig()
    return C.override(cfg, overrides)


def add_config_source(p: argparse.ArgumentParser) -> None:
    """--preset and --config, for the commands that build a RunConfig."""
    p.add_argument("--preset", help=f"a preset name ({', '.join(C.preset_names())}) or a TOML file")
    p.add_argument("--config", help="a TOML or JSON config file (e.g. a checkpoint's config.json)")


def named_entropy_model(path: str | None) -> str | None:
    """An --entropy-model the user named: it must exist (no silent fallback to another patcher)."""
    if path is not None and not Path(path, "model.safetensors").is_file():
        raise CLIError(
            f"bytelm: no entropy model at '{path}'; --entropy-model needs an entropy model "
            "checkpoint (a directory with model.safetensors, as `bytelm train-entropy` writes)"
        )
    return path


# ------------------------------------------------------------------------- running


def dispatch(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse argv and run the chosen command: its exit code, or 2 after one `bytelm: ` line."""
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 prints escaped
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        args, rest = parser.parse_known_args(argv)
        overrides = split_overrides(rest, args.parser.prog, args.config_keys)
        return args.fn(args, overrides)
    except ValueError as e:
        msg = str(e)
        if not msg.startswith("bytelm:"):
            raise
        print(msg.splitlines()[0], file=sys.stderr)
        return 2
    except OSError as e:
        if e.filename is None:  # no path to name: not about the user's files, so a bug
            raise
        # a path the user gave, or the disk, refused (a file where a directory must be, no
        # permission, no space): say which path and why instead of a traceback
        print(f"bytelm: {e.strerror or e}: '{e.filename}'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bytelm: interrupted", file=sys.stderr)
        return 130
