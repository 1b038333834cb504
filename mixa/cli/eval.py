"""mixa eval: accuracy of a saved model and its agreement with a teacher."""
HELP = "top-1/top-5/loss of a saved model on DIR/val, and agreement with a teacher (match rate, KL)"


def add_arguments(p) -> None:
    p.add_argument("model", metavar="DIR", help="saved mixa model (e.g. RUN/best)")
    p.add_argument("--data", required=True, metavar="DIR", help="ImageNet root (uses DIR/val) or a folder of class folders")
    p.add_argument("--teacher", metavar="auto|NAME|DIR",
                   help="compare with a teacher: 'auto' = the original recorded in the model's config")
    p.add_argument("--teacher-checkpoint", metavar="PATH", help="local weights for the teacher")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--max-batches", type=int, help="evaluate only the first N batches")
    p.add_argument("--amp", choices=["auto", "bf16", "fp16", "none"], default="none")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    from mixa.distill import evaluate
    from mixa.errors import UsageError
    from mixa.io import write_json

    if args.batch_size < 1 or args.workers < 0 or (args.max_batches is not None and args.max_batches < 1):
        raise UsageError("--batch-size and --max-batches must be >= 1, --workers >= 0")
    result = evaluate(args.model, args.data, teacher=args.teacher, teacher_checkpoint=args.teacher_checkpoint,
                      batch_size=args.batch_size, workers=args.workers, max_batches=args.max_batches,
                      amp=args.amp, device=args.device, progress=not args.no_progress)
    labels = [("images", "images"), ("top1", "top-1 (%)"), ("top5", "top-5 (%)"), ("loss", "loss (CE)"),
              ("agreement_top1", "agreement top-1 (%)"), ("mean_kl", "mean KL(teacher||model)"),
              ("skipped", "unreadable skipped")]
    print(f"{'metric':<26} value")
    for key, label in labels:
        if key in result:
            value = result[key]
            print(f"{label:<26} {value:.4f}" if isinstance(value, float) else f"{label:<26} {value}")
    if args.json:
        write_json(args.json, {"model": args.model, "data": args.data, "teacher": args.teacher, **result})
    return 0
