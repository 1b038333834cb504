"""A Linear layer that stores its weight as a 1x1 convolution's, for channels-last models that must stay
weight-compatible with NCHW originals."""
from __future__ import annotations

from torch import nn


class PointwiseLinear(nn.Linear):
    """``nn.Linear`` over the last dim whose state dict holds the weight as ``(out, in, 1, 1)``.

    On channels-last activations a Linear is the same map as a 1x1 conv on NCHW ones, without the layout
    round trip. The saved weight is a view of the parameter, so anything that writes through
    ``state_dict()`` values (model EMA) still updates the layer. Loading accepts either shape. ``state_dict(keep_vars=True)`` returns the
    Parameter itself (Linear-shaped), as tracers and sharding wrappers expect.
    """

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        key = prefix + "weight"
        # keep_vars=True callers (tracers, FSDP) need the Parameter object itself
        if key in destination and not keep_vars:
            destination[key] = destination[key].view(*self.weight.shape, 1, 1)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        key = prefix + "weight"
        weight = state_dict.get(key)
        if weight is not None and weight.dim() == 4 and weight.shape[2:] == (1, 1):
            state_dict[key] = weight.flatten(1)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
