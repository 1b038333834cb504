"""Read the runnable snippets out of README.md and docs/*.md (the convention is in docs/README.md).

A fenced block whose language is ``bash`` or ``python`` is a snippet and runs as written. An HTML comment
on the line right above the fence changes that:

- ``<!-- not run: REASON -->``: the block is shown, never run (REASON is required: GPUs, the hub, ImageNet).
- ``<!-- offline: REASON`` + code + ``-->``: the test runs the code inside the comment instead of the block
  (same language): the documented command needs what CI lacks, the variant shows it works with what ships.
- ``<!-- slow -->``: the block runs only with ``pytest -m slow``; ``<!-- offline, slow: REASON`` ... ``-->``
  is an offline variant that runs only then.

A page whose first line is ``<!-- snippets: slow -->`` runs only with ``pytest -m slow``. Blocks of other
languages (``text``, ``console``, ``yaml``) are output or file contents and are not run.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

REPO = Path(__file__).resolve().parents[1]
RUNNABLE = {"bash", "python"}
_FENCE = re.compile(r"^```(\w*)\s*$")
_MARKER = re.compile(r"<!--\s*(not run|offline|slow)\s*(, slow)?\s*(?::\s*(.*?))?\s*(-->)?\s*$")


@dataclass
class Snippet:
    page: str
    line: int           # 1-based line of the opening fence
    lang: str
    code: str           # what the page shows
    run: Optional[str]  # what the test runs (None: not run)
    slow: bool
    marker: str         # "", "not run", "offline" or "slow"


def pages() -> List[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def page_is_slow(path: Path) -> bool:
    first = path.read_text().splitlines()[:1]
    return bool(first) and first[0].strip() == "<!-- snippets: slow -->"


def _marker_above(lines: List[str], fence: int):
    """(kind, slow, offline code) of the comment that ends on the line above ``fence`` (0-based)."""
    end = fence - 1
    if end < 0 or not lines[end].rstrip().endswith("-->"):
        return "", False, None
    start = end
    while start >= 0 and "<!--" not in lines[start]:
        start -= 1
    if start < 0:
        return "", False, None
    match = _MARKER.match(lines[start].strip())
    if not match:
        return "", False, None
    kind, slow, reason = match.group(1), bool(match.group(2)) or match.group(1) == "slow", (match.group(3) or "").strip()
    body = "\n".join(lines[start + 1:end]) + ("\n" if start < end else "")
    if kind == "offline":
        if start == end or not body.strip():
            raise ValueError(f"line {start + 1}: an offline marker needs the code to run inside the comment")
        return kind, slow, body
    if kind == "not run" and not reason:
        raise ValueError(f"line {start + 1}: 'not run' needs a reason")
    return kind, slow, None


def snippets(path: Path) -> List[Snippet]:
    lines = path.read_text().splitlines()
    found, i = [], 0
    name = str(path.relative_to(REPO))
    while i < len(lines):
        if lines[i].startswith("````"):  # a block that shows markdown source, fences included
            i += 1
            while i < len(lines) and not lines[i].startswith("````"):
                i += 1
            i += 1
            continue
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        lang, start = match.group(1), i
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            i += 1
        code = "\n".join(lines[start + 1:i]) + "\n"
        i += 1
        if lang not in RUNNABLE:
            continue
        kind, slow, offline = _marker_above(lines, start)
        run = None if kind == "not run" else (offline if kind == "offline" else code)
        found.append(Snippet(name, start + 1, lang, code, run, slow, kind))
    return found
