"""Graph forms of a rala layer, A/B: is any rewrite of the same maths faster in ONNX Runtime or ExecuTorch?

Issue 20 (session 3). Each form below computes what ``MixAttention`` + ``functional.rala_attention`` compute
(checked here against the layer as mixa builds it, on a random image, before timing); only the exported
graph differs. Every program -- the DeiT-T/14 original, keep-6 rala as mixa builds it ("base", listed twice
by default so the run shows its own noise) and each form -- is timed round-robin in one process, thread CPU
time, 1 thread, batch 1; the speed-up column is the median of per-round ratios against the original.

    python benchmarks/edge/rala_forms.py --runtime ort --forms base,base,mean,once,oncetok,lepenhwc
    python benchmarks/edge/rala_forms.py --runtime executorch --precisions fp32,int8 --forms base,once

``base`` is the layer as mixa exports it to the runtime (``mixa.export.lowering.linear_core_forms``: since
session 3 rala's token mean is ``mean`` in ONNX and ``pooled`` in ExecuTorch). Forms (joined with '+'):
- ``mean``: the token mean as one ReduceMean over the token axis (``rala_attention_token_axis_mean``).
- ``pooled``: the token mean over the two inner axes of a transposed view, which XNNPACK delegates as a
  global average pool (``rala_attention``).
- ``once``: ELU + 1 applied once to the (B, 2 heads, N, d) q/k part of the head-split qkv, split after
  (with the pooled token mean, as ``oncetok``).
- ``oncetok``: ELU + 1 once on the token-major (B, N, 2C) q/k part of the qkv output, before the head split.
- ``lepenhwc``: LePE's depth-wise Conv reads v token-major straight from the qkv output (an NHWC view
  permuted to NCHW, which ONNX Runtime folds into its NCHWc reorder) and is added after the output transpose.
- ``onescolumn`` / ``sum`` (with ``--kind relu``): relu's normaliser as a column of ones in v (the form
  mixa exports to ExecuTorch) / as a token sum (the form mixa exports to ONNX).
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import types
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def _core_on_features(q, k, v, rope=None, eps=None, key_mask=None):
    """rala_attention for q, k that already went through ELU + 1 (no masks, no rope: DeiT)."""
    import torch

    from mixa.attention import functional as AF

    eps = AF.RALA_EPS if eps is None else eps
    dtype, n, d = v.dtype, k.shape[-2], q.shape[-1]
    q, k, v = AF._wide(q), AF._wide(k), AF._wide(v)
    p = torch.softmax(AF._mm(AF._token_mean(q), k.transpose(-2, -1)) * d ** -0.5, dim=-1)
    den = AF._mm(q, AF._mm(p, k).transpose(-2, -1))
    out = AF._mm(q, AF._mm((k * p.reshape(p.shape[0], p.shape[1], n, 1)).transpose(-2, -1), v)) / (den + eps)
    return AF._saturating_cast(out, dtype)


def _pinned(core):
    """``core`` under another name, so that mixa's export keeps it (``linear_core_forms`` swaps by name)."""
    from mixa.attention import functional as AF

    def pinned(q, k, v, rope=None, eps=AF.RALA_EPS, key_mask=None):
        return core(q, k, v, rope, eps, key_mask)
    return pinned


def _mean(layer):
    from mixa.attention import functional as AF

    layer._linear_core = _pinned(AF.rala_attention_token_axis_mean)


def _pooled(layer):
    from mixa.attention import functional as AF

    layer._linear_core = _pinned(AF.rala_attention)


def _once(layer):
    from mixa.attention import functional as AF

    def heads(self, x):
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3 * self.num_heads, self.head_dim).transpose(1, 2)
        qk, v = qkv.split([2 * self.num_heads, self.num_heads], dim=1)
        q, k = AF.elu_plus_one(qk).split(self.num_heads, dim=1)
        return q, k, v

    layer._heads = types.MethodType(heads, layer)
    layer._linear_core = _core_on_features


def _oncetok(layer):
    from mixa.attention import functional as AF

    def heads(self, x):
        b, n, c = x.shape
        qk, v = self.qkv(x).split([2 * c, c], dim=-1)
        q, k = AF.elu_plus_one(qk).reshape(b, n, 2 * self.num_heads, self.head_dim).transpose(1, 2).split(
            self.num_heads, dim=1)
        return q, k, v.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    layer._heads = types.MethodType(heads, layer)
    layer._linear_core = _core_on_features


def _lepenhwc(layer):
    import torch.nn.functional as F

    from mixa.attention.modules import _grid_side

    def forward(self, x, attn_mask=None, mask=None, is_causal=False):
        b, n, c = x.shape
        qkv = self.qkv(x)
        q, k, v = qkv.reshape(b, n, 3 * self.num_heads, self.head_dim).transpose(1, 2).split(self.num_heads, dim=1)
        y = self._linear_core(q, k, v).transpose(1, 2).reshape(b, n, c)
        p = self.num_prefix_tokens
        grid = n - p
        side = _grid_side(grid)
        lepe = self.lepe(qkv[:, p:, 2 * c:].reshape(b, side, side, c).permute(0, 3, 1, 2))
        lepe = lepe.permute(0, 2, 3, 1).reshape(b, grid, c)
        y = y + (F.pad(lepe, [0, 0, p, 0]) if p > 0 else lepe)
        if self.gate is not None:
            y = y * self.gate(x)
        return self.proj_drop(self.proj(y))

    layer.forward = types.MethodType(forward, layer)


def _onescolumn(layer):
    from mixa.attention import functional as AF

    layer._linear_core = AF.relu_linear_attention_ones_column


