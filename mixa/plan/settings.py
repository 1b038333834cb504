"""The plan's defaults (no torch: the command line reads them for --help)."""
DEFAULT_KINDS = ("relu", "stella", "rala")
DEFAULT_KEEP = (0, 2, 4, 6, 8)
SELECTIONS = ("sensitivity", "first", "last", "uniform")
# Steps of the plan's transfer probe: what mixa distill's transfer stage runs by default on the extremes
# proxy (its "auto" rule, 4 x training images / batch, for 800 images at batch 64: 50 steps; issue 17's probe
# took relu k = 0 from 42.9% to 97.4% in 100), so that the plan ranks what the pipeline's first stage
# recovers. The printed distill command passes the same number explicitly.
DEFAULT_TRANSFER_STEPS = 50
