"""Generic layers shared by mixa's own models."""
from .gates import GATES, IdentityGate, LowRankGate, make_gate
from .heads import project_heads, split_qkv
from .norm import averaging_row, layer_norm_by_averaging
from .pointwise import PointwiseLinear
from .rope import RoPE2d, rope_2d_tables, rope_angles

__all__ = ["GATES", "IdentityGate", "LowRankGate", "make_gate", "project_heads", "split_qkv", "averaging_row", "layer_norm_by_averaging", "PointwiseLinear", "RoPE2d", "rope_2d_tables", "rope_angles"]
