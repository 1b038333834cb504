"""The `mixa` command: a thin layer over the Python API.

Each subcommand is a module ``mixa.cli.<name>`` with ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. Command modules import torch (and anything heavy) inside ``run`` only, so that
``--help`` is fast and ``mixa profile model.onnx`` works without torch.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

# Order = the pipeline. A name whose module is missing is simply not offered.
COMMANDS = ["convert", "info", "transfer", "distill", "eval", "export", "profile", "analyze", "plan", "quickstart"]


def _command_modules():
    for name in COMMANDS:
        try:
            yield name, importlib.import_module(f"mixa.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"mixa.cli.{name}":
                raise


def build_parser() -> argparse.ArgumentParser:
    from mixa import __version__

    parser = argparse.ArgumentParser(
        prog="mixa", description="Mixed softmax/linear attention for pretrained ViTs: "
                                 "convert -> distill -> export -> profile.")
    parser.add_argument("--version", action="version", version=f"mixa {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in _command_modules():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show full tracebacks on errors")
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from mixa.errors import MixaError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except MixaError as err:
        if args.debug:
            raise
        print(f"mixa {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"mixa {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # an unexpected failure: still one line unless --debug
        if args.debug:
            raise
        print(f"mixa {args.command}: error: {type(err).__name__}: {err} (run with --debug for a traceback)",
              file=sys.stderr)
        return 1
