#!/usr/bin/env python
"""Rank analysis (RALA paper Figs. 2/4/5/8) from a checkout: the same as `mixa analyze rank`.

    python tools/rank_analysis.py deit_s_rala/ --data /data/imagenet --images 64 --json ranks.json --plot ranks.png
    python tools/rank_analysis.py ravlt_t --checkpoint RAVLT_T.pth --data /data/imagenet
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixa.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["analyze", "rank", *sys.argv[1:]]))
