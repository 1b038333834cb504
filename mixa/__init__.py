"""mixa: make pretrained vision transformers fast on edge hardware.

    model = mixa.convert("deit_s", keep=6, attn="rala")   # softmax kept in 6 layers, RALA elsewhere
    mixa.save(model, "deit_s_rala")                        # model.safetensors + config.json
    model = mixa.load("deit_s_rala")                       # rebuilt exactly, no network

``import mixa`` itself loads nothing heavy: torch and timm load with the first use of the API below, so
that ``mixa --help`` answers at once and ``mixa profile model.onnx`` runs on an edge board with only numpy
and onnxruntime installed. It does register mixa's own timm models (``ravlt_t/s/b/l``) with timm, as the
RALA repository's package does: at once when timm is already imported, else right after timm's own
import (``import mixa, timm; timm.create_model("ravlt_s")`` works), without importing timm itself.
"""
import importlib
import importlib.abc
import importlib.util
import sys
import warnings

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
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'mixa' has no attribute {name!r}")


def _register_with_timm() -> None:
    """Import mixa.models, whose ravlt module registers ravlt_* with timm's registry."""
    try:
        importlib.import_module("mixa.models")
    except Exception as err:  # timm must import even if mixa's side cannot (a broken torch, a partial install)
        warnings.warn(f"mixa could not register its timm models: {type(err).__name__}: {err}", stacklevel=2)


class _AfterTimmImport(importlib.abc.MetaPathFinder):
    """Finds ``timm`` as the other finders do and registers mixa's models when its import completes."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)  # one shot; the lookup below must not find this finder again
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_timm = spec.loader.exec_module

        def exec_module(module):
            exec_timm(module)
            _register_with_timm()

        spec.loader.exec_module = exec_module
        return spec


if "timm" in sys.modules:
    _register_with_timm()
elif not any(isinstance(finder, _AfterTimmImport) for finder in sys.meta_path):
    sys.meta_path.insert(0, _AfterTimmImport())
