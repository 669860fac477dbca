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
from importlib.metadata import PackageNotFoundError, version

# gRPC's C core would print its own errors (E1202 ... add_port.cc) beside our one line; it
# reads this when it loads, which the imports below may do
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from stargz import logs
from stargz.cli import (
    bench,
    blob,
    convert,
    fusemanager,
    inspect,
    mount,
    optimize,
    rpull,
    snapshotter,
    status,
    store,
)
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

# Command groups, in the order `stargz --help` lists them. Later groups add themselves here.
GROUPS: tuple[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None], ...] = (
    bench.register,
    blob.register,
    convert.register,
    fusemanager.register,
    inspect.register,
    mount.register,
    optimize.register,
    rpull.register,
    snapshotter.register,
    status.register,
    store.register,
)


def _package_version() -> str:
    try:
        return version("stargz")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="eStargz lazy pulling of container images: build, inspect, serve."
    )
    parser.add_argument("--debug", action="store_true",
                        help="log debug messages and show tracebacks on errors")
    parser.add_argument("--log-level", dest="global_log_level", type=_level, metavar="LEVEL",
                        help=f"{logs.LEVEL_NAMES} (default warning; debug with --debug)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_package_version()}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for register in GROUPS:
        register(commands)
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
    parser = build_parser()
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
