"""mixa quickstart: plan -> convert -> distill (transfer first) -> eval -> export -> profile on the embedded
teacher and data."""
from __future__ import annotations

import argparse

from mixa.cli.plan import positive_float
from mixa.quickstart import DEFAULT_SIZES, MIN_SPEEDUP, RECIPE, TASK, TRANSFER_STEPS  # light: no torch at import

HELP = "watch mixa do its whole job offline in minutes: the embedded ViT teacher on synthetic data"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", default="mixa-quickstart", metavar="DIR",
                   help="where everything goes, incl. DIR/summary.json (default mixa-quickstart); "
                        "rerunning with the same DIR resumes after the last finished stage")
    p.add_argument("--attn", default="auto",
                   help="auto (default): mixa plan picks kind, k and layers under --min-speedup; or a linear kind "
                        "(relu, stella, rala, ...) converted with --keep / --select")
    p.add_argument("--min-speedup", type=positive_float, default=MIN_SPEEDUP, metavar="S",
                   help=f"--attn auto: the most faithful student at least S times as fast as the teacher "
                        f"(default {MIN_SPEEDUP})")
    p.add_argument("--keep", type=int, help="with a kind named: layers that keep softmax, of 12 (default 6)")
    p.add_argument("--select", default="sensitivity", choices=["sensitivity", "first", "last", "uniform"],
                   help="with a kind named: how the kept layers are chosen (default sensitivity, on synthetic "
                        "calibration images)")
    p.add_argument("--epochs", type=int, help=f"distillation epochs (default {RECIPE['epochs']})")
    p.add_argument("--transfer-steps", type=int, metavar="N",
                   help=f"layer-wise transfer steps before KD (default {TRANSFER_STEPS}); 0: KD only")
    p.add_argument("--train-images", type=int, default=DEFAULT_SIZES["train"], metavar="N",
                   help=f"synthetic training images of the {TASK!r} task (default {DEFAULT_SIZES['train']})")
    p.add_argument("--val-images", type=int, default=DEFAULT_SIZES["val"], metavar="N",
                   help=f"synthetic validation images (default {DEFAULT_SIZES['val']})")
    p.add_argument("--calib-images", type=int, default=256, metavar="N",
                   help="calibration images for sensitivity selection (default 256)")
    p.add_argument("--threads", type=int, metavar="N", help="torch and ONNX Runtime threads (default: torch's default)")
    p.add_argument("--seed", type=int, default=1,
                   help="data and training seed (default 1; the teacher was trained on seed 0)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from mixa.errors import UsageError
    from mixa.quickstart import quickstart

    for name in ("train_images", "val_images"):
        if getattr(args, name) < 100:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 100 (every class needs images)")
    if args.keep is not None and not 0 <= args.keep <= 12:
        raise UsageError("--keep must be in [0, 12]")
    if args.transfer_steps is not None and args.transfer_steps < 0:
        raise UsageError("--transfer-steps must be >= 0")
    if args.epochs is not None and args.epochs < 1:
        raise UsageError("--epochs must be >= 1")
    if args.calib_images < 1:
        raise UsageError("--calib-images must be >= 1")
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads must be >= 1")
    quickstart(args.output, attn=args.attn, keep=args.keep, select=args.select, min_speedup=args.min_speedup,
               transfer_steps=args.transfer_steps,
               sizes={"train": args.train_images, "val": args.val_images}, calib_images=args.calib_images,
               seed=args.seed,
               threads=args.threads, progress=args.progress, epochs=args.epochs)
    return 0
