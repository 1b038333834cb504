"""Benchmark (not a test): one distillation optimiser step, mixa vs timm's in-package distillation task.

timm's train.py (``--kd-model-name``) is not part of the timm wheel; what timm >= 1.0.23 ships in the
package is the task API it is built on: ``timm.task.LogitDistillationTask`` (student forward, frozen
teacher forward on the same batch, CE + KL * T^2), which train.py drives with
``timm.optim.create_optimizer_v2`` (AdamW without decay on norms/biases), ``timm.scheduler`` stepped per
update and ``timm.utils.dispatch_clip_grad``. The timm side below is exactly that loop.

Both sides train the same converted student against the same teacher on the same synthetic batch
(no data loading: this measures the step), same loss settings (CE smoothing 0.1, KD weight 0.5,
temperature 1), AdamW lr 1e-4 wd 0.05, clipping 5, same autocast. Each measurement runs in its own
fresh process, alternating mixa/timm, so peak memory is per implementation:
CPU -> peak RSS (ru_maxrss) and its rise over the RSS before the first step; CUDA -> max_memory_allocated.

    python tools/bench_distill.py --model deit_t --batch 16 --steps 8 --repeats 3
    python tools/bench_distill.py --model deit_s --batch 128 --device cuda --amp bf16
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def worker(args) -> dict:
    import resource

    import torch

    import mixa
    from mixa.models import create_model

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    kwargs = {"img_size": args.img_size} if args.img_size else {}
    if args.depth:
        kwargs["depth" if "deit" in args.model else "depths"] = args.depth
    teacher = create_model(args.model, pretrained=False, **kwargs)
    student = mixa.convert(teacher, keep=args.keep, attn=args.attn, progress=False)
    teacher, student = teacher.to(device).eval(), student.to(device).train()
    size = student.pretrained_cfg["input_size"]
    x = torch.randn(args.batch, *size, device=device)
    y = torch.randint(0, student.num_classes, (args.batch,), device=device)
    dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]

    if args.impl == "mixa":
        from mixa.distill import DistillStep, load_recipe

        settings = load_recipe("deit_t", amp=args.amp, lr_base_batch=None, workers=0)
        stepper = DistillStep(student, teacher, settings, device, lr=1e-4, total_steps=1000, warmup_steps=10)

        def step():
            stepper.forward_backward(x, y)
    else:
        from timm.optim import create_optimizer_v2
        from timm.scheduler import CosineLRScheduler
        from timm.task import LogitDistillationTask
        from timm.utils import dispatch_clip_grad

        task = LogitDistillationTask(student, teacher, criterion_kwargs={"smoothing": 0.1},
                                     distill_loss_weight=0.5, task_loss_weight=0.5, temperature=1.0,
                                     device=device, verbose=False).train()
        optimizer = create_optimizer_v2(student, "adamw", lr=1e-4, weight_decay=0.05)
        scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        scheduler = CosineLRScheduler(optimizer, t_initial=1000, warmup_t=10, warmup_lr_init=1e-6)
        updates = [0]

        def step():
            ctx = torch.autocast(device.type, dtype=dtype) if dtype else torch.autocast(device.type, enabled=False)
            with ctx:
                loss = task(x, y)["loss"]
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            dispatch_clip_grad(student.parameters(), 5.0)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            updates[0] += 1
            scheduler.step_update(num_updates=updates[0])

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    rss_before = _rss_mb()
    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    elapsed = time.perf_counter() - t0
    out = {"impl": args.impl, "img_s": args.batch * args.steps / elapsed,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_before_mb": rss_before}
    if device.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="deit_t")
    p.add_argument("--keep", type=int, default=6)
    p.add_argument("--attn", default="stella")
    p.add_argument("--img-size", type=int)
    p.add_argument("--depth", type=int, help="(DeiT) fewer blocks, for a quick run")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--impl", choices=["mixa", "timm"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.impl:
        print(json.dumps(worker(args)))
        return 0

    import timm
    import torch

    forwarded = [a for a in sys.argv[1:]]
    results = {"mixa": [], "timm": []}
    for r in range(args.repeats):
        for impl in (("mixa", "timm") if r % 2 == 0 else ("timm", "mixa")):
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            proc = subprocess.run([sys.executable, __file__, *forwarded, "--impl", impl], capture_output=True,
                                  text=True, env=env)
            if proc.returncode:
                print(proc.stderr[-2000:], file=sys.stderr)
                return 1
            results[impl].append(json.loads(proc.stdout.strip().splitlines()[-1]))

    print(f"distillation step, {args.model} keep={args.keep} attn={args.attn}, batch {args.batch}, "
          f"{args.steps} timed steps x {args.repeats} fresh processes each, device {args.device}, amp {args.amp}, "
          f"torch {torch.__version__}, timm {timm.__version__}, threads {args.threads}")
    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0] if m != "impl"} for k, v in results.items()}
    print(f"{'':<24}{'mixa':>12}{'timm task':>12}{'mixa/timm':>12}")
    rows = [("images/s (median)", "img_s"), ("peak RSS MB", "peak_rss_mb")]
    if "cuda_peak_mb" in med["mixa"]:
        rows.append(("CUDA peak alloc MB", "cuda_peak_mb"))
    for label, key in rows:
        a, b = med["mixa"][key], med["timm"][key]
        print(f"{label:<24}{a:>12.1f}{b:>12.1f}{a / b:>12.3f}")
    rise = {k: med[k]["peak_rss_mb"] - med[k]["rss_before_mb"] for k in med}
    print(f"{'RSS rise in training MB':<24}{rise['mixa']:>12.1f}{rise['timm']:>12.1f}"
          f"{rise['mixa'] / max(rise['timm'], 1e-9):>12.3f}")
    print("all images/s:", {k: [round(r["img_s"], 1) for r in v] for k, v in results.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
