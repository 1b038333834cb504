#!/usr/bin/env python
"""RAVLT speed: mixa's channels-last ravlt vs a plain NCHW formulation of the official model, side by side.

    python tools/bench_ravlt.py                         # CPU batch-1 latency (+ CUDA throughput if a GPU exists)
    python tools/bench_ravlt.py --model ravlt_t --cpu-iters 10 --others swin_tiny_patch4_window7_224
    python tools/bench_ravlt.py --table                 # params / MACs of ravlt_t/s/b/l vs the paper

The baseline (``PlainRAVLT`` below) follows the official code's layout: NCHW everywhere, 1x1 convs,
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
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mixa  # noqa: E402,F401  (registers ravlt_*)
import timm  # noqa: E402
from mixa.layers import rope_angles  # noqa: E402

PAPER = {"ravlt_t": (14.9, 2.4), "ravlt_s": (25.6, 4.6), "ravlt_b": (48.2, 9.9), "ravlt_l": (95.2, 16.0)}


# ---------------------------------------------------------------------------------------------------------
# The plain NCHW formulation (baseline and numerical reference; same state dict as mixa's RAVLT)
# ---------------------------------------------------------------------------------------------------------
def _rotate_pairs(x):
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def _rope(x, sin, cos):
    return x * cos + _rotate_pairs(x) * sin


class PlainLayerNorm2d(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1).contiguous()).permute(0, 3, 1, 2).contiguous()


class PlainRoPE(nn.Module):
    def __init__(self, head_dim):
        super().__init__()
        self.register_buffer("angle", rope_angles(head_dim))

    def forward(self, h, w):
        sin_h = torch.sin(torch.arange(h).to(self.angle)[:, None] * self.angle[None, :])
        sin_w = torch.sin(torch.arange(w).to(self.angle)[:, None] * self.angle[None, :])
        cos_h = torch.cos(torch.arange(h).to(self.angle)[:, None] * self.angle[None, :])
        cos_w = torch.cos(torch.arange(w).to(self.angle)[:, None] * self.angle[None, :])
        sin = torch.cat([sin_h.unsqueeze(1).repeat(1, w, 1), sin_w.unsqueeze(0).repeat(h, 1, 1)], -1)
        cos = torch.cat([cos_h.unsqueeze(1).repeat(1, w, 1), cos_w.unsqueeze(0).repeat(h, 1, 1)], -1)
        return sin.reshape(h * w, -1), cos.reshape(h * w, -1)


class PlainAttention(nn.Module):
    def __init__(self, dim, heads, kind):
        super().__init__()
        self.kind, self.heads, self.head_dim = kind, heads, dim // heads
        self.qkvo = nn.Conv2d(dim, 4 * dim, 1)
        self.lepe = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x, sin, cos):
        b, c, h, w = x.shape
        n, d = h * w, self.head_dim
        qkvo = self.qkvo(x)
        qkv, o = qkvo[:, :3 * c], qkvo[:, 3 * c:]
        lepe = self.lepe(qkv[:, 2 * c:])
        # 'b (m n d) h w -> m b n (h w) d'
        q, k, v = qkv.reshape(b, 3, self.heads, d, n).permute(1, 0, 2, 4, 3)
        if self.kind == "rala":
            q, k = F.elu(q) + 1.0, F.elu(k) + 1.0
            weights = torch.softmax(d ** -0.5 * q.mean(dim=-2, keepdim=True) @ k.transpose(-1, -2), dim=-1)
            k = k * weights.transpose(-1, -2) * n
            q_rope, k_rope = _rope(q, sin, cos), _rope(k, sin, cos)
            z = 1 / (q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1) + 1e-6)
            kv = (k_rope.transpose(-2, -1) * n ** -0.5) @ (v * n ** -0.5)
            res = q_rope @ kv * z
        else:
            q, k = _rope(q, sin, cos), _rope(k, sin, cos)
            attn = torch.softmax((q * d ** -0.5) @ k.transpose(-1, -2), dim=-1)
            res = attn @ v
        res = res.permute(0, 1, 3, 2).reshape(b, c, h, w)   # 'b n (h w) d -> b (n d) h w'
        return self.proj((res + lepe) * o)


class PlainFFN(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x):
        x = self.act(self.fc1(x))
        return self.fc2(x + self.dwconv(x))


class PlainBlock(nn.Module):
    def __init__(self, dim, heads, kind, mlp_ratio):
        super().__init__()
        self.pos = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = PlainLayerNorm2d(dim)
        self.attn = PlainAttention(dim, heads, kind)
        self.norm2 = PlainLayerNorm2d(dim)
        self.ffn = PlainFFN(dim, int(dim * mlp_ratio))
        self.gamma_1 = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.gamma_2 = nn.Parameter(torch.ones(1, dim, 1, 1))

    def forward(self, x, sin, cos):
        x = x + self.pos(x)
        x = x + self.gamma_1 * self.attn(self.norm1(x), sin, cos)
        return x + self.gamma_2 * self.ffn(self.norm2(x))


class PlainDownsample(nn.Module):
    def __init__(self, dim, out_dim):
        super().__init__()
        self.reduction = nn.Conv2d(dim, out_dim, 3, 2, 1)
        self.norm = nn.BatchNorm2d(out_dim)

    def forward(self, x):
        return self.norm(self.reduction(x))


class PlainStage(nn.Module):
    def __init__(self, dim, depth, heads, kind, out_dim, mlp_ratio):
        super().__init__()
        self.RoPE = PlainRoPE(dim // heads)
        self.blocks = nn.ModuleList([PlainBlock(dim, heads, kind, mlp_ratio) for _ in range(depth)])
        self.downsample = PlainDownsample(dim, out_dim) if out_dim else None

    def forward(self, x):
        sin, cos = self.RoPE(x.shape[2], x.shape[3])
        for block in self.blocks:
            x = block(x, sin, cos)
        return self.downsample(x) if self.downsample is not None else x


class PlainRAVLT(nn.Module):
    """The official layout, for timing and as a numerical reference. Build with ``PlainRAVLT.like(model)``."""

    def __init__(self, embed_dims, depths, num_heads, num_classes=1000, mlp_ratio=3.5, head_dim=1024):
        super().__init__()
        half = embed_dims[0] // 2

        class _Stem(nn.Module):
            def __init__(self):
                super().__init__()
                self.proj = nn.Sequential(
                    nn.Conv2d(3, half, 3, 2, 1), nn.BatchNorm2d(half), nn.GELU(),
                    nn.Conv2d(half, half, 3, 1, 1), nn.BatchNorm2d(half), nn.GELU(),
                    nn.Conv2d(half, half, 3, 1, 1), nn.BatchNorm2d(half), nn.GELU(),
                    nn.Conv2d(half, embed_dims[0], 3, 2, 1), nn.BatchNorm2d(embed_dims[0]))

            def forward(self, x):
                return self.proj(x)

        self.patch_embed = _Stem()
        kinds = ("rala", "rala", "softmax", "softmax")
        self.layers = nn.ModuleList([
            PlainStage(embed_dims[i], depths[i], num_heads[i], kinds[i],
                       embed_dims[i + 1] if i + 1 < len(depths) else None, mlp_ratio) for i in range(len(depths))])
        self.proj = nn.Conv2d(embed_dims[-1], head_dim, 1)
        self.norm = nn.BatchNorm2d(head_dim)
        self.head = nn.Conv2d(head_dim, num_classes, 1)

    @classmethod
    def like(cls, model):
        """A plain twin of a mixa RAVLT with the same weights."""
        heads = [stage.blocks[0].attn.num_heads for stage in model.layers]
        plain = cls(model.embed_dims, [len(s.blocks) for s in model.layers], heads,
                    num_classes=model.num_classes, head_dim=model.head_hidden_size)
        plain.load_state_dict(model.state_dict(), strict=True)
        return plain.train(model.training)

    def forward(self, x):
        x = self.patch_embed(x)
        for stage in self.layers:
            x = stage(x)
        x = self.norm(self.proj(x))
        x = x * torch.sigmoid(x)
        return self.head(F.adaptive_avg_pool2d(x, 1)).flatten(1)


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
    wall = {name: [] for name in models}
    cpu = {name: [] for name in models}
    with torch.inference_mode():
        for _ in range(warmup):
            for model in models.values():
                model(x)
        for _ in range(iters):
            for name, model in models.items():
                start, start_cpu = time.perf_counter(), time.thread_time()
                model(x)
                wall[name].append((time.perf_counter() - start) * 1e3)
                cpu[name].append((time.thread_time() - start_cpu) * 1e3)
    base = next(n for n in models if n.endswith("(plain NCHW)"))
    single = torch.get_num_threads() == 1
    return {name: {"median": statistics.median(t), "best": min(t),
                   "paired_speedup": statistics.median(b / x for b, x in zip(wall[base], t)),
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
