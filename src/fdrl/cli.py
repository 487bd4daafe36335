"""The one entry point: ``fdrl <command> ...``.

Data and configuration errors (:class:`fdrl.errors.FdrlError`) print one line
``fdrl: error: ...`` and exit with code 2; no traceback.
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
        print(f"fdrl: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fdrl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
