"""Swin-T @224, fp32, ONNX Runtime: its window layers plain, against ONNX Runtime's Attention operator with
the relative-position bias (and the shifted blocks' mask) as the operator's ``attention_bias``.

Why mixa leaves Swin's window layers plain (docs/export.md): the operator was at most 1.5% faster
(issue 20, fourteenth session, AMD EPYC: 0.996-1.015 by round in four runs), and its INT8 form takes no
bias. Random-init weights; both
files verified against PyTorch by ``mixa.export.export_onnx``; 1 thread, thread CPU time, round-robin in one
process (new sessions each run); speed-up = the median over rounds of plain / operator.

    PYTHONPATH=. python benchmarks/edge/swin_ort_attention.py --work /tmp/swin_ort --runs 2
"""
from __future__ import annotations

import argparse
import statistics
import sys
import types
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class BiasedOrtAttention(torch.autograd.Function):
    """``mixa.export.ort_attention.OrtAttention`` with an additive (windows, heads, N, N) bias."""

    @staticmethod
    def forward(ctx, x, weight, bias, attention_bias, num_heads: int, scale: float):
        q, k, v = (x @ weight + bias).unflatten(-1, (3, num_heads, -1)).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attention_bias, scale=scale).transpose(1, 2).flatten(2)

    @staticmethod
    def symbolic(g, x, weight, bias, attention_bias, num_heads: int, scale: float):
        from torch.onnx import symbolic_helper

        absent = symbolic_helper._optional_input_placeholder_tensor(g)  # mask_index and past are not given
        y = g.op("com.microsoft::Attention", x, weight, bias, absent, absent, attention_bias,
                 num_heads_i=num_heads, scale_f=scale)
        y.setType(x.type())
        return y


def window_attention_forward(module, x, mask=None):
    """timm ``WindowAttention.forward`` as one operator: the bias is timm's relative-position bias plus, on a
    shifted block, its (windows, N, N) mask, repeated for every image of the batch (windows are batch-major)."""
    windows = x.shape[0]
    bias = module._get_rel_pos_bias()
    if mask is not None:
        bias = (bias + mask.unsqueeze(1)).repeat(windows // mask.shape[0], 1, 1, 1)
    y = BiasedOrtAttention.apply(x, module.qkv.weight.t(), module.qkv.bias, bias, module.num_heads,
                                 float(module.scale))
    return module.proj(y)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="where the two .onnx files are written")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=60)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    from timm.models.swin_transformer import WindowAttention

    from mixa.export import export_onnx
    from mixa.models import create_model
    from mixa.profile.records import environment
    from mixa.profile.timing import paired_speedup, round_robin
    from side_by_side import fresh_runners, ort_header

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = create_model("swin_tiny_patch4_window7_224", pretrained=False).eval()
    export_onnx(model, work / "plain.onnx", (3, 224, 224), softmax="plain")
    for m in model.modules():
        if type(m) is WindowAttention:
            m.forward = types.MethodType(window_attention_forward, m)
    result = export_onnx(model, work / "ort.onnx", (3, 224, 224), softmax="plain")
    print(f"operator form: {result.op_counts.get('Attention')} Attention nodes, max |ORT - torch| "
          f"{result.max_abs_diff:.2g}", file=sys.stderr)
    print(ort_header(environment(), args.rounds, "Swin-T @224 fp32"))
    for run in range(1, args.runs + 1):
        calls = fresh_runners([work / f"{form}.onnx" for form in ("plain", "ort")], 224, run)
        plain, ort = round_robin(calls, warmup=3, rounds=args.rounds, clock="cpu")
        print(f"run {run}: plain {statistics.median(plain) * 1e3:.1f} ms, operator "
              f"{statistics.median(ort) * 1e3:.1f} ms, operator speed-up {paired_speedup(plain, ort):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
