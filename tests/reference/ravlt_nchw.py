"""A plain NCHW formulation of the official RAVLT (github.com/qhfan/RALA): the numerical reference that
tests/test_ravlt.py checks mixa's channels-last ``ravlt_*`` against, and the baseline that
benchmarks/bench_ravlt.py times it against.

It follows the official code's layout: NCHW everywhere, 1x1 convs, LayerNorm through permute + contiguous,
q/k/v split by reshapes of the conv output, RoPE tables rebuilt in every forward, and the attention maths
written out with explicit matmuls. It loads the same state dict as mixa's model (``strict=True``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mixa.layers import rope_angles

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