def _sum(layer):
    from mixa.attention import functional as AF

    def pinned(q, k, v, eps=AF.RELU_EPS, key_mask=None):  # another name: linear_core_forms keeps it
        return AF.relu_linear_attention(q, k, v, eps, key_mask)
    layer._linear_core = pinned


FORMS = {"mean": _mean, "pooled": _pooled, "once": _once, "oncetok": _oncetok, "lepenhwc": _lepenhwc, "onescolumn": _onescolumn, "sum": _sum}
RELU_FORMS = ("onescolumn", "sum")


def with_form(model, form: str):
    """A copy of ``model`` with every rala layer rewritten in ``form`` ('base': as mixa builds it)."""
    from mixa.attention import MixAttention

    model = copy.deepcopy(model)
    for part in form.split("+"):
        if part != "base":
            for m in model.modules():
                if isinstance(m, MixAttention) and m.kind == ("relu" if part in RELU_FORMS else "rala"):
                    FORMS[part](m)
    return model


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runtime", choices=("ort", "executorch"), default="ort")
    p.add_argument("--forms", default="base,base," + ",".join(FORMS))
    p.add_argument("--precisions", default="fp32", help="fp32, int8 (ORT: static INT8; ExecuTorch: PT2E)")
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--gate", default="identity")
    p.add_argument("--kind", choices=("rala", "relu"), default="rala",
                   help="the student's kind (relu: for the 'onescolumn' form, mixa's .pte form of relu)")
    args = p.parse_args()
    for form in args.forms.split(","):
        if any(part != "base" and part not in FORMS for part in form.split("+")):
            p.error(f"unknown form {form!r}; choose from base, {', '.join(FORMS)}")
    warnings.simplefilter("ignore")
    import torch

    import mixa
    from mixa.attention import MixAttention
    from mixa.export.targets import at_resolution
    from mixa.models import create_model
    from mixa.profile.records import describe_cpu, environment
    from mixa.profile.timing import paired_speedup, round_robin

    torch.manual_seed(0)
    original = create_model("deit_tiny_patch16_224", pretrained=False, patch_size=14).eval()
    rala = mixa.convert(original, keep=6, attn=args.kind, select="uniform", progress=False,
                        attn_options={"gate": args.gate} if args.kind == "rala" else None)
    with torch.no_grad():  # LePE and gate away from their neutral start, so that the check below sees them
        for m in rala.modules():
            if isinstance(m, MixAttention):
                if m.lepe is not None:
                    m.lepe.weight.normal_(0, 0.1)
                    m.lepe.bias.normal_(0, 0.1)
                if hasattr(m.gate, "scale"):
                    m.gate.scale.normal_(0, 0.1)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        reference = rala(x)
    programs = [("original", original)]
    for form in args.forms.split(","):
        model = with_form(rala, form)
        with torch.no_grad():
            diff = float((model(x) - reference).abs().max())
        if diff > 1e-4:
            raise SystemExit(f"form {form} differs from the layer as mixa builds it by {diff:.3g}")
        programs.append((form, model))
    env = environment()
    print(f"CPU: {describe_cpu(env)}; {args.runtime}, 1 thread, "
          f"batch 1, thread CPU time; command: python {' '.join(sys.argv)}", flush=True)
    rng = np.random.default_rng(0)
    calls, labels = [], []
    with tempfile.TemporaryDirectory() as work:
        for i, (label, model) in enumerate(programs):
            sized = at_resolution(model, 224)
            for precision in args.precisions.split(","):
                int8 = precision == "int8"
                if args.runtime == "ort":
                    from mixa.export import export_onnx, quantize_onnx
                    from mixa.profile.ort import input_for, session

                    path = Path(work) / f"{i}.onnx"
                    if not path.exists():
                        export_onnx(sized, path, (3, 224, 224))
                    if int8:
                        quantized = Path(work) / f"{i}.static.onnx"
                        calib = [rng.standard_normal((1, 3, 224, 224), dtype=np.float32) for _ in range(4)]
                        quantize_onnx(path, quantized, mode="static", calib_batches=calib)
                        path = quantized
                    sess = session(path, 1)
                    feed = input_for(sess, 1, 224)[0]
                    calls.append(lambda sess=sess, feed=feed: sess.run(None, feed))
                else:
                    from mixa.export.executorch import export_pte, load_pte, set_threads

                    set_threads(1)
                    path = Path(work) / f"{i}.{precision}.pte"
                    calib = [rng.standard_normal((4, 3, 224, 224), dtype=np.float32)] if int8 else None
                    export_pte(sized, path, (3, 224, 224), int8=int8, calib_batches=calib)
                    method, image = load_pte(path), [torch.randn(1, 3, 224, 224)]
                    calls.append(lambda method=method, image=image: method.execute(image))
                labels.append((label, precision))
                print(f"  built {label} {precision}", file=sys.stderr, flush=True)
        load = os.getloadavg()[0]
        times = round_robin(calls, warmup=3, rounds=args.rounds, clock="cpu")
    print(f"{len(times[0])} rounds, 1-minute load average {load:.2f} -> {os.getloadavg()[0]:.2f}")
    base = {precision: t for (label, precision), t in zip(labels, times) if label == "original"}
    print("| precision | program | median ms | speed-up (median of per-round ratios) | ratio of medians |")
    print("|---|---|---:|---:|---:|")
    for (label, precision), t in zip(labels, times):
        ref = base[precision]
        print(f"| {precision} | {label} | {statistics.median(t) * 1e3:.2f} | {paired_speedup(ref, t):.4f} | "
              f"{statistics.median(ref) / statistics.median(t):.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
