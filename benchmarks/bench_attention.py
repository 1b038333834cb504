"""Attention-kernel benchmark: every linear core vs softmax attention (torch SDPA) on (1, H, N, d) inputs.

For each N it times each core in PyTorch eager and in ONNX Runtime (the core exported alone, MatMul graph),
prints latency, the speed-up of each linear core over softmax, and the crossover N (the smallest N of the
grid from which the linear core is faster for every larger N).

    python benchmarks/bench_attention.py                      # N = 49 .. 16384, d = 64, 6 heads, 1 thread
    python benchmarks/bench_attention.py --n 197,4096 --repeat 20

Long measurements stop after --budget seconds (at least --min-repeat runs each). ONNX Runtime's softmax
graph materialises the (H, N, N) attention map; sizes whose map exceeds --max-map-gb are skipped there
(torch's CPU SDPA is blocked and never forms it).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mixa.attention import get_attention_kind, list_attention_kinds  # noqa: E402
from mixa.profile.timing import round_robin  # noqa: E402

DEFAULT_N = [49, 197, 256, 577, 1024, 2048, 4096, 8192, 16384]


class Core(torch.nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.core = get_attention_kind(kind).core

    def forward(self, q, k, v):
        return self.core(q, k, v)


def measure(fn, repeat: int, min_repeat: int, budget: float) -> float:
    """Median seconds per call; one warm-up call, then up to ``repeat`` calls within ``budget`` seconds."""
    return statistics.median(round_robin([fn], warmup=1, rounds=repeat, budget=budget, min_rounds=min_repeat)[0])


def export_core(kind: str, heads: int, d: int, path: Path) -> None:
    x = torch.randn(1, heads, 49, d)
    axes = {name: {2: "n"} for name in ("q", "k", "v", "out")}
    kwargs = {"dynamo": False} if "dynamo" in torch.onnx.export.__code__.co_varnames else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Core(kind), (x, x, x), str(path), opset_version=17, input_names=["q", "k", "v"],
                          output_names=["out"], dynamic_axes=axes, **kwargs)


def crossover(ns, ratios):
    """Smallest N from which every ratio (softmax time / linear time) is > 1; None if never."""
    found = None
    for n, r in zip(reversed(ns), reversed(ratios)):
        if r is None:
            continue
        if r > 1:
            found = n
        else:
            break
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", default=",".join(map(str, DEFAULT_N)), help="token counts")
    p.add_argument("--d", type=int, default=64, help="head dim (default 64)")
    p.add_argument("--heads", type=int, default=6, help="heads (default 6, DeiT-S)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--min-repeat", type=int, default=3)
    p.add_argument("--budget", type=float, default=3.0, help="seconds per measurement (default 3)")
    p.add_argument("--max-map-gb", type=float, default=2.0)
    p.add_argument("--runtimes", default="torch,ort")
    args = p.parse_args()

    import onnxruntime as ort

    ns = [int(v) for v in args.n.split(",")]
    kinds = ["softmax", *list_attention_kinds(linear_only=True)]
    torch.set_num_threads(args.threads)
    runtimes = args.runtimes.split(",")
    print(f"attention cores, (1, {args.heads}, N, {args.d}) fp32, {args.threads} thread(s); "
          f"torch {torch.__version__}, onnxruntime {ort.__version__}")
    with tempfile.TemporaryDirectory() as work:
        sessions = {}
        if "ort" in runtimes:
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            options.inter_op_num_threads = 1
            for kind in kinds:
                path = Path(work) / f"{kind}.onnx"
                export_core(kind, args.heads, args.d, path)
                sessions[kind] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for runtime in runtimes:
            results = {kind: [] for kind in kinds}
            for n in ns:
                q, k, v = (torch.randn(1, args.heads, n, args.d) for _ in range(3))
                feed = {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()}
                for kind in kinds:
                    if runtime == "ort" and kind == "softmax" and args.heads * n * n * 4 / 2**30 > args.max_map_gb:
                        results[kind].append(None)
                        continue
                    if runtime == "torch":
                        core = get_attention_kind(kind).core
                        with torch.inference_mode():
                            t = measure(lambda: core(q, k, v), args.repeat, args.min_repeat, args.budget)
                    else:
                        sess = sessions[kind]
                        t = measure(lambda: sess.run(None, feed), args.repeat, args.min_repeat, args.budget)
                    results[kind].append(t)
                print(f"  [{runtime}] N={n} done", file=sys.stderr, flush=True)
            print(f"\n{runtime}: median ms (speed-up over softmax)")
            print("N".rjust(6) + "".join(k.rjust(20) for k in kinds))
            for i, n in enumerate(ns):
                soft = results["softmax"][i]
                cells = []
                for kind in kinds:
                    t = results[kind][i]
                    if t is None:
                        cells.append("skipped".rjust(20))
                    elif kind == "softmax" or soft is None:
                        cells.append(f"{t * 1e3:.3f}".rjust(20))
                    else:
                        cells.append(f"{t * 1e3:.3f} ({soft / t:.2f}x)".rjust(20))
                print(str(n).rjust(6) + "".join(cells))
            for kind in kinds[1:]:
                ratios = [None if s is None else s / t for s, t in zip(results["softmax"], results[kind])]
                cross = crossover(ns, ratios)
                print(f"  {kind}: crossover N = {cross if cross is not None else 'not reached'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
