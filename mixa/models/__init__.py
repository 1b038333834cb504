"""Model building (timm names, aliases, checkpoints), the attention layers of timm families, and mixa's own
timm models (``ravlt_*``, registered with timm on import)."""
from . import ravlt  # noqa: F401  (registers ravlt_t/s/b/l with timm)
from .factory import ALIASES, create_model, load_checkpoint_into, load_state_dict_file, resolve_name

__all__ = ["ALIASES", "create_model", "load_checkpoint_into", "load_state_dict_file", "resolve_name"]
