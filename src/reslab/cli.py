"""The ``reslab`` command line: one subcommand per module of :mod:`reslab.commands`.

Errors in the user's input print as one line (``reslab CMD: error: ...``) with exit status 1;
bad flag values are argparse's usage errors, also one line, exit status 2, with the closest
command or flag suggested for a mistyped one. An operating-system error is named by its path
and reason, without its errno. Output piped into a program that stops reading
(``reslab models | head -5``) ends normally with status 0. ``RESLAB_DEBUG=1`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import importlib
import os
import re
import sys
import warnings
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
    "landscape": "reslab.commands.landscape",
    "shattered": "reslab.commands.shattered",
    "curvature": "reslab.commands.curvature",
    "similarity": "reslab.commands.similarity",
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
        self.exit(2, f"{self.prog}: error: {suggest_choice(message)} (`{self.prog} --help` lists the options)\n")


def suggest_choice(message: str) -> str:
    """argparse's "invalid choice: 'trian' (choose from 'models', ...)" as "invalid choice:
    'trian'; did you mean 'train'?" when one choice is close (Python before 3.14 does not say)."""
    match = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if not match:
        return message
    choices = [choice.strip().strip("'\"") for choice in match.group(2).split(",")]
    close = difflib.get_close_matches(match.group(1), choices, n=1, cutoff=0.6)
    if not close:
        return message
    return message[:match.start()] + f"invalid choice: '{match.group(1)}'; did you mean '{close[0]}'?"


def suggest_flags(parser: argparse.ArgumentParser, unknown: list[str]) -> str:
    """' (did you mean --epochs?)' for an unrecognised flag close to one ``parser`` knows, else ''."""
    known = [flag for action in parser._actions for flag in action.option_strings]
    for token in unknown:
        if token.startswith("--"):
            close = difflib.get_close_matches(token.split("=")[0], known, n=1, cutoff=0.75)
            if close:
                return f"; did you mean {close[0]}?"
    return ""


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
        command = parser.subcommands[args.command]
        command.error(f"unrecognized arguments: {' '.join(unknown)}{suggest_flags(command, unknown)}")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    try:
        args = parse_arguments(build_parser(), argv)
    except SystemExit:  # --help, --version or a usage error: their text may go into a closed pipe too
        flush_stdout()
        raise
    except BrokenPipeError:
        return pipe_closed()
    with warnings.catch_warnings():  # restores showwarning when the command ends
        warnings.showwarning = one_line_warnings(args.command, warnings.showwarning)
        return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    """``args.handler(args)``, with the user's errors as one line and a closed pipe as a normal end."""
    try:
        status = int(args.handler(args) or 0)
        flush_stdout()
        return status
    except BrokenPipeError:  # `reslab models | head -5`: the reader has all it wanted
        return pipe_closed()
    except KeyboardInterrupt:
        print(f"reslab {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ReslabError, ValueError, OSError) as exc:
        if os.environ.get("RESLAB_DEBUG"):
            raise
        message = describe_os_error(exc) if isinstance(exc, OSError) else " ".join(str(exc).split())
        print(f"reslab {args.command}: error: {message or type(exc).__name__}", file=sys.stderr)
        return 1
    except (MemoryError, RuntimeError) as exc:
        if os.environ.get("RESLAB_DEBUG") or not out_of_memory(exc):
            raise
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        print(f"reslab {args.command}: error: out of memory ({reason}); use a smaller --batch-size, fewer or "
              "smaller images", file=sys.stderr)
        return 1


def one_line_warnings(command: str, show_other):
    """A ``warnings.showwarning`` that prints reslab's own warnings (an unwritable data cache,
    say) as one line, ``reslab CMD: warning: ...``, instead of Python's file, line number,
    category and source line; other libraries' warnings go to ``show_other`` as before."""
    package = os.path.dirname(os.path.abspath(__file__))

    def show(message, category, filename, lineno, file=None, line=None):
        if not os.path.abspath(filename).startswith(package + os.sep) or os.environ.get("RESLAB_DEBUG"):
            return show_other(message, category, filename, lineno, file, line)
        print(f"reslab {command}: warning: {' '.join(str(message).split())}", file=file or sys.stderr)

    return show


def flush_stdout() -> None:
    """Flush standard output now, so that a closed pipe shows here and not at interpreter exit."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        pipe_closed()


def pipe_closed() -> int:
    """The reader of standard output is gone (``| head``): a normal end, status 0, no message.
    Standard output is pointed at the null device so that Python's final flush stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):  # stdout replaced (a test's capture): nothing to redirect
        pass
    return 0


# What to do about an operating-system error, by errno (the message names the path and reason).
OS_ERROR_ADVICE = {
    errno.EACCES: "check its permissions or choose another path",
    errno.EPERM: "check its permissions or choose another path",
    errno.EROFS: "it is on a read-only file system; choose another path",
    errno.ENOSPC: "the disk is full; free some space or choose another disk",
    errno.EDQUOT: "the disk quota is used up; free some space or choose another disk",
    errno.ENOENT: "check the path",
    errno.EEXIST: "choose another name, or remove it",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder; give a file",
    errno.ENAMETOOLONG: "choose a shorter name",
}


def describe_os_error(exc: OSError) -> str:
    """'PATH: permission denied; check its permissions...' for Python's '[Errno 13] Permission
    denied: PATH' (an OSError without errno keeps its own text)."""
    if not exc.strerror:
        return " ".join(str(exc).split())
    reason = exc.strerror[:1].lower() + exc.strerror[1:]
    paths = " -> ".join(os.fsdecode(name) for name in (exc.filename, exc.filename2) if name is not None)
    advice = OS_ERROR_ADVICE.get(exc.errno, "")
    return (f"{paths}: " if paths else "") + reason + (f"; {advice}" if advice else "")


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says that an allocation failed (Python's MemoryError, or PyTorch's CPU or
    CUDA allocator), as a too large batch or image size causes."""
    text = str(exc)
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or any(
        phrase in text for phrase in ("can't allocate memory", "not enough memory", "out of memory",
                                      "Storage size calculation overflowed"))
