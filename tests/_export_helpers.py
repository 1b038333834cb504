"""Tiny models and data shared by tests/test_export.py and tests/test_profile.py."""
from __future__ import annotations

from pathlib import Path

TINY = {
    "vit": ("deit_tiny_patch16_224", dict(depth=2, embed_dim=64, num_heads=2, img_size=32, patch_size=8)),
    "swin": ("swin_tiny_patch4_window7_224", dict(depths=(2,), num_heads=(2,), embed_dim=32, img_size=56,
                                                  window_size=7)),
}
TINY_SIZE = {"vit": 32, "swin": 56}


def tiny_model(family: str, kind: str = "softmax", keep: int = 1):
    """A tiny random-init timm model of ``family``; for a linear ``kind``, converted keeping ``keep``
    softmax layers (so the graph mixes both kinds)."""
    import torch

    import mixa
    from mixa.models import create_model

    torch.manual_seed(0)
    name, kwargs = TINY[family]
    model = create_model(name, pretrained=False, **kwargs)
    if kind != "softmax":
        model = mixa.convert(model, keep=keep, attn=kind, select="first", progress=False)
        # New parameters start neutral (gate 1, LePE 0, feature map identity); make them matter so the export
        # is really checked.
        with torch.no_grad():
            for name_, p in model.named_parameters():
                if ".gate." in name_ or ".lepe." in name_ or ".feature_map." in name_:
                    p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def linear_nodes(graph) -> list:
    """The linear ops of an FX graph (torch.export's or PT2E's)."""
    return [n for n in graph.nodes if n.op == "call_function" and "linear" in str(n.target)]


def image_folder(root: Path, classes: int = 2, per_class: int = 4, size: int = 40) -> Path:
    """A tiny ImageFolder of random RGB PNGs."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root
