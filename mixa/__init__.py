"""mixa: make pretrained vision transformers fast on edge hardware.

    model = mixa.convert("deit_s", keep=6, attn="rala")   # softmax kept in 6 layers, RALA elsewhere
    mixa.save(model, "deit_s_rala")                        # model.safetensors + config.json
    model = mixa.load("deit_s_rala")                       # rebuilt exactly, no network

``import mixa`` also registers mixa's own timm models (``ravlt_t/s/b/l``).

One exception: ``python -m mixa ...`` loads nothing heavy here, so that ``python -m mixa profile
model.onnx`` runs on an edge board with only numpy and onnxruntime installed; each CLI command imports
what it needs itself.
"""
import sys

__version__ = "0.1.0"

_API = {
    "convert": "mixa.conversion",
    "attention_kinds": "mixa.conversion",
    "save": "mixa.io",
    "load": "mixa.io",
    "list_attention_kinds": "mixa.attention",
}
__all__ = ["__version__", *_API]


def __getattr__(name):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'mixa' has no attribute {name!r}")


def _launched_as_module() -> bool:
    # While `python -m mixa` imports this package, CPython sets sys.argv[0] to "-m".
    return bool(sys.argv) and sys.argv[0] == "-m"


if not _launched_as_module():
    try:
        import torch  # noqa: F401
    except ImportError:  # an edge board with onnxruntime only: the torch-free CLI paths still work
        pass
    else:
        from . import models  # noqa: F401  (registers ravlt_* with timm)
