"""What the ONNX Runtime side-by-side benchmarks of this folder share: the line naming the machine and the
timing, and the results written as ``NAME[_TAG].json`` (the command, environment and records) and ``.md``."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

from mixa.profile.records import describe_cpu


def ort_header(env: dict, rounds: int, what: str = "") -> str:
    """The CPU, ONNX Runtime version and timing settings of a 1-thread round-robin run, and its command."""
    return (f"CPU: {describe_cpu(env)}; ONNX Runtime "
            f"{env['versions']['onnxruntime']}, 1 thread, batch 1, thread CPU time, {rounds} rounds "
            f"round-robin in one process; {what + '; ' if what else ''}command: python {' '.join(sys.argv)}")


def write_results(output: Optional[str], name: str, tag: Optional[str], env: dict, rounds: int, records: list,
                  header: str, table: str) -> None:
    """``output/name[_tag].json`` and ``.md``; nothing when ``output`` is None."""
    if not output:
        return
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / (name + (f"_{tag}" if tag else ""))
    stem.with_suffix(".json").write_text(json.dumps({"command": " ".join(sys.argv), "environment": env,
                                                     "rounds": rounds, "records": records}, indent=1))
    stem.with_suffix(".md").write_text(header + "\n\n" + table + "\n")
    print(f"wrote {stem}.json and {stem}.md", file=sys.stderr)
