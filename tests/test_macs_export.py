"""MACs of known models against published numbers, and of each attention core against its formula."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mixa.attention import get_attention_kind, list_attention_kinds
from mixa.attention.feature_maps import make_feature_map
from mixa.macs import count_macs
from mixa.models import create_model

# Published multiply-accumulates at 224 px (timm / fvcore "FLOPs"; DeiT and Swin papers):
# DeiT-S 4.6 G, Swin-T 4.5 G. DeiT-T is listed as 1.3 G in the DeiT paper, a rounded figure; timm and
# fvcore give 1.26 G, which we compare with (1.254 G is within 0.5% of 1.26, but 3.6% below 1.3).
PUBLISHED = {"deit_small_patch16_224": 4.6e9, "deit_tiny_patch16_224": 1.26e9,
             "swin_tiny_patch4_window7_224": 4.5e9}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_known_models_match_published_macs(name):
    model = create_model(name, pretrained=False)
    assert count_macs(model) == pytest.approx(PUBLISHED[name], rel=0.03)


@pytest.mark.parametrize("kind", list_attention_kinds())
@pytest.mark.parametrize("n,d", [(17, 16), (50, 32)])
def test_core_macs_match_counted_matmuls(kind, n, d):
    """FlopCounterMode counts every matmul of the core (2 FLOPs per MAC); SDPA is forced onto its math
    path, the one FlopCounterMode can see. A kind with a learnable feature map (hedgehog) runs its core on
    the map's features, and its core_macs counts the map too: both run under the counter."""
    spec = get_attention_kind(kind)
    b, h = 2, 3
    q, k, v = (torch.randn(b, h, n, d) for _ in range(3))
    feature_map = make_feature_map(spec.module_defaults.get("feature_map"), h, d)
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        if feature_map is not None:
            q, k = feature_map(q, k)
        spec.core(q, k, v)
    assert counter.get_total_flops() == 2 * b * spec.core_macs(h, n, d)
