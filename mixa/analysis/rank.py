"""Numerical rank of attention, per layer and head, on real inputs (RALA paper, Figs. 2/4/5/8).

For every attention layer the forward hooks here take the layer's own q, k, v and compute, per image and
head:
- ``kv``: the d x d buffer a linear attention builds from the keys and values (relu/stella:
  ReLU(K)^T V; rala: K'^T V / N with K' the reweighted kernelised keys, RoPE-rotated where the layer uses
  RoPE). Softmax attention has no such buffer (reported as None).
- ``core``: the N x d output of the layer's attention core (``mixa.attention.functional``).
- ``out``: the N x d per-head signal the output projection receives: the core output plus LePE, times the
  gate where the layer has them (RALA's rank augmentation); the same as ``core`` otherwise.

Rank = number of singular values above ``rtol`` times the largest (SVD in float64). The default
``rtol = 1e-2`` counts the directions carrying at least 1% of the leading one's energy scale; the exact
count depends on the tolerance, so it is always reported with the results.

Supported layers: timm ``Attention`` (ViT/DeiT) and ``WindowAttention`` (Swin; relative-position bias
included), mixa's ``MixAttention`` (converted models, every kind) and RAVLT's attention.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import WindowAttention
from timm.models.vision_transformer import Attention
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..attention import MixAttention, regions_from_window_mask
from ..attention.modules import SWIN_MAX_REGIONS
from ..attention import functional as AF
from ..attention.registry import get_attention_kind
from ..errors import UsageError
from ..io import save_figure
from ..models.ravlt import RAVLTAttention
from ..report import table

DEFAULT_RTOL = 1e-2

__all__ = ["DEFAULT_RTOL", "numerical_rank", "kv_buffer", "LayerRanks", "find_attention_layers",
           "rank_analysis", "rank_table", "plot_ranks"]


def numerical_rank(matrices: Tensor, rtol: float = DEFAULT_RTOL) -> Tensor:
    """Rank of each matrix in a (..., m, n) stack: singular values > rtol * largest (float64 SVD)."""
    s = torch.linalg.svdvals(matrices.double())
    top = s[..., :1]
    return ((s > rtol * top) & (top > 0)).sum(-1)


# -- the d x d buffer of each linear kind -------------------------------------------------------------------
def _rala_keys(q: Tensor, k: Tensor, rope: Optional[Tuple[Tensor, Tensor]]) -> Tensor:
    """RALA's reweighted kernelised keys k'_j = N softmax_j(q_g . kappa(k_j) / sqrt d) kappa(k_j)."""
    q, k = F.elu(q) + 1.0, F.elu(k) + 1.0
    n, d = k.shape[-2], k.shape[-1]
    alpha = torch.softmax(q.mean(dim=-2, keepdim=True) @ k.transpose(-2, -1) / math.sqrt(d), dim=-1)
    k = k * alpha.transpose(-2, -1) * n
    return AF.apply_rope(k, *rope) if rope is not None else k


_KV_BUFFERS: Dict[str, Callable[..., Tensor]] = {
    "relu": lambda q, k, v, rope=None: F.relu(k).transpose(-2, -1) @ v,
    "stella": lambda q, k, v, rope=None: F.relu(k).transpose(-2, -1) @ v / (k.shape[-2] * math.sqrt(k.shape[-1])),
    "rala": lambda q, k, v, rope=None: _rala_keys(q, k, rope).transpose(-2, -1) @ v / k.shape[-2],
}


def kv_buffer(kind: str, q: Tensor, k: Tensor, v: Tensor, rope=None) -> Optional[Tensor]:
    """The (B, heads, d, d) key-value buffer of a linear kind, None for kinds without one (softmax)."""
    fn = _KV_BUFFERS.get(kind)
    return None if fn is None else fn(q.double(), k.double(), v.double(),
                                       None if rope is None else tuple(t.double() for t in rope))


# -- what each supported layer computes ---------------------------------------------------------------------
@dataclass
class _Views:
    kind: str
    q: Tensor
    k: Tensor
    v: Tensor
    core: Tensor          # (B, H, N, d)
    out: Tensor           # (B, H, N, d)
    rope: Optional[Tuple[Tensor, Tensor]] = None


def _heads(t: Tensor, b: int, n: int, heads: int) -> Tensor:
    return t.reshape(b, n, heads, -1).transpose(1, 2)


def _mix_views(m: MixAttention, args, kwargs) -> _Views:
    x = args[0]
    b, n, c = x.shape
    q, k, v = m.qkv(x).reshape(b, n, 3, m.num_heads, m.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = m.q_norm(q), m.k_norm(k)
    if m.feature_map is not None:  # a learnable kernel (hedgehog): the core works on its features
        q, k = m.feature_map(q, k)
    mask = kwargs.get("mask")  # Swin's shifted-window mask, as timm passes it
    core = get_attention_kind(m.kind).core
    if mask is not None and m.kind != "softmax":
        y = AF.masked_by_regions(core, q, k, v, regions_from_window_mask(mask), SWIN_MAX_REGIONS)
    elif mask is not None:
        nw = mask.shape[0]
        bias = mask.to(q.dtype).view(1, nw, 1, n, n).expand(b // nw, nw, 1, n, n).reshape(b, 1, n, n)
        y = AF.softmax_attention(q, k, v, attn_mask=bias)
    else:
        y = core(q, k, v)
    out = y + m._lepe(v) if m.lepe is not None else y
    out = m.norm(out.transpose(1, 2).reshape(b, n, c))
    if m.gate is not None:
        out = out * m.gate(x)
    return _Views(m.kind, q, k, v, y, _heads(out, b, n, m.num_heads))


def _timm_views(m: nn.Module, args, kwargs) -> _Views:
    x = args[0]
    b, n, c = x.shape
    heads = m.num_heads
    d = m.qkv.out_features // (3 * heads)
    q, k, v = m.qkv(x).reshape(b, n, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = getattr(m, "q_norm", nn.Identity())(q), getattr(m, "k_norm", nn.Identity())(k)
    bias = None
    if hasattr(m, "_get_rel_pos_bias"):  # Swin WindowAttention
        bias = m._get_rel_pos_bias()
        mask = kwargs.get("mask", args[1] if len(args) > 1 else None)
        if mask is not None:
            nw = mask.shape[0]
            bias = bias + mask.to(q.dtype).view(1, nw, 1, n, n).expand(b // nw, nw, 1, n, n).reshape(b, 1, n, n)
    elif kwargs.get("attn_mask") is not None:
        bias = kwargs["attn_mask"]
    y = AF.softmax_attention(q, k, v, attn_mask=bias, scale=getattr(m, "scale", None))
    return _Views("softmax", q, k, v, y, y)


def _ravlt_views(m: nn.Module, args, kwargs) -> _Views:
    x, rope = args[0], args[1] if len(args) > 1 else kwargs["rope"]
    b, h, w, c = x.shape
    q, k, v, o = m.project(x)
    y = m.core(q, k, v, rope)
    lepe = m.lepe(v.transpose(2, 3).reshape(b, c, h, w)).permute(0, 2, 3, 1)
    out = (y.transpose(1, 2).reshape(b, h, w, c) + lepe) * o
    return _Views(m.kind, q, k, v, y, _heads(out, b, h * w, m.num_heads), rope=rope if m.kind == "rala" else None)


def _adapter(module: nn.Module) -> Optional[Callable]:
    if isinstance(module, MixAttention):
        return _mix_views
    if isinstance(module, RAVLTAttention):
        return _ravlt_views
    if isinstance(module, (Attention, WindowAttention)):
        return _timm_views
    return None


def find_attention_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """(path, module) of every attention layer rank analysis understands, in definition order."""
    return [(name, m) for name, m in model.named_modules() if _adapter(m) is not None]


# -- accumulation -------------------------------------------------------------------------------------------
@dataclass
class LayerRanks:
    """Per-head ranks summed over the samples seen (a sample = one image, or one window in Swin)."""
    path: str
    kind: str = ""
    heads: int = 0
    tokens: int = 0
    head_dim: int = 0
    samples: int = 0
    kv: Optional[List[float]] = None
    core: List[float] = field(default_factory=list)
    out: List[float] = field(default_factory=list)

    def add(self, views: _Views, rtol: float) -> None:
        b, heads, n, d = views.q.shape
        self.kind, self.heads, self.tokens, self.head_dim = views.kind, heads, n, d
        kv = kv_buffer(views.kind, views.q, views.k, views.v, views.rope)
        sums = {"core": numerical_rank(views.core, rtol).sum(0), "out": numerical_rank(views.out, rtol).sum(0)}
        if kv is not None:
            sums["kv"] = numerical_rank(kv, rtol).sum(0)
        for key, value in sums.items():
            old = getattr(self, key) or [0.0] * heads
            setattr(self, key, [a + float(c) for a, c in zip(old, value.tolist())])
        self.samples += b

    def summary(self) -> dict:
        def mean(values):
            return None if values is None else [v / max(self.samples, 1) for v in values]

        return {"layer": self.path, "kind": self.kind, "heads": self.heads, "tokens": self.tokens,
                "head_dim": self.head_dim, "full_rank_out": min(self.tokens, self.head_dim),
                "samples": self.samples, "kv_rank": mean(self.kv), "core_rank": mean(self.core),
                "out_rank": mean(self.out)}


def rank_analysis(model: nn.Module, batches: Iterable[Tensor], rtol: float = DEFAULT_RTOL,
                  max_images: Optional[int] = None, progress: bool = True) -> dict:
    """Mean numerical rank per layer and head over the images in ``batches`` (tensors or (images, labels)).

    Returns a JSON-ready dict: {"rtol", "images", "layers": [summary per layer]}.
    """
    layers = find_attention_layers(model)
    if not layers:
        raise UsageError(f"{type(model).__name__} has no attention layer that rank analysis understands "
                         f"(timm ViT/DeiT/Swin attention, mixa MixAttention, RAVLT)")
    stats = {name: LayerRanks(name) for name, _ in layers}

    def hook_for(name, module):
        adapter = _adapter(module)

        def hook(mod, args, kwargs, output):
            stats[name].add(adapter(mod, args, kwargs), rtol)
        return hook

    handles = [m.register_forward_hook(hook_for(name, m), with_kwargs=True) for name, m in layers]
    images = 0
    was_training = model.training
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    try:

        model.eval()
        bar = tqdm(total=max_images, unit="img", desc="rank", disable=not progress)
        with torch.no_grad():
            for batch in batches:
                if batch is None:
                    continue
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                if max_images is not None:
                    x = x[:max_images - images]
                if len(x) == 0:
                    break
                model(x.to(device))
                images += len(x)
                bar.update(len(x))
                if max_images is not None and images >= max_images:
                    break
        bar.close()
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if images == 0:
        raise UsageError("the data yielded no images")
    return {"rtol": rtol, "images": images, "layers": [stats[name].summary() for name, _ in layers]}


def _mean(values: Optional[List[float]]) -> Optional[float]:
    return None if values is None else sum(values) / len(values)


def rank_table(result: dict) -> str:
    """One row per layer: kind, N, d and the mean over heads of the KV, core and output ranks."""
    rows = []
    for i, layer in enumerate(result["layers"]):
        kv = _mean(layer["kv_rank"])
        rows.append((i, layer["layer"], layer["kind"], layer["tokens"], layer["head_dim"],
                     "-" if kv is None else round(kv, 1), round(_mean(layer["core_rank"]), 1),
                     round(_mean(layer["out_rank"]), 1), layer["full_rank_out"]))
    head = (f"rank = singular values > {result['rtol']:g} x largest; mean over heads and the "
            f"{result['images']} images (Swin: their windows)")
    return head + "\n" + table(rows, ["#", "layer", "kind", "N", "d", "KV (dxd)", "core (Nxd)", "out (Nxd)", "full"])


def plot_ranks(result: dict, path) -> None:
    """Per-layer mean ranks (KV, core, output) with the per-head spread; needs the ``plot`` extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("plotting needs matplotlib: pip install 'mixa[plot]'") from None

    layers = result["layers"]
    xs = list(range(len(layers)))
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(layers) + 2), 4))
    for key, label, marker in (("kv_rank", "KV buffer (d x d)", "s"), ("core_rank", "core output (N x d)", "o"),
                               ("out_rank", "output incl. LePE/gate (N x d)", "^")):
        pts = [(x, layer[key]) for x, layer in zip(xs, layers) if layer[key] is not None]
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [sum(v) / len(v) for _, v in pts], marker=marker, label=label)
        for x, values in pts:
            ax.scatter([x] * len(values), values, s=6, alpha=0.3, color=ax.lines[-1].get_color())
    ax.plot(xs, [layer["full_rank_out"] for layer in layers], "k--", lw=0.8, label="full rank min(N, d)")
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{i}\n{layer['kind']}" for i, layer in enumerate(layers)], fontsize=7)
    ax.set_xlabel("attention layer")
    ax.set_ylabel(f"rank (rtol {result['rtol']:g})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=150)
    plt.close(fig)
