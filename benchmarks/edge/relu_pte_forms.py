"""relu's normaliser in the ExecuTorch export, A/B: is another form of the same maths faster in XNNPACK?

Issue 20 (thirteenth session). mixa exports a relu layer to .pte tokens-last
(``mixa.export.lowering._split_linear_attention``): q^T, k and v^T come straight from three projections and
the normaliser rides on the products as a row of ones padded under v^T
(``functional.relu_linear_attention_tokens_last``), then a slice of the last row and a division. Forms:
- ``base``: that, as mixa exports it;
- ``projones``: the ones row made by the v projection itself (a zero weight row and a bias of 1 per head), so
  that no pad copies v^T;
- ``den``: no ones row; the denominator as its own two small products, ones(1, N) @ relu(k) @ relu(q)^T, so
  that neither a pad nor slices remain.

Each program is checked against eager PyTorch of the layer as mixa builds it, then the DeiT-T/14 original and
keep-6 relu in every form are timed round-robin in one process (thread CPU time, 1 thread, batch 1).
Speed-up: the median of per-round ratios against the original; "vs base": against ``base``.

    python benchmarks/edge/relu_pte_forms.py --work /tmp/relu_forms --runs 3
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

FORMS = ("base", "projones", "den")


def _den_core(q_t, k, v_t, eps=None):
    """relu_linear_attention_tokens_last with its denominator as two products of its own."""
    import torch
    import torch.nn.functional as F

    from mixa.attention import functional as AF

    eps = AF.RELU_EPS if eps is None else eps
    dtype = v_t.dtype
    q_t, k, v_t = F.relu(AF._wide(q_t)), F.relu(AF._wide(k)), AF._wide(v_t)
    b, h, n, _ = k.shape
    ones = torch.ones(1, 1, 1, n, dtype=k.dtype).expand(b, h, 1, n)
    den = AF._mm(AF._mm(ones, k), q_t)                                    # (B, H, 1, N)
    return AF._saturating_cast(AF._mm(AF._mm(v_t, k), q_t) / (den + eps), dtype)


def _projones_forward(module, x, attn_mask=None, mask=None, is_causal=False):
    """The switched relu layer with v^T's ones row made by the v projection (``_ones_projection``)."""
    import torch.nn.functional as F

    from mixa.attention import functional as AF
    from mixa.export import lowering
    from mixa.layers.heads import project_heads

    b, n, c = x.shape
    (wq, bq), (wk, bk), _ = lowering._split(module)
    q_t = F.relu(project_heads(x, wq, bq, module.num_heads, tokens_last=True))
    k = F.relu(project_heads(x, wk, bk, module.num_heads))
    v1_t = project_heads(x, module._relu_v1_weight, module._relu_v1_bias, module.num_heads, tokens_last=True)
    d = v1_t.shape[-2] - 1
    out = AF._mm(AF._mm(v1_t, k), q_t)                                   # (B, H, d + 1, N)
    y_t = out[..., :d, :] / (out[..., d:, :] + AF.RELU_EPS)
    return module._finish(y_t.permute(0, 3, 1, 2).reshape(b, n, c), x)


def _ones_projection(model) -> None:
    """Every relu layer gets v's projection with one more output per head: weights 0, bias 1."""
    import torch

    from mixa.attention import MixAttention

    for m in model.modules():
        if isinstance(m, MixAttention) and m.kind == "relu":
            w = m.qkv.weight.detach().chunk(3)[2]
            bias = m.qkv.bias.detach().chunk(3)[2] if m.qkv.bias is not None else w.new_zeros(w.shape[0])
            h, d = m.num_heads, w.shape[0] // m.num_heads
            m.register_buffer("_relu_v1_weight", torch.cat([w.reshape(h, d, -1), w.new_zeros(h, 1, w.shape[1])],
                                                           1).reshape(h * (d + 1), -1), persistent=False)
            m.register_buffer("_relu_v1_bias", torch.cat([bias.reshape(h, d), bias.new_ones(h, 1)], 1).reshape(-1),
                              persistent=False)


@contextlib.contextmanager
def exported_as(model, form: str):
    """mixa's .pte export of ``model`` with its relu layers in ``form`` for the duration of the block."""
    from mixa.attention import functional as AF
    from mixa.export import lowering

    core, forward = AF.relu_linear_attention_tokens_last, lowering._split_linear_attention
    if form == "den":
        AF.relu_linear_attention_tokens_last = _den_core
    elif form == "projones":
        _ones_projection(model)
        lowering._split_linear_attention = lambda m, *a, **kw: (_projones_forward if m.kind == "relu"
                                                                else forward)(m, *a, **kw)
    try:
        yield model
    finally:
        AF.relu_linear_attention_tokens_last, lowering._split_linear_attention = core, forward


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="the .pte programs (kept: a second call only times)")
    p.add_argument("--forms", default=",".join(FORMS))
    p.add_argument("--rounds", type=int, default=150)
    p.add_argument("--runs", type=int, default=1, help="timings, each a fresh round-robin in this process")
    args = p.parse_args()
    forms = args.forms.split(",")
    if any(f not in FORMS for f in forms):
        p.error(f"forms are {', '.join(FORMS)}; got {args.forms}")
    warnings.simplefilter("ignore")
    import torch

    import mixa
    from mixa.export.executorch import export_pte, load_pte, run_pte, set_threads
    from mixa.models import create_model
    from mixa.profile.records import describe_cpu, environment
    from mixa.profile.timing import paired_speedup, round_robin

    set_threads(1)
    torch.manual_seed(0)
    original = create_model("deit_tiny_patch16_224", pretrained=False, patch_size=14).eval()
    relu = mixa.convert(original, keep=6, attn="relu", select="uniform", progress=False)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    programs = [("original", original)] + [(form, relu) for form in forms]
    for label, model in programs:
        path = work / f"{label}.pte"
        if not path.is_file():
            with exported_as(model, label), torch.no_grad():
                export_pte(model, path, (3, 224, 224))
        with torch.no_grad():
            diff = float(np.abs(run_pte(path, x.numpy()) - model(x).numpy()).max())
        if diff > 1e-4:
            raise SystemExit(f"{path} differs from the model as mixa builds it by {diff:.3g}")
        print(f"  {path}: max |.pte - eager| {diff:.2g}", file=sys.stderr, flush=True)
    env = environment()
    print(f"CPU: {describe_cpu(env)}; ExecuTorch fp32, 1 thread, "
          f"batch 1, thread CPU time; command: python {' '.join(sys.argv)}", flush=True)
    image = [torch.randn(1, 3, 224, 224)]
    methods = [load_pte(work / f"{label}.pte") for label, _ in programs]
    calls = [lambda m=m: m.execute(image) for m in methods]
    print("| run | program | median ms | speed-up | vs base |\n|---|---|---:|---:|---:|")
    for run in range(1, args.runs + 1):
        times = round_robin(calls, warmup=3, rounds=args.rounds, clock="cpu")
        base = times[[label for label, _ in programs].index("base")] if "base" in forms else None
        for (label, _), t in zip(programs, times):
            vs_base = f"{paired_speedup(base, t):.4f}" if base is not None else "-"
            print(f"| {run} | {label} | {statistics.median(t) * 1e3:.2f} | {paired_speedup(times[0], t):.4f} | "
                  f"{vs_base} |", flush=True)
        print(f"run {run}: {len(times[0])} rounds, 1-minute load average {os.getloadavg()[0]:.2f}",
              file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
