"""Image data: image folders that pass over unreadable files, the model's eval transforms and loaders."""
from .folder import (UNREADABLE, SafeImageFolder, available_cores, collate_readable, data_config, eval_loader,
                     eval_transform, resolve_split, resolve_workers)

__all__ = ["UNREADABLE", "SafeImageFolder", "available_cores", "collate_readable", "data_config", "eval_loader", "eval_transform",
           "resolve_split", "resolve_workers"]
