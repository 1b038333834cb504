"""MixAttention: the thin module around a registered core that takes the place of a timm attention layer.

It accepts the call signatures of timm's ViT ``Attention`` (``attn_mask``, ``is_causal``) and Swin's
``WindowAttention`` (``mask``) across timm versions, and keeps timm's attribute names (``qkv``, ``proj``,
``q_norm``, ``k_norm``, ``norm``) so that weights carry over one to one.

Decisions for RALA outside its home (documented in README, tested in tests/test_attention.py):
- Prefix tokens (class / distillation) have no grid position: they take part in every reduction like any
  token, but receive no LePE term. No RoPE is applied in converted models: the pretrained q/k were never
  rotated, and a converted layer must start as the plain kernelised attention of its pretrained weights.
- In Swin, each window is the grid: LePE runs on the ws x ws window (zero padding at window borders);
  the shifted-window mask becomes regions, each an independent self-attention (``masked_by_regions``).
  Swin's relative-position bias has no place in a linear core and is dropped from replaced layers.
- New parameters start neutral: gate phi(x) = 0 x + 1 and LePE = 0, so a freshly converted layer equals
  the kernelised attention built from the pretrained q/k/v/proj.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional, Union

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers.gates import describe_gate, make_gate, reset_gate
from . import functional as AF
from .feature_maps import make_feature_map
from .registry import get_attention_kind


def _grid_side(tokens: int) -> int:
    """The side of a square grid of ``tokens`` tokens. Recorded as one call by torch.fx (a traced token count
    is not a number Python's maths can take)."""
    side = int(math.sqrt(tokens) + 0.5)
    if side * side != tokens:
        raise ValueError(f"LePE needs a square token grid; got {tokens} grid tokens")
    return side


torch.fx.wrap("_grid_side")


# A window of Swin's shifted-window attention straddles at most two of the three slices per axis the shift
# cuts the (padded) grid into (timm's get_attn_mask): at most 2 x 2 regions.
SWIN_MAX_REGIONS = 4


class _Attends(nn.Module):
    """What ``_attend_as_one_call`` needs of a MixAttention (an interface type, so that TorchScript can compile
    an FX graph that passes the layer to it)."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor], mask: Optional[Tensor],
               is_causal: bool) -> Tensor:
        pass


with warnings.catch_warnings():  # torch 2.14 deprecates TorchScript; say so once per use, not on import
    warnings.simplefilter("ignore", FutureWarning)
    _Attends = torch.jit.interface(_Attends)


def _attend_as_one_call(module: _Attends, q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor],
                        mask: Optional[Tensor], is_causal: bool) -> Tensor:
    """``module.attend``, recorded by torch.fx as one call. A traced timm ViT passes its ``attn_mask`` and
    ``is_causal`` arguments down as graph inputs, so whether a mask is given is known only at run time --
    as in timm's own ``resolve_self_attn_mask``, that decision stays out of the traced graph."""
    return module.attend(q, k, v, attn_mask, mask, is_causal)


torch.fx.wrap("_attend_as_one_call")


def regions_from_window_mask(mask: Tensor) -> Tensor:
    """Swin's additive (nW, N, N) mask (0 = same region) -> (nW, N) region numbers 0, 1, .. per window, in
    the order of each region's first token. Only tensor ops (no data-dependent shape), so it exports."""
    first = (mask == 0).to(torch.int8).argmax(dim=-1)               # each token's region's first token
    leads = first == torch.arange(mask.shape[-1], device=mask.device)
    return leads.cumsum(dim=-1).gather(-1, first) - 1


class MixAttention(nn.Module):
    __jit_unused_properties__ = ["options"]  # Python-side config, not part of a scripted forward
    __constants__ = ["max_regions"]  # TorchScript reads a module constant, not a global
    max_regions = SWIN_MAX_REGIONS

    def __init__(self, dim: int, num_heads: int, kind: str = "rala", qkv_bias: bool = True,
                 proj_bias: bool = True, num_prefix_tokens: int = 0, gate: Union[str, bool, None] = None,
                 gate_rank: Optional[int] = None, lepe: Optional[bool] = None, lepe_kernel: int = 5,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        spec = get_attention_kind(kind)
        defaults = spec.module_defaults
        self.kind = kind
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.num_prefix_tokens = num_prefix_tokens
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.Identity()
        self.k_norm = nn.Identity()
        self.norm = nn.Identity()
        self.gate = make_gate(defaults.get("gate", "none") if gate is None else gate, dim, gate_rank)
        use_lepe = defaults.get("lepe", False) if lepe is None else lepe
        if use_lepe and (lepe_kernel < 1 or lepe_kernel % 2 == 0):
            raise ValueError(f"lepe_kernel must be odd and positive; got {lepe_kernel}")
        self.lepe = nn.Conv2d(dim, dim, lepe_kernel, padding=lepe_kernel // 2, groups=dim) if use_lepe else None
        # a learnable kernel (the hedgehog kind): applied to q and k before the core, which then works on features
        self.feature_map = make_feature_map(defaults.get("feature_map"), num_heads, self.head_dim)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        # Only one of _linear_core / _quadratic_core exists: forward tests with hasattr, which TorchScript
        # resolves at compile time, so each core is compiled with the mask argument its signature has
        # (key_mask: linear, attn_mask: quadratic).
        if spec.linear:
            self._linear_core = spec.core
        else:
            self._quadratic_core = spec.core
        self.reset_new_parameters()

    def reset_new_parameters(self) -> None:
        """Gate = 1, LePE = 0, a feature map at its start: the layer is then exactly its kernelised attention."""
        reset_gate(self.gate)
        if self.feature_map is not None:
            self.feature_map.reset_parameters()
        if self.lepe is not None:
            nn.init.zeros_(self.lepe.weight)
            nn.init.zeros_(self.lepe.bias)

    @property
    def options(self) -> dict:
        """What rebuilds this layer (saved in the model config)."""
        return {"kind": self.kind, **describe_gate(self.gate), "lepe": self.lepe is not None,
                "lepe_kernel": self.lepe.kernel_size[0] if self.lepe is not None else 5,
                "qkv_bias": self.qkv.bias is not None, "proj_bias": self.proj.bias is not None,
                "num_prefix_tokens": self.num_prefix_tokens}

    @classmethod
    def from_timm(cls, attn: nn.Module, kind: str, num_prefix_tokens: int = 0, **options) -> "MixAttention":
        """Build from a timm ``Attention`` / ``WindowAttention``, reusing its q/k/v/proj weights."""
        dim = attn.qkv.in_features
        if attn.qkv.out_features != 3 * dim or getattr(attn, "gate", None) is not None:
            raise ValueError(f"cannot replace {type(attn).__name__}: only attention with qkv width 3 x dim "
                             f"and no output gate is supported")
        module = cls(dim, attn.num_heads, kind=kind, qkv_bias=attn.qkv.bias is not None,
                     proj_bias=attn.proj.bias is not None, num_prefix_tokens=num_prefix_tokens, **options)
        module.to(device=attn.qkv.weight.device, dtype=attn.qkv.weight.dtype)
        module.qkv.load_state_dict(attn.qkv.state_dict())
        module.proj.load_state_dict(attn.proj.state_dict())
        for name in ("q_norm", "k_norm", "norm"):
            if isinstance(getattr(attn, name, None), nn.Module):
                setattr(module, name, getattr(attn, name))
        if isinstance(getattr(attn, "proj_drop", None), nn.Dropout):
            module.proj_drop = attn.proj_drop
        return module

    def _heads(self, x: Tensor):
        """q, k, v as (B, heads, N, d). One transpose of the (B, 3 heads, N, d) view and a split along its
        head axis: exported, that is a Transpose and a Split, where unbinding a separate q/k/v axis adds a
        Squeeze per part and the transposes ONNX Runtime moves behind them (about 20 us per layer at
        width 64)."""
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3 * self.num_heads, self.head_dim).transpose(1, 2)
        return qkv.split(self.num_heads, dim=1)

    def _lepe_grid(self, v_t: Tensor) -> Tensor:
        """LePE's depth-wise conv over the token grid: (B, heads, d, grid tokens) or one image's (heads, d,
        grid tokens), same shape out. One Reshape into the conv's (images, channels, side, side) input and one
        out: an unsqueeze for one image would be a node more in the exported graph."""
        h, d, grid = v_t.shape[-3:]
        side = _grid_side(grid)
        return self.lepe(v_t.reshape(-1, h * d, side, side)).reshape(v_t.shape)

    def _lepe(self, v: Tensor) -> Tensor:
        """Depth-wise conv on v over the token grid; prefix tokens get zero."""
        p = self.num_prefix_tokens
        x = self._lepe_grid(v[:, :, p:].transpose(-1, -2)).transpose(-1, -2)
        # Zero rows for the prefix tokens by padding (a Pad node), not by concatenating a zeros tensor
        # (which the exporter would fold into a constant the size of the batch).
        return F.pad(x, [0, 0, p, 0]) if p > 0 else x

    def _lepe_tokens_last(self, v_t: Tensor) -> Tensor:
        """``_lepe`` of v given as (B, heads, d, N), result in that layout (AF's tokens-last core forms)."""
        p = self.num_prefix_tokens
        x = self._lepe_grid(v_t[..., p:])
        return F.pad(x, [p, 0]) if p > 0 else x

    def _lepe_one_image(self, v_t: Tensor) -> Tensor:
        """``_lepe`` of one image's v given as (heads, d, N), result in that layout (the one-image cores'). The
        prefix tokens' zeros are a (heads, d, prefix) constant concatenated in front: with one image there is
        no batch to size it by, and ONNX Runtime runs the Concat faster than a Pad (benchmarks/edge/README.md)."""
        p = self.num_prefix_tokens
        x = self._lepe_grid(v_t[..., p:])
        return torch.cat([x.new_zeros(x.shape[0], x.shape[1], p), x], dim=-1) if p > 0 else x

    def _key_mask_from(self, attn_mask: Tensor, b: int, n: int) -> Tensor:
        """A key-padding mask broadcastable to (B, 1, 1, N) -> (B, 1, N) participation weights."""
        if attn_mask.dim() != 4 or attn_mask.shape[-2] != 1:
            raise ValueError(f"{self.kind} attention supports only key-padding masks of shape (B, 1, 1, N); "
                             f"got {list(attn_mask.shape)}")
        keep = attn_mask if attn_mask.dtype == torch.bool else attn_mask > -1e4
        return keep.reshape(keep.shape[0], 1, n).expand(b, 1, n)

    @staticmethod
    def _pair_mask(attn_mask: Optional[Tensor], mask: Optional[Tensor], b: int, n: int) -> Optional[Tensor]:
        """timm's additive / boolean masks -> one boolean (B, 1, N, N) 'pair takes part' mask, or None."""
        keep: Optional[Tensor] = None
        if attn_mask is not None:
            keep = attn_mask if attn_mask.dtype == torch.bool else attn_mask > -1e4
        if mask is not None:  # Swin's (nW, N, N) window mask: 0 within a region, -100 across
            nw = mask.shape[0]
            regions = (mask == 0).view(1, nw, 1, n, n).expand(b // nw, nw, 1, n, n).reshape(b, 1, n, n)
            keep = regions if keep is None else keep & regions
        return keep

    def _by_regions(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """The linear core per Swin shifted-window region, a static loop of SWIN_MAX_REGIONS (exportable):
        ``AF.masked_by_regions`` written out with the layer's own core, so that TorchScript compiles it."""
        out: Optional[Tensor] = None
        for member in AF.region_members(regions_from_window_mask(mask), self.max_regions, q.shape[0], q.dtype):
            region_out = self._linear_core(q, k, v, key_mask=member) * member.unsqueeze(-1)
            out = region_out if out is None else out + region_out
        assert out is not None
        return out

    @torch.jit.export
    def attend(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor], mask: Optional[Tensor],
                is_causal: bool) -> Tensor:
        """The core under timm's masks: (B, heads, N, d) q, k, v -> the attention result, same shape."""
        b, n = q.shape[0], q.shape[2]
        if self.kind == "softmax":
            if mask is not None:  # Swin's (nW, N, N) window mask
                nw = mask.shape[0]
                mask = mask.to(q.dtype).view(1, nw, 1, n, n).expand(b // nw, nw, 1, n, n).reshape(b, 1, n, n)
                attn_mask = mask if attn_mask is None else attn_mask + mask
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        if is_causal:
            raise ValueError(f"{self.kind} attention does not support is_causal=True")
        if hasattr(self, "_quadratic_core"):
            return self._quadratic_core(q, k, v, attn_mask=self._pair_mask(attn_mask, mask, b, n))
        if hasattr(self, "_linear_core"):
            if mask is not None:
                return self._by_regions(q, k, v, mask)
            if attn_mask is not None:
                return self._linear_core(q, k, v, key_mask=self._key_mask_from(attn_mask, b, n))
            return self._linear_core(q, k, v)
        # Reached only under TorchScript, when the core function failed to compile (the attribute is then dropped)
        raise RuntimeError(f"the {self.kind} core did not compile with TorchScript; torch.jit.script(core) says why")

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None, mask: Optional[Tensor] = None,
                is_causal: bool = False) -> Tensor:
        """timm's keywords: ``attn_mask`` / ``is_causal`` (ViT ``Attention``), ``mask`` (Swin ``WindowAttention``)."""
        b, n, c = x.shape
        q, k, v = self._heads(x)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.feature_map is not None:  # a learnable kernel (hedgehog): the core works on its features
            q, k = self.feature_map(q, k)
        if torch.jit.is_scripting():
            y = self.attend(q, k, v, attn_mask, mask, is_causal)
        else:
            y = _attend_as_one_call(self, q, k, v, attn_mask, mask, is_causal)

        if self.lepe is not None:
            y = y + self._lepe(v)
        return self._finish(y.transpose(1, 2).reshape(b, n, c), x)

    def _finish(self, y: Tensor, x: Tensor) -> Tensor:
        """The attention result as (B, N, C) -> norm, output gate (of the layer's input ``x``), projection."""
        y = self.norm(y)
        if self.gate is not None:
            y = y * self.gate(x)
        return self.proj_drop(self.proj(y))

    def set_window_size(self, window_size) -> None:
        """Swin's ``set_input_size`` calls this on every block's attention: a linear core has no
        relative-position table to resize, and LePE reads the window from the token count."""

    def attention_macs(self, x: Tensor) -> int:
        """MACs of the core (the projections, gate and LePE are counted as the layers they are)."""
        b, n, _ = x.shape
        return b * get_attention_kind(self.kind).core_macs(self.num_heads, n, self.head_dim)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, heads={self.num_heads}, head_dim={self.head_dim}, " \
               f"gate={describe_gate(self.gate)['gate']}, lepe={self.lepe is not None}, prefix={self.num_prefix_tokens}"
