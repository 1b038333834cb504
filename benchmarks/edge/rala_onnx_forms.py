"""Other ONNX graph forms of a rala layer, exported beside today's and timed side by side in ONNX Runtime
(issue 20, ninth session: does any form bring keep-6 rala closer to its MAC ratio?). Each form is the same maths
(checked against eager before export); DeiT-T/14 @224 keep-6 rala (gate identity, LePE and gate perturbed).

- ``today``: mixa's export as it is;
- ``tokens-last``: one transpose of the fused qkv output into q^T, k^T, v^T and a core written for them;
- ``tokens-last-joint``: the same with kappa applied once to q and k together;
- ``elu``: ``tokens-last`` with kappa as ONNX's Elu node + 1;
- ``tokens-last-core``: the fused qkv transposed once into ``rala_attention_tokens_last`` (the .pte form);
- ``three-projections``: q, k, v from three linears, read token-major.

    PYTHONPATH=. python benchmarks/edge/rala_onnx_forms.py WORK_DIR
    mixa profile ORIGINAL.static.onnx WORK_DIR/today.static.onnx WORK_DIR/tokens-last.static.onnx ... --clock cpu --repeat 100

(ORIGINAL: the original's static INT8 file from ``bench_edge.py --files``.)
"""
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from timm import create_model

import mixa
from mixa.attention import functional as AF
from mixa.attention.modules import MixAttention
from mixa.export.onnx import export_onnx
from mixa.export.quantize import quantize_onnx


def _core(q_t, k_t, v_t, kappa):
    """rala on q^T, k^T, v^T (B, H, d, N), kappa applied by the caller when ``kappa`` is None."""
    b, h, d, n = q_t.shape
    if kappa is not None:
        q_t, k_t = kappa(q_t), kappa(k_t)
    q_g = q_t.mean(-1, keepdim=True).reshape(b, h, 1, d)
    p = torch.softmax((q_g @ k_t) * d ** -0.5, dim=-1)                   # (B, H, 1, N)
    den = (p @ k_t.transpose(-2, -1)) @ q_t                               # (B, H, 1, N)
    kv_t = v_t @ (k_t * p).transpose(-2, -1)                              # (B, H, dv, d)
    return (kv_t @ q_t) / (den + AF.RALA_EPS)


def _tokens_last(kappa, joint=False):
    def forward(self, x, attn_mask=None, mask=None, is_causal=False):
        b, n, c = x.shape
        h, d = self.num_heads, self.head_dim
        qkv_t = self.qkv(x).transpose(1, 2).reshape(b, 3 * h, d, n)
        if joint:
            qk_t, v_t = qkv_t.split([2 * h, h], dim=1)
            q_t, k_t = kappa(qk_t).split(h, dim=1)
            y_t = _core(q_t, k_t, v_t, None)
        else:
            q_t, k_t, v_t = qkv_t.split(h, dim=1)
            y_t = _core(q_t, k_t, v_t, kappa)
        y_t = y_t + self._lepe_tokens_last(v_t)
        return self._finish(y_t.reshape(b, c, n).transpose(1, 2), x)
    return forward


def _tokens_last_core(self, x, attn_mask=None, mask=None, is_causal=False):
    b, n, c = x.shape
    h, d = self.num_heads, self.head_dim
    q_t, k_t, v_t = self.qkv(x).transpose(1, 2).reshape(b, 3 * h, d, n).split(h, dim=1)
    y_t = AF.rala_attention_tokens_last(q_t, k_t.transpose(-2, -1), v_t) + self._lepe_tokens_last(v_t)
    return self._finish(y_t.reshape(b, c, n).transpose(1, 2), x)


def _three_projections(self, x, attn_mask=None, mask=None, is_causal=False):
    b, n, c = x.shape
    h, d = self.num_heads, self.head_dim
    (wq, wk, wv), (bq, bk, bv) = self.qkv.weight.chunk(3), self.qkv.bias.chunk(3)
    q, k, v = AF.elu_plus_one(F.linear(x, wq, bq)), AF.elu_plus_one(F.linear(x, wk, bk)), F.linear(x, wv, bv)
    heads = lambda t: t.reshape(b, n, h, d).transpose(1, 2)
    qh, kh, vh = heads(q), heads(k), heads(v)
    p = torch.softmax((q.mean(1).reshape(b, h, 1, d) @ kh.transpose(-2, -1)) * d ** -0.5, dim=-1)
    den = qh @ (p @ kh).transpose(-2, -1)
    kv = (kh * p.reshape(b, h, n, 1)).transpose(-2, -1) @ vh
    y = ((qh @ kv) / (den + AF.RALA_EPS)).transpose(1, 2).reshape(b, n, c)
    pfx, side = self.num_prefix_tokens, int((n - self.num_prefix_tokens) ** 0.5)
    lepe = self.lepe(v[:, pfx:].transpose(1, 2).reshape(b, c, side, side)).reshape(b, c, n - pfx).transpose(1, 2)
    return self._finish(y + F.pad(lepe, [0, 0, pfx, 0]), x)


FORMS = {"today": None, "tokens-last": _tokens_last(AF.elu_plus_one),
         "tokens-last-joint": _tokens_last(AF.elu_plus_one, joint=True),
         "elu": _tokens_last(lambda t: F.elu(t) + 1), "tokens-last-core": _tokens_last_core,
         "three-projections": _three_projections}


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    warnings.simplefilter("ignore")
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    original = create_model("deit_tiny_patch16_224", pretrained=False, patch_size=14).eval()
    model = mixa.convert(original, keep=6, attn="rala", select="uniform", progress=False,
                         attn_options={"gate": "identity"}).eval()
    with torch.no_grad():  # LePE and the gate away from their neutral start, so that the check means something
        for m in model.modules():
            if isinstance(m, MixAttention):
                for p in (*m.lepe.parameters(), *m.gate.parameters()):
                    p.normal_(0, 0.05)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = model(x)
    calib = [np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32) for _ in range(4)]
    today = MixAttention.forward
    for name, forward in FORMS.items():
        MixAttention.forward = forward or today
        try:
            with torch.no_grad():
                diff = (model(x) - expected).abs().max().item()
            assert diff < 1e-4, f"{name}: {diff}"
            export_onnx(model, out / f"{name}.onnx", (3, 224, 224))
        finally:
            MixAttention.forward = today
        quantize_onnx(out / f"{name}.onnx", out / f"{name}.static.onnx", mode="static", calib_batches=calib)
        print(f"{name:18s} max |diff| vs eager {diff:.2e}; wrote {out / name}.onnx and .static.onnx", flush=True)


if __name__ == "__main__":
    main()
