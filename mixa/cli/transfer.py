"""mixa transfer: teach a converted model's linear attention layers to imitate the softmax layers they
replaced (teacher-forced, layer by layer, no labels) -- a cheap first stage before KD."""
from mixa.cli._common import add_data_loading_arguments, add_model_source_arguments, model_source_kwargs

HELP = "train the replaced attention layers to reproduce the original's softmax layers (before distill)"

OVERRIDES = ("steps", "batch_size", "workers", "lr", "weight_decay", "clip_grad", "seed", "amp",
             "save_every_steps", "eval_images", "inputs", "train", "target")


def add_arguments(p) -> None:
    from mixa.distill.choices import AMP_MODES
    from mixa.transfer.settings import DEFAULTS, INPUTS, TARGETS, TRAIN_PARTS

    p.add_argument("-m", "--model", required=True, metavar="NAME|DIR",
                   help="the student: a saved mixa model with replaced attention layers (from mixa convert)")
    add_model_source_arguments(p)
    p.add_argument("--data-dir", required=True, metavar="DIR",
                   help="images, no labels needed: DIR/train (DIR/val then gives the held-out error), or DIR "
                        "itself (class folders or a flat folder of images)")
    p.add_argument("--output", required=True, metavar="RUN",
                   help="run directory; when complete it is a saved mixa model (mixa distill --model RUN)")
    p.add_argument("--teacher", metavar="NAME|DIR",
                   help="reference model (default: the original recorded in the student's config)")
    p.add_argument("--teacher-checkpoint", metavar="PATH", help="local weights for the reference")
    p.add_argument("--resume", action="store_true", help="continue the run in --output exactly where it stopped")
    p.add_argument("--stop-after", type=int, metavar="N", help="stop after N steps of this call (the schedule "
                                                               "still plans --steps)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--json", metavar="FILE", help="also write the result to FILE as JSON")
    g = p.add_argument_group("settings")
    g.add_argument("--steps", type=int, metavar="N", help=f"optimiser steps (default {DEFAULTS['steps']})")
    add_data_loading_arguments(g, f"global batch (default {DEFAULTS['batch_size']})")
    g.add_argument("--lr", type=float, help=f"peak learning rate (default {DEFAULTS['lr']}; some kinds have "
                                            f"their own, see docs/transfer.md)")
    g.add_argument("--inputs", choices=INPUTS,
                   help="each layer's input: the original's activation there (teacher: every layer learns "
                        "alone) or the student's own, as the layers before it make it (student)")
    g.add_argument("--train", metavar="all|PART,...", type=_train_parts,
                   help=f"which parts of a replaced layer learn: all, or a comma list of {', '.join(TRAIN_PARTS)}")
    g.add_argument("--target", choices=TARGETS,
                   help=f"what learns and is matched: each replaced attention layer (attention), or the block "
                        f"holding it, its MLP included, matched on the block's update (block; default "
                        f"{DEFAULTS['target']})")
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--clip-grad", type=float, help="max gradient norm (0: off)")
    g.add_argument("--seed", type=int)
    g.add_argument("--amp", choices=AMP_MODES, help="autocast precision (auto: bf16/fp16 on CUDA, off on CPU)")
    g.add_argument("--save-every-steps", type=int, metavar="N", help="checkpoint RUN/last every N steps")
    g.add_argument("--eval-images", type=int, metavar="N",
                   help=f"held-out images (DIR/val) for the per-layer error (default {DEFAULTS['eval_images']})")


def run(args) -> int:
    import os

    from mixa.io import write_json
    from mixa.report import table
    from mixa.transfer import transfer

    result = transfer(args.model, args.data_dir, args.output, teacher=args.teacher,
                      teacher_checkpoint=args.teacher_checkpoint, resume=args.resume, stop_after=args.stop_after,
                      device=args.device, progress=args.progress, source=model_source_kwargs(args),
                      **{k: getattr(args, k) for k in OVERRIDES})
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    first = result["first"]
    rows = [(path, _fmt(first.get(f"holdout_error/{path}")), _fmt(result.get(f"holdout_error/{path}")))
            for path in result["layers"]]
    print(f"run: {result['run']} ({'complete: a saved model' if result['complete'] else 'stopped; --resume continues'})")
    print(f"steps {result['step']}, images {result['images']}, train error (last steps) {_fmt(result['train_error'])}")
    if result["holdout_error"] is not None:
        print(table(rows, ["layer", "held-out error before", "after"]))
        print(f"mean held-out relative error: {_fmt(first['holdout_error'])} -> {_fmt(result['holdout_error'])}")
    if args.json:
        write_json(args.json, result)
    return 0


def _train_parts(text: str) -> str:
    """argparse type of --train: a usage error (exit 2) for an unknown part."""
    import argparse

    from mixa.errors import UsageError
    from mixa.transfer.settings import train_parts

    try:
        train_parts(text)
    except UsageError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"
