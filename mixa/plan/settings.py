"""The plan's defaults (no torch: the command line reads them for --help)."""
DEFAULT_KINDS = ("relu", "stella", "rala")
DEFAULT_KEEP = (0, 2, 4, 6, 8)
SELECTIONS = ("sensitivity", "first", "last", "uniform")
# Steps of the plan's transfer probe: what mixa distill's transfer stage runs by default on the extremes
# proxy (its "auto" rule, 4 x training images / batch clamped to at least 100 steps: 100 for 800 images at
# batch 64; a transfer planned for 50 steps ended relu k = 0 at 92.5%, 100 steps at 97.4%), so that the plan
# ranks what the pipeline's first stage recovers. The printed distill command passes the same number.
DEFAULT_TRANSFER_STEPS = 100
