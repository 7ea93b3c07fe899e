"""The ``reslab`` command line: one subcommand per module of :mod:`reslab.commands`.

Errors in the user's input print as one line (``reslab CMD: error: ...``) with exit status 1;
bad flag values are argparse's usage errors, also one line, exit status 2. ``RESLAB_DEBUG=1``
shows tracebacks.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional

from reslab import __version__
from reslab.errors import ReslabError

# Subcommand name -> module. Order is the order of `reslab --help`.
COMMANDS: dict[str, str] = {
    "models": "reslab.commands.models",
    "predict": "reslab.commands.predict",
    "export": "reslab.commands.export",
    "bench": "reslab.commands.bench",
    "train": "reslab.commands.train",
    "eval": "reslab.commands.eval",
    "plot": "reslab.commands.plot",
    "lesion": "reslab.commands.lesion",
    "paths": "reslab.commands.paths",
    "responses": "reslab.commands.responses",
    "degradation": "reslab.commands.degradation",
    "sdepth": "reslab.commands.sdepth",
    "report": "reslab.commands.report",
}


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults and keeps the paragraphs of descriptions; a default of None (nothing
    given) or one that the help text already states is not repeated."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False and action.nargs == 0 or "default" in text:
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """A usage error is one line that ends with a pointer to ``--help``, not the whole usage
    (``reslab train``'s alone is 35 lines that push the message off a small screen)."""

    subcommands: dict[str, argparse.ArgumentParser]  # set on the top-level parser by build_parser

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")


def build_parser() -> _Parser:
    parser = _Parser(
        prog="reslab", formatter_class=_Formatter,
        description="Residual networks: a model zoo, a fast CIFAR trainer and the experiments that explain them.\n"
                    "Run `reslab COMMAND --help` for a command's options.")
    parser.add_argument("--version", action="version", version=f"reslab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    parser.subcommands = sub.choices  # name -> its parser, for parse_arguments
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        summary = module.HELP.strip().split("\n")[0]
        cmd = sub.add_parser(name, help=summary, description=module.HELP.strip(), formatter_class=_Formatter)
        module.add_arguments(cmd)
        cmd.set_defaults(handler=module.run)
    return parser


def parse_arguments(parser: _Parser, argv: Optional[list[str]]) -> argparse.Namespace:
    """``parser.parse_args``, except that flags no subcommand knows are reported by that
    subcommand (``reslab lesion: error: unrecognized arguments: ...``), not by ``reslab``."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.subcommands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_arguments(build_parser(), argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print(f"reslab {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ReslabError, ValueError, OSError) as exc:
        if os.environ.get("RESLAB_DEBUG"):
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"reslab {args.command}: error: {message}", file=sys.stderr)
        return 1
    except (MemoryError, RuntimeError) as exc:
        if os.environ.get("RESLAB_DEBUG") or not out_of_memory(exc):
            raise
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        print(f"reslab {args.command}: error: out of memory ({reason}); use a smaller --batch-size, fewer or "
              "smaller images", file=sys.stderr)
        return 1


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says that an allocation failed (Python's MemoryError, or PyTorch's CPU or
    CUDA allocator), as a too large batch or image size causes."""
    text = str(exc)
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or any(
        phrase in text for phrase in ("can't allocate memory", "not enough memory", "out of memory",
                                      "Storage size calculation overflowed"))
