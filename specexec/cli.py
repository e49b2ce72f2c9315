"""The ``specexec`` command line."""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import SpecExecError

# name -> module with HELP, add_arguments(parser) and run(args)
COMMANDS = {
    "generate": "specexec.commands.generate",
    "chat": "specexec.commands.chat",
    "serve": "specexec.commands.serve",
    "distill": "specexec.commands.distill",
    "bench": "specexec.commands.bench",
    "plot": "specexec.commands.plot",
    "profile": "specexec.commands.profile",
    "viz": "specexec.commands.viz",
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="specexec", description="Massively parallel speculative decoding.")
    parser.add_argument("--version", action="version", version=f"specexec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args._module.run(args) or 0
    except SpecExecError as err:
        print(f"specexec: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("specexec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
