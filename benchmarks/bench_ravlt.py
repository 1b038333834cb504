#!/usr/bin/env python
"""RAVLT speed: mixa's channels-last ravlt vs a plain NCHW formulation of the official model, side by side.

    python benchmarks/bench_ravlt.py                         # CPU batch-1 latency (+ CUDA throughput if a GPU exists)
    python benchmarks/bench_ravlt.py --model ravlt_t --cpu-iters 10 --others swin_tiny_patch4_window7_224
    python benchmarks/bench_ravlt.py --table                 # params / MACs of ravlt_t/s/b/l vs the paper

The baseline (``PlainRAVLT``, tests/reference/ravlt_nchw.py) follows the official code's layout: NCHW everywhere, 1x1 convs,
LayerNorm through permute + contiguous, q/k/v split by reshapes of the conv output, RoPE tables rebuilt in
every forward, and the attention maths written out with explicit matmuls. It loads the same state dict as
mixa's model (``strict=True``), and the script checks that both give the same logits before timing.
CPU: eager, batch 1, median latency over interleaved runs. CUDA (when available): batch 256, 224 px, eval,
fp32 and fp16 autocast, images/s after warm-up (the authors' protocol is 50 warm-up + 30 timed passes).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mixa.models  # noqa: E402,F401  (registers ravlt_* with timm)
import timm  # noqa: E402
from mixa.profile.timing import paired_speedup, round_robin  # noqa: E402
from tests.reference.ravlt_nchw import PlainRAVLT  # noqa: E402

PAPER = {"ravlt_t": (14.9, 2.4), "ravlt_s": (25.6, 4.6), "ravlt_b": (48.2, 9.9), "ravlt_l": (95.2, 16.0)}


# ---------------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------------
def cpu_latency(models: dict, iters: int, warmup: int, size: int, batch: int = 1) -> dict:
    """Batch-1 latency (ms) over ``iters`` rounds, the models interleaved within each round.

    Reported: median and best wall time; the median speed-up against the baseline paired round by round
    (robust to load drifting); and, with one torch thread, the median CPU time of this thread, which
    time-sharing with other processes does not inflate (the steadiest number on a busy machine).
    """
    x = torch.randn(batch, 3, size, size)
    cpu = {name: [] for name in models}

    def timed(name, model):  # wall time comes from round_robin; this thread's CPU time is taken beside it
        def call():
            start_cpu = time.thread_time()
            model(x)
            cpu[name].append((time.thread_time() - start_cpu) * 1e3)
        return call

    with torch.inference_mode():
        seconds = round_robin([timed(n, m) for n, m in models.items()], warmup=warmup, rounds=iters)
    wall = {name: [t * 1e3 for t in s] for name, s in zip(models, seconds)}
    cpu = {name: c[-iters:] for name, c in cpu.items()}  # the timed rounds, not the warm-up
    base = next(n for n in models if n.endswith("(plain NCHW)"))
    single = torch.get_num_threads() == 1
    return {name: {"median": statistics.median(t), "best": min(t),
                   "paired_speedup": paired_speedup(wall[base], t),
                   "cpu_median": statistics.median(cpu[name]) if single else None}
            for name, t in wall.items()}


def cuda_throughput(models: dict, batch: int, warmup: int, iters: int, amp: bool, size: int) -> dict:
    out = {}
    x = torch.randn(batch, 3, size, size, device="cuda")
    for name, model in models.items():
        model = model.cuda()
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            for _ in range(warmup):
                model(x)
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(iters):
                model(x)
            torch.cuda.synchronize()
        out[name] = batch * iters / (time.perf_counter() - start)
        model.cpu()
        torch.cuda.empty_cache()
    return out


def macs_table() -> list:
    from mixa.macs import count_macs, count_params
    from mixa.models.ravlt import RAVLTAttention

    rows = []
    for name, (paper_params, paper_gmacs) in PAPER.items():
        model = timm.create_model(name).eval()
        cores = [0]
        hooks = [m.register_forward_hook(lambda mod, inp, out: cores.__setitem__(0, cores[0] + mod.attention_macs(inp[0])))
                 for m in model.modules() if isinstance(m, RAVLTAttention)]
        total = count_macs(model)
        for h in hooks:
            h.remove()
        rows.append(dict(model=name, params_m=count_params(model) / 1e6, paper_params_m=paper_params,
                         gmacs=total / 1e9, gmacs_layers_only=(total - cores[0]) / 1e9, paper_gmacs=paper_gmacs))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ravlt_s")
    p.add_argument("--others", nargs="*", default=["swin_tiny_patch4_window7_224", "deit_small_patch16_224"])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--cpu-iters", type=int, default=10)
    p.add_argument("--cpu-warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--cpu-batch", type=int, default=1, help="CPU batch size (default 1)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--gpu-warmup", type=int, default=50)
    p.add_argument("--gpu-iters", type=int, default=30)
    p.add_argument("--no-cpu", action="store_true")
    p.add_argument("--table", action="store_true", help="print params/MACs of ravlt_t/s/b/l and exit")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)

    if args.table:
        rows = macs_table()
        print(f"{'model':8} {'params M':>9} {'paper':>6} {'GMACs':>7} {'layers only':>11} {'paper':>6}")
        for r in rows:
            print(f"{r['model']:8} {r['params_m']:9.2f} {r['paper_params_m']:6.1f} {r['gmacs']:7.3f} "
                  f"{r['gmacs_layers_only']:11.3f} {r['paper_gmacs']:6.1f}")
        return 0

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fast = timm.create_model(args.model).eval()
    plain = PlainRAVLT.like(fast).eval()
    x = torch.randn(2, 3, args.size, args.size)
    with torch.inference_mode():
        diff = (fast(x) - plain(x)).abs().max().item()
    print(f"{args.model}: max |logit difference| mixa vs plain NCHW = {diff:.2e}")
    models = {f"{args.model} (mixa)": fast, f"{args.model} (plain NCHW)": plain}
    for name in args.others:
        models[name] = timm.create_model(name, img_size=args.size).eval()

    results = {"max_abs_logit_diff": diff, "torch": torch.__version__, "threads": torch.get_num_threads()}
    if not args.no_cpu:
        lat = cpu_latency(models, args.cpu_iters, args.cpu_warmup, args.size, args.cpu_batch)
        results[f"cpu_batch{args.cpu_batch}_ms"] = lat
        base = lat[f"{args.model} (plain NCHW)"]
        print(f"\nCPU eager latency, batch {args.cpu_batch}, {args.size} px, {torch.get_num_threads()} threads "
              f"({args.cpu_iters} interleaved runs):")
        for name, ms in lat.items():
            cpu_part = "" if ms["cpu_median"] is None else \
                f"  | thread CPU {ms['cpu_median']:7.1f} ms  {base['cpu_median'] / ms['cpu_median']:4.2f}x"
            print(f"  {name:30} wall: median {ms['median']:7.1f} ms  best {ms['best']:7.1f} ms  "
                  f"vs plain {base['median'] / ms['median']:4.2f}x (paired {ms['paired_speedup']:4.2f}x){cpu_part}")
    if torch.cuda.is_available():
        results["cuda_device"] = torch.cuda.get_device_name()
        for amp in (False, True):
            tp = cuda_throughput(models, args.batch, args.gpu_warmup, args.gpu_iters, amp, args.size)
            key = "cuda_amp_img_s" if amp else "cuda_fp32_img_s"
            results[key] = tp
            base = tp[f"{args.model} (plain NCHW)"]
            print(f"\nCUDA throughput, batch {args.batch}, {'AMP fp16' if amp else 'fp32'} "
                  f"({results['cuda_device']}):")
            for name, ips in tp.items():
                print(f"  {name:34} {ips:8.0f} img/s   vs plain {ips / base:5.2f}x")
    else:
        print("\nno CUDA device: GPU throughput (batch 256, fp32 / AMP) not measured")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
