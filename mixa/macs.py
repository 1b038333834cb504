"""Parameter and multiply-accumulate counts, attention included for every kind.

Convention (fvcore's, which papers and timm call "FLOPs"): one multiply-add = 1 MAC; Linear and
convolution layers counted from their shapes; attention cores counted from their formulas, because
torch's FlopCounterMode sees nothing on the CPU path of scaled_dot_product_attention and thop misses
matmuls altogether. Normalisation, activations, softmax and additions are not counted.

A module can describe its own core by defining ``attention_macs(self, x) -> int`` (x = its input); that
is how mixa's attention modules and models plug in.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
from timm.models.swin_transformer import WindowAttention
from timm.models.vision_transformer import Attention
from torch import nn


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _softmax_core_macs(tokens_by_batch: int, n: int, heads: int, head_dim: int) -> int:
    return tokens_by_batch * 2 * heads * n * n * head_dim


def _attention_macs(module: nn.Module, x: torch.Tensor):
    """MACs of the attention core of a known attention module, or None for other modules."""
    if hasattr(module, "attention_macs"):
        return int(module.attention_macs(x))

    if isinstance(module, (Attention, WindowAttention)):
        b, n, _ = x.shape
        head_dim = getattr(module, "head_dim", None) or module.qkv.out_features // (3 * module.num_heads)
        return _softmax_core_macs(b, n, module.num_heads, head_dim)
    return None


def count_macs(model: nn.Module, input_size: Sequence[int] = (3, 224, 224), batch: int = 1) -> int:
    """Total MACs of one forward pass of ``model`` on a (batch, *input_size) input."""
    total = [0]

    def linear_hook(module, inputs, output):
        total[0] += inputs[0].numel() // module.in_features * module.in_features * module.out_features

    def conv_hook(module, inputs, output):
        per_output = module.in_channels // module.groups
        for k in module.kernel_size:
            per_output *= k
        total[0] += output.numel() * per_output

    def attention_hook(module, inputs, output):
        macs = _attention_macs(module, inputs[0])
        if macs is not None:
            total[0] += macs

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
        elif isinstance(module, nn.modules.conv._ConvNd):
            handles.append(module.register_forward_hook(conv_hook))
        else:
            handles.append(module.register_forward_hook(attention_hook))
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(batch, *input_size, device=device, dtype=dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total[0]


def params_and_macs(model: nn.Module, input_size: Sequence[int] = (3, 224, 224)) -> Tuple[int, int]:
    return count_params(model), count_macs(model, input_size)
