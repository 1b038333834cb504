"""Write docs/cli.md, the CLI reference, from the argparse parsers themselves (so it cannot go stale:
tests/test_docs.py fails when the committed file differs from what this prints).

    python tools/cli_reference.py            # rewrite docs/cli.md
    python tools/cli_reference.py --check    # exit 1 when docs/cli.md is stale
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WIDTH = 100  # argparse wraps help to the terminal: fixed here so the file is the same on every machine


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:  # argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def _help(parser: argparse.ArgumentParser) -> str:
    # Python < 3.10 titles the options "optional arguments"; one spelling keeps the file machine-independent
    return parser.format_help().replace("optional arguments:", "options:").rstrip() + "\n"


def render() -> str:
    # Defaults that depend on the machine are shown as a user reads them: ~ for the home directory
    fixed = {"COLUMNS": str(WIDTH), "XDG_CACHE_HOME": "~/.cache"}
    saved = {key: os.environ.get(key) for key in fixed}
    for key, value in fixed.items():
        _set_env(key, value)
    try:
        sys.path.insert(0, str(REPO))
        from mixa.cli import build_parser

        parser = build_parser()
        parts = ["# CLI reference\n",
                 "Generated from the argparse parsers by `python tools/cli_reference.py` "
                 "(`tests/test_docs.py` fails when this file is stale). The guides: [docs/README.md](README.md).\n",
                 "```text\n" + _help(parser) + "```\n"]
        for name, sub in _subparsers(parser).items():
            parts.append(f"## mixa {name}\n")
            parts.append("```text\n" + _help(sub) + "```\n")
            for inner_name, inner in _subparsers(sub).items():
                parts.append(f"### mixa {name} {inner_name}\n")
                parts.append("```text\n" + _help(inner) + "```\n")
        return "\n".join(parts)
    finally:
        sys.path.remove(str(REPO))
        for key, value in saved.items():
            _set_env(key, value)


def _set_env(key: str, value) -> None:
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when docs/cli.md differs, write nothing")
    args = ap.parse_args()
    target = REPO / "docs" / "cli.md"
    text = render()
    if args.check:
        current = target.read_text() if target.exists() else ""
        if current != text:
            print(f"{target} is stale: run python tools/cli_reference.py", file=sys.stderr)
            return 1
        return 0
    target.parent.mkdir(exist_ok=True)
    target.write_text(text)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
