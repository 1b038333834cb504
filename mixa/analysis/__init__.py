"""Analyses of attention layers on real data."""
from .rank import DEFAULT_RTOL, find_attention_layers, kv_buffer, numerical_rank, plot_ranks, rank_analysis, rank_table

__all__ = ["DEFAULT_RTOL", "find_attention_layers", "kv_buffer", "numerical_rank", "plot_ranks", "rank_analysis",
           "rank_table"]
