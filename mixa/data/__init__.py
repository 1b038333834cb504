"""Image data: ImageFolder loading that survives unreadable files, with the model's eval transforms."""
from .folder import (SafeImageFolder, collate_skipping_unreadable, data_config, eval_loader, eval_transform,
                     resolve_split)

__all__ = ["SafeImageFolder", "collate_skipping_unreadable", "data_config", "eval_loader", "eval_transform",
           "resolve_split"]
