"""Layer-wise attention transfer before KD (``mixa transfer``, ``mixa distill --transfer-steps``,
``mixa convert --select transfer``).

    result = mixa.transfer.transfer("deit_s_rala", "/data/imagenet", "runs/deit_s_rala_transfer", steps=2000)

Modules: layerwise (the teacher-forced objective, one optimiser step, per-layer errors), settings (no
torch), run (the run: data, checkpoints, resume, torchrun). The names below load their module on first
use: mixa.conversion.select imports layerwise without the run's dependencies, and ``--help`` reads the
settings without torch.
"""
import importlib

_API = {
    "DEFAULTS": "settings", "transfer_settings": "settings",
    "relative_error": "layerwise", "capture": "layerwise", "layer_errors": "layerwise",
    "TransferStep": "layerwise",
    "transfer": "run", "replaced_layers": "run",
}
__all__ = list(_API)


def __getattr__(name):
    if name in _API:
        return getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
