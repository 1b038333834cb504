"""mixa distill: knowledge-distillation fine-tuning of a converted model (see README.md, "Distill and evaluate")."""
HELP = "fine-tune a converted model with knowledge distillation from its original (CPU, GPU, torchrun)"


def _optional_bool(value: str) -> bool:
    return value.lower() in ("1", "true", "yes", "on")


def add_arguments(p) -> None:
    p.add_argument("--student", required=True, metavar="DIR", help="saved mixa model to fine-tune")
    p.add_argument("--data", required=True, metavar="DIR", help="ImageNet layout: DIR/train and DIR/val, a folder per class")
    p.add_argument("--output", required=True, metavar="RUN", help="run directory (last/, best/, metrics.jsonl/csv)")
    p.add_argument("--teacher", metavar="NAME|DIR",
                   help="teacher: timm name/alias or saved mixa model (default: the original recorded in the student's config)")
    p.add_argument("--teacher-checkpoint", metavar="PATH", help="local weights for the teacher (.pth/.safetensors)")
    p.add_argument("--recipe", metavar="NAME|YAML", help="recipes/NAME.yaml or a YAML path (flags override it)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output exactly where it stopped")
    p.add_argument("--stop-after", type=int, metavar="N", help="stop after N epochs of this call (the schedule still plans --epochs)")
    g = p.add_argument_group("recipe overrides")
    g.add_argument("--epochs", type=int)
    g.add_argument("--warmup-epochs", type=int)
    g.add_argument("--batch-size", type=int, help="global batch per optimiser step (all processes x accumulation)")
    g.add_argument("--accum-steps", type=int, help="gradient accumulation steps")
    g.add_argument("--lr", type=float, help="learning rate for a global batch of lr_base_batch (linear rule)")
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--clip-grad", type=float, help="max gradient norm (0: off)")
    g.add_argument("--seed", type=int)
    g.add_argument("--workers", type=int, help="data-loading worker processes per process")
    g.add_argument("--amp", choices=["auto", "bf16", "fp16", "none"], help="autocast precision (auto: bf16/fp16 on CUDA, off on CPU)")
    g.add_argument("--kd", choices=["soft", "hard", "none"], help="distillation loss")
    g.add_argument("--kd-weight", type=float, help="loss = (1 - w) CE + w KD")
    g.add_argument("--kd-temperature", type=float)
    g.add_argument("--smoothing", type=float, help="label smoothing")
    g.add_argument("--mixup", type=float, help="Mixup alpha (0: off)")
    g.add_argument("--cutmix", type=float, help="CutMix alpha (0: off)")
    g.add_argument("--save-every-steps", type=int, metavar="N",
                   help="also checkpoint RUN/last every N optimiser steps inside an epoch (0: epoch ends only)")
    g.add_argument("--ema", type=_optional_bool, metavar="BOOL", help="keep an EMA of the weights (RUN/ema)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


OVERRIDES = ("epochs", "warmup_epochs", "batch_size", "accum_steps", "lr", "weight_decay", "clip_grad", "seed",
             "workers", "amp", "kd", "kd_weight", "kd_temperature", "smoothing", "mixup", "cutmix", "ema", "save_every_steps")


def run(args) -> int:
    import os

    from mixa.distill import distill

    overrides = {k: getattr(args, k) for k in OVERRIDES}
    result = distill(args.student, args.data, args.output, teacher=args.teacher, recipe=args.recipe,
                     teacher_checkpoint=args.teacher_checkpoint, resume=args.resume, stop_after=args.stop_after,
                     device=args.device, progress=not args.no_progress, **overrides)
    if int(os.environ.get("RANK", "0")) == 0:
        rows = [("epochs done", result["epochs_done"]), ("train loss", result.get("train_loss")),
                ("val top-1 (%)", result.get("val_top1")), ("val top-5 (%)", result.get("val_top5")),
                ("agreement top-1 (%)", result.get("agreement_top1")), ("mean KL", result.get("mean_kl")),
                ("best top-1 (%)", result["best_top1"]), ("images/s", result.get("images_per_s"))]
        print(f"run: {result['run']}")
        for name, value in rows:
            if value is not None:
                print(f"  {name:<20} {value:.4f}" if isinstance(value, float) else f"  {name:<20} {value}")
    return 0
