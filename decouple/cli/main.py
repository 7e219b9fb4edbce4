"""The ``decouple`` command line's entry point and its registry of subcommands.

Subcommands live in a registry (:data:`COMMANDS`): a :class:`Command` names itself, adds its
arguments and runs; a module adds one with :func:`register_command` (``commands.py`` adds
``inspect``, ``splits`` and ``export``; ``demo.py`` adds ``demo``).
Errors for bad input (any :class:`~decouple.errors.DecoupleError`) print one line saying what is
wrong and how to fix it, and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .._version import __version__
from ..errors import DecoupleError

__all__ = ["Command", "COMMANDS", "register_command", "build_parser", "main", "USAGE_ERROR"]

USAGE_ERROR = 2


@dataclass(frozen=True)
class Command:
    """A subcommand: ``add_arguments(parser)`` declares its options, ``run(args)`` returns the exit status."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str = ""


COMMANDS: dict[str, Command] = {}


def register_command(command: Command) -> Command:
    """Add a subcommand to ``decouple`` (later registrations of the same name replace earlier ones)."""
    COMMANDS[command.name] = command
    return command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="decouple", description="Look at what decouple does to a model before training it."
    )
    parser.add_argument("--version", action="version", version=f"decouple {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS.values():
        p = sub.add_parser(command.name, help=command.help, description=command.description or command.help)
        command.add_arguments(p)
        p.set_defaults(run=command.run)
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if "example_inputs" in text:
        text += " (on the command line the example input comes from --input-shape, --input-dtype and --input-high)"
    return text


def _show_warning(
    message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    print(f"decouple: warning: {_one_line(Warning(message))}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``decouple`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors exit with status 2 here
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return int(args.run(args))
        except DecoupleError as exc:
            print(f"decouple {args.command}: error: {_one_line(exc)}", file=sys.stderr)
            return USAGE_ERROR
        except KeyboardInterrupt:
            print("decouple: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:
            return 0
