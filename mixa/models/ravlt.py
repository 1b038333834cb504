"""RAVLT (Fan, Huang, He; "Breaking the Low-Rank Dilemma of Linear Attention", CVPR 2025): the hierarchical
RALA backbone, weight-compatible with the official checkpoints (RAVLT_T.pth ... RAVLT_L.pth).

The official model is NCHW, with 1x1 convs and rearranges around every attention. This one keeps
activations channels-last, (B, H, W, C), from the stem on: the 1x1 convs are ``PointwiseLinear`` layers
(same state dict as the convs), LayerNorm needs no permutes, the depth-wise convs run on a free NCHW
view of channels-last memory, and the softmax stages use SDPA. The attention maths is
``mixa.attention.functional``'s (``rala_attention`` with RoPE in the numerator, ``softmax_attention``).

``import mixa`` registers ravlt_t/s/b/l with timm:

    model = timm.create_model("ravlt_s", num_classes=100, drop_path_rate=0.15)
    model = mixa.models.create_model("ravlt_s", checkpoint="RAVLT_S.pth")   # official file, strict
"""
# (No ``from __future__ import annotations``: torch.fx copies forward's annotations into the code of a traced
# graph, where TorchScript must resolve them.)
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention import functional as AF
from ..attention.registry import get_attention_kind
from ..layers import PointwiseLinear, RoPE2d

from timm.layers import DropPath, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

__all__ = ["RAVLT", "RAVLTAttention", "RAVLTBlock", "checkpoint_filter_fn", "TRAIN_DROP_PATH"]

# Training-time drop-path of the official recipe (the model defaults to 0, as timm models do).
TRAIN_DROP_PATH = {"ravlt_t": 0.10, "ravlt_s": 0.15, "ravlt_b": 0.40, "ravlt_l": 0.55}

# Stages 1-2 use RALA, stages 3-4 softmax attention (few tokens there).
STAGE_KINDS = ("rala", "rala", "softmax", "softmax")


