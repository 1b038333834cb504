"""Params, MACs and eager-CPU forward time of models before/after `mixa convert --keep K`, side by side.

    python benchmarks/convert_costs.py --models deit_s swin_t --keep 6 --threads 1 --rounds 15
    python benchmarks/convert_costs.py --models deit_s --img-size 512 --rounds 5

Random-init weights (timing does not depend on them). Every round times each variant once, in turn, so
that machine load affects all variants alike; the table gives per-variant medians and the speed-up over
the original.
"""
from __future__ import annotations

import argparse
import statistics

import torch
from tqdm import tqdm

import mixa
from mixa.io import write_json
from mixa.macs import count_macs, count_params
from mixa.models import create_model
from mixa.profile.timing import round_robin
from mixa.report import human, table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["deit_s", "swin_t"])
    p.add_argument("--kinds", nargs="+", default=["relu", "stella", "rala"])
    p.add_argument("--keep", type=int, default=6)
    p.add_argument("--select", default="uniform")
    p.add_argument("--img-size", type=int, help="input resolution (timm img_size); default the model's own")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    rows, records = [], []
    for name in args.models:
        extra = {"img_size": args.img_size} if args.img_size else {}
        original = create_model(name, pretrained=False, **extra)
        size = tuple(original.pretrained_cfg["input_size"])
        variants = {"original": original}
        for kind in args.kinds:
            variants[kind] = mixa.convert(original, keep=args.keep, attn=kind, select=args.select)
        x = torch.randn(args.batch, *size)
        with torch.inference_mode(), tqdm(total=args.rounds * len(variants), desc=name, leave=False) as bar:
            seconds = round_robin([lambda m=m: m(x) for m in variants.values()], warmup=args.warmup,
                                  rounds=args.rounds, progress=bar)
        times = {label: [t * 1e3 for t in s] for label, s in zip(variants, seconds)}
        base_ms = statistics.median(times["original"])
        base_macs = count_macs(original, size)
        for label, model in variants.items():
            ms, macs = statistics.median(times[label]), count_macs(model, size)
            record = {"model": name, "variant": label, "params": count_params(model), "macs": macs,
                      "median_ms": ms, "speedup": base_ms / ms, "mac_ratio": base_macs / macs}
            records.append(record)
            rows.append((name, label, human(record["params"]), human(macs), f"{ms:.1f}",
                         f"{record['speedup']:.2f}x", f"{record['mac_ratio']:.2f}x"))
    print(f"keep {args.keep} ({args.select}), batch {args.batch}, {args.threads} thread(s), "
          f"{args.rounds} interleaved rounds, torch {torch.__version__}")
    print(table(rows, ["model", "variant", "params", "MACs", "median ms", "speed-up", "MAC bound"]))
    if args.json:
        write_json(args.json, records)


if __name__ == "__main__":
    main()
