"""The `mixa` command: a thin layer over the Python API.

Each subcommand is a module ``mixa.cli.<name>`` with ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. Command modules import torch (and anything heavy) inside ``run`` only, so that
``--help`` is fast and ``mixa profile model.onnx`` works without torch.
"""
from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
from typing import List, Optional

# Order = the pipeline. A name whose module is missing is simply not offered.
COMMANDS = ["convert", "info", "transfer", "distill", "eval", "export", "profile", "analyze", "plan", "quickstart"]
# Commands whose killed runs continue: with --resume, or by running the same command again.
RESUMED_BY_FLAG = {"distill", "transfer"}
RESUMED_BY_RERUN = {"plan": "rerun the same command to continue: finished rows are kept in --work-dir",
                    "quickstart": "rerun the same command to continue after the last finished stage"}


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
    try:
        try:
            return _main(argv)
        except SystemExit:  # argparse's --help / usage errors: flush here, where a closed pipe is handled
            sys.stdout.flush()
            raise
    except BrokenPipeError:
        return _closed_pipe()


def _main(argv: Optional[List[str]]) -> int:
    from mixa.errors import MixaError
    from mixa.io import os_error_message

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        code = int(args._run(args) or 0)
        sys.stdout.flush()  # a reader that went away shows up here, inside the command, not at exit
        return code
    except BrokenPipeError:
        raise
    except MixaError as err:
        if args.debug:
            raise
        print(f"mixa {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"mixa {args.command}: interrupted{_resume_hint(args.command, argv)}", file=sys.stderr)
        return 130
    except OSError as err:  # the file system said no: name the path and the reason
        if args.debug:
            raise
        print(f"mixa {args.command}: error: {os_error_message(err)}", file=sys.stderr)
        return 1
    except Exception as err:  # an unexpected failure: still one line unless --debug
        if args.debug:
            raise
        print(f"mixa {args.command}: error: {type(err).__name__}: {err} (run with --debug for a traceback)",
              file=sys.stderr)
        return 1


def _resume_hint(command: str, argv: Optional[List[str]]) -> str:
    """How to continue a killed run of ``command`` (empty for commands that keep nothing)."""
    if command in RESUMED_BY_FLAG:
        words = list(sys.argv[1:] if argv is None else argv)
        if "--resume" not in words:
            words.append("--resume")
        return "; continue it with: mixa " + " ".join(shlex.quote(w) for w in words)
    if command in RESUMED_BY_RERUN:
        return f"; {RESUMED_BY_RERUN[command]}"
    return ""


def _closed_pipe() -> int:
    """The reader of stdout went away (``mixa info -m DIR | head -1``): end quietly, as Unix tools do
    (status 141 = killed by SIGPIPE). stdout is pointed at /dev/null so that the interpreter's last flush
    does not report the same broken pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real stdout (embedded, captured): nothing will flush to the pipe
        pass
    return 141  # 128 + SIGPIPE
