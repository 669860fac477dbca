"""The ``stargz`` command: argument parsing, logging, and the one place errors meet the user.

Each command group lives in its own module exposing ``register(subparsers)``; a registered
command sets ``handler`` (``Callable[[argparse.Namespace], int]``) in its parser's defaults.
Exit status: 0 success, 1 a StargzError or OS error (one line on stderr), 2 usage errors,
130 interrupted. ``--debug`` adds debug logging and the traceback; ``--log-level`` takes the
reference's level names (trace ... panic, see ``stargz.logs``).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence

# gRPC's C core would print its own errors (E1202 ... add_port.cc) beside our one line; it
# reads this when it loads, which the imports below may do
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import importlib

from stargz import logs
from stargz.errors import ConfigError, StargzError
from stargz.printable import printable

PROG = "stargz"
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# Modules that need a system library and so come with an extra, not by default.
OPTIONAL_MODULES = {
    "pyfuse3": "FUSE support: pip install 'stargz[fuse]' "
               "(builds against libfuse3: apt-get install fuse3 libfuse3-dev pkg-config)",
}

# Command groups, in the order `stargz --help` lists them: the module under stargz.cli and the
# commands its ``register(subparsers)`` adds. Only the named command's module is imported (the
# daemons' start-up time counts: importing all of them took ~250 ms); help and unknown commands
# import them all.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("bench", ("bench",)),
    ("blob", ("blob",)),
    ("convert", ("convert",)),
    ("fusemanager", ("fuse-manager",)),
    ("inspect", ("get-toc-digest",)),
    ("mount", ("mount", "umount")),
    ("optimize", ("optimize",)),
    ("rpull", ("rpull",)),
    ("snapshotter", ("snapshotter",)),
    ("status", ("status",)),
    ("store", ("store",)),
)


class _VersionAction(argparse.Action):
    """--version, reading the installed version only when asked (importlib.metadata is slow)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=default,
                         help=help or "show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("stargz")
        except PackageNotFoundError:
            found = "unknown"
        parser.exit(message=f"{parser.prog} {found}\n")


def _groups_for(argv: Sequence[str] | None) -> list[str]:
    """The command modules the parser needs: the named command's alone, or all of them."""
    words = list(sys.argv[1:] if argv is None else argv)
    if "--log-level" in words:  # its value is not a command
        del words[words.index("--log-level"):words.index("--log-level") + 2]
    command = next((word for word in words if not word.startswith("-")), None)
    named = [module for module, commands in GROUPS if command in commands]
    return named or [module for module, _ in GROUPS]


def build_parser(argv: Sequence[str] | None = ()) -> argparse.ArgumentParser:
    """The parser for ``argv``'s command (every command when ``argv`` names none)."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="eStargz lazy pulling of container images: build, inspect, serve."
    )
    parser.add_argument("--debug", action="store_true",
                        help="log debug messages and show tracebacks on errors")
    parser.add_argument("--log-level", dest="global_log_level", type=_level, metavar="LEVEL",
                        help=f"{logs.LEVEL_NAMES} (default warning; debug with --debug)")
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for module in _groups_for(argv):
        importlib.import_module(f"stargz.cli.{module}").register(commands)
    return parser


def _level(text: str) -> str:
    try:
        return logs.level_name(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _setup_logging(args: argparse.Namespace) -> None:
    logs.configure(args.global_log_level or ("debug" if args.debug else "warning"))


def _one_line(err: BaseException) -> str:
    """The error as one line: its message, or its class name when it has none."""
    if isinstance(err, OSError) and err.strerror:
        where = f": {err.filename}" if err.filename is not None else ""
        text = f"{err.strerror}{where}"
    else:
        text = str(err) or type(err).__name__
    return printable(" ".join(text.split()))  # names in it may come from an image


def _report(err: BaseException, debug: bool) -> None:
    if debug:
        traceback.print_exception(err, file=sys.stderr)
    print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)  # usage errors exit 2 here, with argparse's message
    _setup_logging(args)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except (StargzError, OSError) as err:
        if isinstance(err, BrokenPipeError):
            return _quiet_broken_pipe()
        _report(err, args.debug)
        return EXIT_ERROR
    except ModuleNotFoundError as err:
        if err.name not in OPTIONAL_MODULES:
            raise
        _report_missing(err.name, args.debug, err)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _report_missing(module: str, debug: bool, err: BaseException) -> None:
    if debug:
        traceback.print_exception(err, file=sys.stderr)
    print(f"{PROG}: error: this command needs {module}, which is not installed; "
          f"{OPTIONAL_MODULES[module]}", file=sys.stderr)


def _quiet_broken_pipe() -> int:
    """The reader of our stdout went away (`stargz blob ls | head`): stop without a traceback."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail again
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
