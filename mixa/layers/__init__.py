"""Generic layers shared by mixa's own models."""
from .pointwise import PointwiseLinear
from .rope import RoPE2d, rope_2d_tables, rope_angles

__all__ = ["PointwiseLinear", "RoPE2d", "rope_2d_tables", "rope_angles"]
