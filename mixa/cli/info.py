"""mixa info: what a saved mixa model directory holds."""
from __future__ import annotations

import argparse

from mixa.cli._common import add_report_arguments

HELP = "show what a saved mixa model directory holds"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", required=True, metavar="DIR",
                   help="a directory written by mixa convert / distill / mixa.save")
    add_report_arguments(p)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from safetensors import SafetensorError, safe_open

    from mixa.errors import MixaError
    from mixa.io import write_json
    from mixa.report import human, table
    from mixa.saved import WEIGHTS_NAME, read_config

    cfg = read_config(args.model)
    weights = Path(args.model) / WEIGHTS_NAME
    try:
        with safe_open(str(weights), framework="pt") as f:
            params = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())
    except (SafetensorError, OSError, ValueError) as err:
        raise MixaError(f"cannot read {weights}: {err}") from None
    print(f"model      {cfg.architecture}  {cfg.kwargs or ''}".rstrip())
    print(f"weights    {weights} ({human(params)} parameters)")
    if cfg.converted:
        original = cfg.original
        print(f"original   {original.model}  {original.kwargs or ''}".rstrip())
        print(f"           {original.describe()}")
        for key in ("patch_size", "window_size"):
            if getattr(cfg, key):
                print(f"{key:<10} {getattr(cfg, key)}")
        sel = cfg.selection or {}
        print(f"attention  keep {cfg.keep} softmax, {cfg.attn} elsewhere {cfg.attn_options or ''}".rstrip())
        print(f"selection  {sel.get('strategy')}"
              + (f" on {sel['calib']['images']} images from {sel['calib']['source']}" if sel.get("calib") else ""))
    else:
        print("original   this model (not converted): it is its own reference")
    scores = (cfg.selection or {}).get("scores")
    rows = [(i, layer["path"], layer["kind"], None if scores is None else f"{scores[i]:.4g}")
            for i, layer in enumerate(cfg.layers)]
    if rows:
        print()
        print(table(rows, ["layer", "module", "kind", "sensitivity (KL)"]))
    print(f"\nsaved by mixa {cfg.mixa_version}")
    if args.json:
        write_json(args.json, cfg.to_dict())
    return 0


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
