"""Test support for tests/test_distill.py until the lead's mixa.convert lands.

mixa.io.save/load need ``mixa.convert.model_config`` / ``build_from_config``. While that module does not
exist, ``install()`` registers a minimal stand-in for *plain timm models only* (every layer softmax),
recording the timm name and kwargs a fixture attaches as ``model.mixa_base``. With the real module
present, install() does nothing.
"""
import importlib.util
import sys
import types


def install() -> bool:
    if importlib.util.find_spec("mixa.convert") is not None:
        return False
    import timm

    def model_config(model):
        base = getattr(model, "mixa_base")
        return {"format": "mixa-model/1", "base": base, "layers": [], "keep": None, "attn": "softmax"}

    def build_from_config(cfg):
        base = cfg["base"]
        model = timm.create_model(base["model"], pretrained=False, **base["kwargs"])
        model.mixa_base = base
        return model

    module = types.ModuleType("mixa.convert")
    module.model_config = model_config
    module.build_from_config = build_from_config
    sys.modules["mixa.convert"] = module
    import mixa

    mixa.convert = module
    return True
