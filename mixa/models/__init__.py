"""Model building (timm names, aliases, checkpoints) and mixa's own timm models."""
import importlib

from .factory import (ALIASES, create_model, load_checkpoint_into, load_state_dict_file, load_target,
                      resolve_name)

try:  # ravlt_* register themselves with timm on import (added by the RAVLT work)
    importlib.import_module(".ravlt", __name__)
except ModuleNotFoundError as err:
    if err.name != f"{__name__}.ravlt":
        raise

__all__ = ["ALIASES", "create_model", "load_checkpoint_into", "load_state_dict_file", "load_target",
           "resolve_name"]
