"""mixa info: what a saved mixa model directory holds."""
from __future__ import annotations

import argparse
import json

HELP = "show the config of a saved mixa model directory"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", metavar="DIR", help="a directory written by mixa convert / mixa.save")
    p.add_argument("--json", action="store_true", help="print the raw config as JSON")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from safetensors import safe_open

    from mixa.io import WEIGHTS_NAME, read_config
    from mixa.report import human, table

    cfg = read_config(args.directory)
    if args.json:
        print(json.dumps(cfg, indent=2))
        return 0
    with safe_open(str(Path(args.directory) / WEIGHTS_NAME), framework="pt") as f:
        params = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())
    base = cfg["base"]
    source = base["checkpoint"] or ("timm pretrained" if base["pretrained"] else "random init")
    print(f"model      {base['model']}  {base['kwargs'] or ''}".rstrip())
    print(f"weights    from {source}; {human(params)} parameters")
    for key in ("patch_size", "window_size"):
        if cfg.get(key):
            print(f"{key:<10} {cfg[key]}")
    sel = cfg.get("selection") or {}
    if cfg.get("attn"):
        print(f"attention  keep {cfg['keep']} softmax, {cfg['attn']} elsewhere {cfg.get('attn_options') or ''}".rstrip())
        print(f"selection  {sel.get('strategy')}"
              + (f" on {sel['calib']['images']} images from {sel['calib']['source']}" if sel.get("calib") else ""))
    scores = sel.get("scores")
    rows = [(i, l["path"], l["kind"], None if scores is None else f"{scores[i]:.4g}")
            for i, l in enumerate(cfg["layers"])]
    if rows:
        print()
        print(table(rows, ["layer", "module", "kind", "sensitivity (KL)"]))
    print(f"\nmixa {cfg['mixa_version']}")
    return 0


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
