"""mixa: make pretrained vision transformers fast on edge hardware.

    model = mixa.convert("deit_s", keep=6, attn="rala")   # softmax kept in 6 layers, RALA elsewhere
    mixa.save(model, "deit_s_rala")                        # model.safetensors + config.json
    model = mixa.load("deit_s_rala")                       # rebuilt exactly, no network

``import mixa`` itself loads nothing heavy: torch and timm load with the first use of the API below, so
that ``mixa --help`` answers at once and ``mixa profile model.onnx`` runs on an edge board with only numpy
and onnxruntime installed. ``import mixa.models`` registers mixa's own timm models (``ravlt_t/s/b/l``)
with timm; every API function that builds models does it too.
"""
__version__ = "0.1.0"

_API = {
    "convert": "mixa.conversion",
    "attention_kinds": "mixa.conversion",
    "save": "mixa.saved",
    "load": "mixa.saved",
    "list_attention_kinds": "mixa.attention",
}
__all__ = ["__version__", *_API]


def __getattr__(name):
    if name in _API:
        import importlib  # module-level __getattr__: deferring torch is the point (see the docstring)

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'mixa' has no attribute {name!r}")
