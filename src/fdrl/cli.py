"""The one entry point: ``fdrl <command> ...``.

Data and configuration errors (:class:`fdrl.errors.FdrlError`) and command-line
mistakes print one line ``fdrl: error: ...`` and exit with code 2; no traceback.
An operating-system error (a file that cannot be read or written, a full disk)
prints one line and exits with code 1 (``-v`` shows its traceback). ``main`` returns
the exit code instead of raising ``SystemExit``, so it can be called from Python.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from fdrl import __version__
from fdrl.commands import COMMAND_MODULES
from fdrl.errors import FdrlError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fdrl",
        description="Multimodal (speech + text) emotion recognition: FDRL, Foal-Net, "
                    "identity disentanglement and baselines.",
    )
    parser.add_argument("--version", action="version", version=f"fdrl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        mod.register(sub)
    return parser


def format_error(exc: BaseException) -> str:
    """``fdrl: error: <first line>``, then any further lines of the message indented, so
    the first line stays the one-line summary even when a message spans lines."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    rest = [line if line.startswith("  ") else f"  {line}" for line in lines[1:]]
    return "\n".join([f"fdrl: error: {lines[0]}", *rest])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        # argparse hands `key=value` overrides to the positional only before the first
        # option; accept them after options too (`fdrl cv --run-dir x train.lr=1e-4`)
        if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*(args.overrides or []), *extra]
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # argparse: usage error (2) or --help / --version (0)
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("urllib3", "matplotlib", "numba", "httpx", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except FdrlError as exc:
        print(format_error(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fdrl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        if args.verbose:
            raise
        print(f"fdrl: error: {exc} (run with -v for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