class RAVLTAttention(nn.Module):
    """RAVLT attention on channels-last input: ``proj((Y + LePE(v)) * o)``.

    ``qkvo`` gives q, k, v and the gate o in that channel order; heads split as channel = head * d + j;
    Y is RALA (``kind="rala"``) or softmax attention (``kind="softmax"``), both with 2-D RoPE on q, k.
    """

    def __init__(self, dim: int, num_heads: int, kind: str = "rala", device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if kind not in ("rala", "softmax"):
            raise ValueError(f"RAVLT attention is 'rala' or 'softmax', not {kind!r}")
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.kind = kind
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkvo = PointwiseLinear(dim, 4 * dim, **dd)
        self.lepe = nn.Conv2d(dim, dim, 5, padding=2, groups=dim, **dd)
        self.proj = PointwiseLinear(dim, dim, **dd)

    def project(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """x (B, H, W, C) -> q, k, v (B, heads, N, d) and the gate o (B, H, W, C)."""
        b, h, w, c = x.shape
        qkvo = self.qkvo(x)
        qkv = qkvo[..., :3 * c].reshape(b, h * w, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return q, k, v, qkvo[..., 3 * c:]

    def core(self, q: Tensor, k: Tensor, v: Tensor, rope: Tuple[Tensor, Tensor]) -> Tensor:
        """The attention result Y (B, heads, N, d) before LePE and gate."""
        if self.kind == "rala":
            return AF.rala_attention(q, k, v, rope=rope)
        cos, sin = rope[0].to(q.dtype), rope[1].to(q.dtype)
        return AF.softmax_attention(AF.apply_rope(q, cos, sin), AF.apply_rope(k, cos, sin), v)

    def forward(self, x: Tensor, rope: Tuple[Tensor, Tensor]) -> Tensor:
        b, h, w, c = x.shape
        q, k, v, o = self.project(x)
        y = self.core(q, k, v, rope).transpose(1, 2).reshape(b, h, w, c)
        v_grid = v.transpose(2, 3).reshape(b, c, h, w)  # NCHW for the depth-wise conv
        y = y + self.lepe(v_grid).permute(0, 2, 3, 1)
        return self.proj(y * o)

    def attention_macs(self, x: Tensor, *args) -> int:
        b, h, w, _ = x.shape
        return b * get_attention_kind(self.kind).core_macs(self.num_heads, h * w, self.head_dim)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, heads={self.num_heads}, head_dim={self.head_dim}"


class LayerNormLast(nn.Module):
    """LayerNorm over channels of channels-last input, stored as ``<name>.norm`` like the official one."""

    def __init__(self, dim: int, eps: float = 1e-6, device=None, dtype=None):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x)


class ConvFFN(nn.Module):
    """fc1 -> GELU -> h + DWConv3x3(h) -> fc2, on channels-last input."""

    def __init__(self, dim: int, hidden: int, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.fc1 = PointwiseLinear(dim, hidden, **dd)
        self.act = nn.GELU()
        self.fc2 = PointwiseLinear(hidden, dim, **dd)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, **dd)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.fc1(x))
        x = x + self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # NCHW view of channels-last memory
        return self.fc2(x)


class RAVLTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, kind: str, mlp_ratio: float = 3.5, drop_path: float = 0.0,
                 layer_scale_init: float = 1.0, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        # Registration order = the official state-dict order.
        # (1, C, 1, 1) as in the official NCHW model; viewed as (C,) on channels-last activations.
        self.gamma_1 = nn.Parameter(torch.full((1, dim, 1, 1), float(layer_scale_init), **dd))
        self.gamma_2 = nn.Parameter(torch.full((1, dim, 1, 1), float(layer_scale_init), **dd))
        self.norm1 = LayerNormLast(dim, **dd)
        self.attn = RAVLTAttention(dim, num_heads, kind, **dd)
        self.norm2 = LayerNormLast(dim, **dd)
        self.ffn = ConvFFN(dim, int(dim * mlp_ratio), **dd)
        self.pos = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, rope: Tuple[Tensor, Tensor]) -> Tensor:
        x = x + self.pos(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = x + self.drop_path(self.gamma_1.view(-1) * self.attn(self.norm1(x), rope))
        x = x + self.drop_path(self.gamma_2.view(-1) * self.ffn(self.norm2(x)))
        return x


class Downsample(nn.Module):
    """conv3x3 stride 2 + BatchNorm, channels-last in and out."""

    def __init__(self, dim: int, out_dim: int, device=None, dtype=None):
        super().__init__()
        self.reduction = nn.Conv2d(dim, out_dim, 3, stride=2, padding=1, device=device, dtype=dtype)
        self.norm = nn.BatchNorm2d(out_dim, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.reduction(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)


class RAVLTStage(nn.Module):
    """Blocks of one stage sharing a RoPE table holder; the downsample (if any) runs after them."""

    def __init__(self, dim: int, depth: int, num_heads: int, kind: str, out_dim: Optional[int],
                 mlp_ratio: float, drop_path: Sequence[float], layer_scale_init: float, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.RoPE = RoPE2d(dim // num_heads, **dd)  # noqa: N815 (official state-dict name)
        self.blocks = nn.ModuleList([
            RAVLTBlock(dim, num_heads, kind, mlp_ratio, drop_path[i], layer_scale_init, **dd) for i in range(depth)])
        self.downsample = Downsample(dim, out_dim, **dd) if out_dim is not None else None
        self.grad_checkpointing = False

    def forward_blocks(self, x: Tensor) -> Tensor:
        rope = self.RoPE(x.shape[1], x.shape[2])
        if torch.jit.is_scripting():  # (TorchScript compiles only this branch: no checkpointing)
            for block in self.blocks:
                x = block(x, rope)
            return x
        for block in self.blocks:
            if self.grad_checkpointing and x.requires_grad:
                x = torch.utils.checkpoint.checkpoint(block, x, rope, use_reentrant=False)
            else:
                x = block(x, rope)
        return x

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_blocks(x)
        return self.downsample(x) if self.downsample is not None else x


class Stem(nn.Module):
    """Four conv3x3 (strides 2, 1, 1, 2) with BN, GELU between: ``patch_embed.proj.{0..10}``."""

    def __init__(self, in_chans: int, dim: int, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        half = dim // 2
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, half, 3, 2, 1, **dd), nn.BatchNorm2d(half, **dd), nn.GELU(),
            nn.Conv2d(half, half, 3, 1, 1, **dd), nn.BatchNorm2d(half, **dd), nn.GELU(),
            nn.Conv2d(half, half, 3, 1, 1, **dd), nn.BatchNorm2d(half, **dd), nn.GELU(),
            nn.Conv2d(half, dim, 3, 2, 1, **dd), nn.BatchNorm2d(dim, **dd),
        )

    def forward(self, x: Tensor) -> Tensor:
        """NCHW image -> channels-last (B, H/4, W/4, C) features."""
        return self.proj(x.contiguous(memory_format=torch.channels_last)).permute(0, 2, 3, 1)


class RAVLT(nn.Module):
    def __init__(self, in_chans: int = 3, num_classes: int = 1000, embed_dims: Sequence[int] = (64, 128, 256, 512),
                 depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (1, 2, 4, 8),
                 mlp_ratio: float = 3.5, head_dim: int = 1024, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 layer_scale_init: Sequence[float] = (1.0, 1.0, 1.0, 1.0), global_pool: str = "avg",
                 device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if global_pool not in ("avg", ""):
            raise ValueError(f"RAVLT supports global_pool 'avg' or '' (none); got {global_pool!r}")
        self.in_chans = in_chans
        self.output_fmt = "NCHW"  # forward_features, and forward without pooling, return (B, C, H, W)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.embed_dims = list(embed_dims)
        self.num_features = embed_dims[-1]
        self.head_hidden_size = head_dim
        self.drop_rate = drop_rate
        self.patch_embed = Stem(in_chans, embed_dims[0], **dd)
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # linear from 0
        self.layers = nn.ModuleList()
        self.feature_info = []
        start = 0
        for i, depth in enumerate(depths):
            out_dim = embed_dims[i + 1] if i + 1 < len(depths) else None
            self.layers.append(RAVLTStage(embed_dims[i], depth, num_heads[i], STAGE_KINDS[i], out_dim, mlp_ratio,
                                          rates[start:start + depth], layer_scale_init[i], **dd))
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=4 * 2 ** i, module=f"layers.{i}"))
            start += depth
        self.proj = PointwiseLinear(embed_dims[-1], head_dim, **dd)
        self.norm = nn.BatchNorm1d(head_dim, **dd)  # over channels of (B*H*W, C): the official BatchNorm2d's maths
        self.head = PointwiseLinear(head_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # -- timm model interface ------------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay_keywords(self):
        return {"gamma_", "RoPE"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(stem=r"^patch_embed", blocks=r"^layers\.(\d+)" if coarse else
                    [(r"^layers\.(\d+)\.downsample", (0,)), (r"^layers\.(\d+)\.blocks\.(\d+)", None),
                     (r"^proj|^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.layers:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new head (on the model's device and dtype) for ``num_classes`` (0: none); ``global_pool`` 'avg' or ''
        (no pooling: forward returns (B, C, H, W) maps); None keeps the current pooling."""
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"RAVLT supports global_pool 'avg' or '' (none); got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        reference = next(self.parameters())
        self.head = (PointwiseLinear(self.head_hidden_size, num_classes, device=reference.device, dtype=reference.dtype)
                     if num_classes > 0 else nn.Identity())
        if num_classes > 0:
            self._init_weights(self.head)
        self.head.train(self.training)

    def forward_intermediates(self, x: Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """Stage outputs (after the stage's blocks, before its downsample), NCHW or NHWC."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be NCHW or NHWC; got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.layers), indices)
        intermediates = []
        x = self.patch_embed(x)
        stages = self.layers[:max_index + 1] if stop_early else self.layers
        for i, stage in enumerate(stages):
            x = stage.forward_blocks(x)
            if i in take:
                intermediates.append(x.permute(0, 3, 1, 2) if output_fmt == "NCHW" else x)
            if stage.downsample is not None:
                x = stage.downsample(x)
        if intermediates_only:
            return intermediates
        return x.permute(0, 3, 1, 2), intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        take, max_index = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[:max_index + 1]
        self.layers[-1].downsample = None
        if prune_head:
            self.proj, self.norm = nn.Identity(), nn.Identity()
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: Tensor) -> Tensor:
        """Image -> last-stage features (B, C_4, H/32, W/32), a view of channels-last memory."""
        x = self.patch_embed(x)
        for stage in self.layers:
            x = stage(x)
        return x.permute(0, 3, 1, 2)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = self.proj(x)
        b, h, w, c = x.shape
        x = self.norm(x.reshape(b * h * w, c)).reshape(b, h, w, c)
        x = x * torch.sigmoid(x)
        if self.global_pool == "avg":
            x = x.mean(dim=(1, 2))
        x = F.dropout(x, self.drop_rate, self.training) if self.drop_rate > 0 else x
        x = x if pre_logits else self.head(x)
        return x if self.global_pool == "avg" else x.permute(0, 3, 1, 2)  # unpooled maps: NCHW, as output_fmt says

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: Dict[str, Tensor], model: RAVLT) -> Dict[str, Tensor]:
    """Official RAVLT files -> this model: unwrap ``{"model": ...}``; the layers load the official key
    names and conv-shaped weights directly (``PointwiseLinear`` accepts (out, in, 1, 1))."""
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
            break
    return dict(state_dict)


def _create(variant: str, pretrained: bool = False, **kwargs) -> RAVLT:
    # No hub copy of the official weights exists: pretrained=True needs timm's usual
    # pretrained_cfg_overlay=dict(file=PATH); mixa's create_model(checkpoint=PATH) is the safer path.
    return build_model_with_cfg(
        RAVLT, variant, pretrained=pretrained, pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"), **kwargs)


def _cfg(file: str, **kwargs) -> Dict:
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.875, "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "first_conv": "patch_embed.proj.0", "classifier": "head", "license": "mit",
        "origin_url": "https://github.com/qhfan/RALA", "paper_ids": "arXiv:2411.07635",
        # the official file name, as a hint only: nothing is downloaded
        "notes": (f"official weights: {file} (github.com/qhfan/RALA); load with checkpoint=PATH",),
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "ravlt_t.in1k": _cfg("RAVLT_T.pth"),
    "ravlt_s.in1k": _cfg("RAVLT_S.pth"),
    "ravlt_b.in1k": _cfg("RAVLT_B.pth"),
    "ravlt_l.in1k": _cfg("RAVLT_L.pth"),
})

_VARIANTS = {
    "ravlt_t": dict(embed_dims=(64, 128, 256, 512), depths=(2, 2, 6, 2), num_heads=(1, 2, 4, 8),
                    layer_scale_init=(1.0, 1.0, 1.0, 1.0)),
    "ravlt_s": dict(embed_dims=(64, 128, 320, 512), depths=(3, 5, 9, 3), num_heads=(1, 2, 5, 8),
                    layer_scale_init=(1.0, 1.0, 1.0, 1.0)),
    "ravlt_b": dict(embed_dims=(96, 192, 384, 512), depths=(4, 6, 12, 6), num_heads=(1, 2, 6, 8),
                    layer_scale_init=(1.0, 1.0, 1e-6, 1e-6)),
    "ravlt_l": dict(embed_dims=(96, 192, 448, 640), depths=(4, 7, 19, 8), num_heads=(1, 2, 7, 10),
                    layer_scale_init=(1e-6, 1e-6, 1e-6, 1e-6)),
}


def _build(variant: str, pretrained: bool, kwargs: Dict) -> RAVLT:
    return _create(variant, pretrained=pretrained, **{**_VARIANTS[variant], **kwargs})


@register_model
def ravlt_t(pretrained: bool = False, **kwargs) -> RAVLT:
    return _build("ravlt_t", pretrained, kwargs)


@register_model
def ravlt_s(pretrained: bool = False, **kwargs) -> RAVLT:
    return _build("ravlt_s", pretrained, kwargs)


@register_model
def ravlt_b(pretrained: bool = False, **kwargs) -> RAVLT:
    return _build("ravlt_b", pretrained, kwargs)


@register_model
def ravlt_l(pretrained: bool = False, **kwargs) -> RAVLT:
    return _build("ravlt_l", pretrained, kwargs)
