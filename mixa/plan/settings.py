"""The plan's defaults (no torch: the command line reads them for --help)."""
DEFAULT_KINDS = ("relu", "stella", "rala")
DEFAULT_KEEP = (0, 2, 4, 6, 8)
SELECTIONS = ("sensitivity", "first", "last", "uniform")
# Steps of the plan's transfer probe: the steps of mixa distill's transfer stage on the extremes proxy
# (issue 17's probe: relu k = 0 from 42.9% to 97.4% in 100 steps of batch 64), so that the plan ranks what
# the pipeline's first stage recovers.
DEFAULT_TRANSFER_STEPS = 100
