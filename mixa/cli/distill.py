"""mixa distill: knowledge-distillation fine-tuning of a converted model (docs/distill.md)."""
import argparse

from mixa.cli._common import (add_data_loading_arguments, add_model_source_arguments, auto_or_count,
                              model_source_kwargs, positive_int)

HELP = "fine-tune a converted model with knowledge distillation from its original (CPU, GPU, torchrun)"


def _bool(value: str) -> bool:
    return value.lower() in ("1", "true", "yes", "on")


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _positive(text: str) -> float:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _auto_or_positive(text: str):
    if text == "auto":
        return text
    try:
        return _positive(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected auto or a number > 0, got {text!r}") from None


def add_arguments(p) -> None:
    from mixa.distill.choices import AMP_MODES, KD_KINDS

    p.add_argument("-m", "--model", required=True, metavar="NAME|DIR",
                   help="the student: a saved mixa model (e.g. from mixa convert) or a timm name/alias")
    add_model_source_arguments(p)
    p.add_argument("--data-dir", required=True, metavar="DIR",
                   help="ImageNet layout: DIR/train and DIR/val, a folder per class")
    p.add_argument("--output", required=True, metavar="RUN", help="run directory (last/, best/, metrics.jsonl/csv)")
    p.add_argument("--teacher", metavar="NAME|DIR|none",
                   help="teacher: timm name/alias or saved mixa model (default: the original recorded in the "
                        "student's config); none: no teacher, labels only")
    p.add_argument("--teacher-checkpoint", metavar="PATH", help="local weights for the teacher (.pth/.safetensors)")
    p.add_argument("--recipe", metavar="NAME|YAML", help="a packaged recipe (deit_s, swin_t, tiny, ...) or a YAML "
                                                         "path; flags override it")
    p.add_argument("--resume", action="store_true", help="continue the run in --output exactly where it stopped")
    p.add_argument("--stop-after", type=int, metavar="N", help="stop after N epochs of this call (the schedule "
                                                               "still plans --epochs)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--json", metavar="FILE", help="also write the final metrics to FILE as JSON")
    g = p.add_argument_group("recipe overrides")
    add_data_loading_arguments(g, "global batch per optimiser step (all processes x accumulation)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--warmup-epochs", type=int)
    g.add_argument("--accum-steps", type=int, help="gradient accumulation steps")
    g.add_argument("--lr", type=float, help="learning rate for a global batch of lr_base_batch (linear rule)")
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--clip-grad", type=float, help="max gradient norm (0: off)")
    g.add_argument("--seed", type=int)
    g.add_argument("--amp", choices=AMP_MODES, help="autocast precision (auto: bf16/fp16 on CUDA, off on CPU)")
    g.add_argument("--kd", choices=KD_KINDS, help="distillation loss")
    g.add_argument("--kd-weight", type=float, help="loss = (1 - w) CE + w KD")
    g.add_argument("--kd-temperature", type=float)
    g.add_argument("--smoothing", type=float, help="label smoothing")
    g.add_argument("--mixup", type=float, help="Mixup alpha (0: off)")
    g.add_argument("--cutmix", type=float, help="CutMix alpha (0: off)")
    g.add_argument("--save-every-steps", type=int, metavar="N",
                   help="also checkpoint RUN/last every N optimiser steps inside an epoch (0: epoch ends only)")
    g.add_argument("--ema", type=_bool, metavar="BOOL", help="keep an EMA of the weights (RUN/ema)")
    g.add_argument("--hidden-weight", type=_non_negative, metavar="W",
                   help="also match the teacher's block outputs (relative error, weight W; 0: off)")
    g.add_argument("--transfer-steps", type=auto_or_count, metavar="auto|N",
                   help="first N steps of layer-wise attention transfer (mixa transfer) into RUN/transfer; "
                        "auto (default), by the converted student's disagreement with the teacher on 256 "
                        "training images: under 5%% none (its KD is the stage after transfer), under 15%% 4 steps, "
                        "under 50%% the long transfer if it processes no more images than the run's KD, else the "
                        "between transfer (one pass over the training images at batch 8) if that does, else none "
                        "(plain KD); 50%% or more the long transfer: 4 passes over the training images (100 to "
                        "2000 steps); none for a model without replaced attention; 0: off")
    g.add_argument("--transfer-lr", type=_positive, help="peak lr of that stage (default: mixa transfer's)")
    g.add_argument("--transfer-batch-size", type=positive_int, metavar="N",
                   help="global batch of that stage (default: --batch-size, or 8 for the between transfer auto "
                        "may choose); a smaller one takes more steps from the same images (docs/transfer.md)")
    g.add_argument("--after-transfer-lr-scale", type=_auto_or_positive, metavar="auto|F",
                   help="after a transfer stage (or none, auto's near student), KD runs at lr x F; auto "
                        "(default): the recipe's lr while the student disagrees with the teacher on >= 15%% of 256 "
                        "training images, else lr x 0.2")
    g.add_argument("--after-transfer-hidden-weight", type=_non_negative, metavar="W",
                   help="hidden-state weight of the KD after a transfer stage (default 0: logits only)")


OVERRIDES = ("epochs", "warmup_epochs", "batch_size", "accum_steps", "lr", "weight_decay", "clip_grad", "seed",
             "workers", "amp", "kd", "kd_weight", "kd_temperature", "smoothing", "mixup", "cutmix", "ema",
             "save_every_steps", "hidden_weight", "transfer_steps", "transfer_lr", "transfer_batch_size",
             "after_transfer_lr_scale", "after_transfer_hidden_weight")


def run(args) -> int:
    import os

    from mixa.distill import distill
    from mixa.io import write_json
    from mixa.report import table

    overrides = {k: getattr(args, k) for k in OVERRIDES}
    result = distill(args.model, args.data_dir, args.output, teacher=args.teacher, recipe=args.recipe,
                     teacher_checkpoint=args.teacher_checkpoint, resume=args.resume, stop_after=args.stop_after,
                     device=args.device, progress=args.progress, source=model_source_kwargs(args),
                     **overrides)
    if int(os.environ.get("RANK", "0")) == 0:
        rows = [("epochs done", result["epochs_done"]), ("train loss", result.get("train_loss")),
                ("val top-1 (%)", result.get("val_top1")), ("val top-5 (%)", result.get("val_top5")),
                ("agreement top-1 (%)", result.get("agreement_top1")), ("mean KL", result.get("mean_kl")),
                ("best top-1 (%)", result["best_top1"]),
                ("best from", None if result.get("best_epoch") is None else
                 "the transfer stage" if result["best_epoch"] == 0 else f"epoch {result['best_epoch']}"),
                ("images/s", result.get("images_per_s"))]
        print(f"run: {result['run']}")
        print(table([(name, f"{value:.4f}" if isinstance(value, float) else value)
                     for name, value in rows if value is not None], ["metric", "value"]))
        if args.json:
            write_json(args.json, result)
    return 0
