"""mixa eval: accuracy of a model and its agreement with its original (or another teacher)."""
from mixa.cli._common import add_data_loading_arguments, add_model_source_arguments, model_source_kwargs

HELP = "top-1/top-5/loss of a model on labelled images, and its agreement with its original (match rate, KL)"


def add_arguments(p) -> None:
    from mixa.distill.choices import AMP_MODES

    p.add_argument("-m", "--model", required=True, metavar="NAME|DIR",
                   help="saved mixa model (e.g. RUN/best) or a timm name/alias (with the weight-source flags)")
    add_model_source_arguments(p)
    p.add_argument("--data-dir", required=True, metavar="DIR",
                   help="ImageNet layout (uses DIR/val) or a folder of class folders")
    p.add_argument("--teacher", default="auto", metavar="NAME|DIR|none",
                   help="reference for the agreement (default: the original recorded in the model's config; "
                        "none: no agreement)")
    p.add_argument("--teacher-checkpoint", metavar="PATH", help="local weights for the teacher")
    add_data_loading_arguments(p, "images per batch (default 64)", batch_size_default=64)
    p.add_argument("--num-images", type=int, metavar="N", help="evaluate a fixed random subset of N images")
    p.add_argument("--amp", choices=AMP_MODES, default="none", help="autocast precision (default none)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--json", metavar="FILE", help="also write the results to FILE as JSON")


def run(args) -> int:
    from mixa.distill import evaluate
    from mixa.io import write_json
    from mixa.report import table

    result = evaluate(args.model, args.data_dir, teacher=args.teacher, teacher_checkpoint=args.teacher_checkpoint,
                      batch_size=args.batch_size, workers=args.workers, max_images=args.num_images, amp=args.amp,
                      device=args.device, progress=args.progress, **model_source_kwargs(args))
    labels = [("images", "images"), ("top1", "top-1 (%)"), ("top5", "top-5 (%)"), ("loss", "loss (CE)"),
              ("agreement_top1", "agreement top-1 (%)"), ("mean_kl", "mean KL(teacher||model)"),
              ("skipped", "unreadable skipped")]
    rows = [(label, f"{result[key]:.4f}" if isinstance(result[key], float) else result[key])
            for key, label in labels if key in result]
    print(table(rows, ["metric", "value"]))
    if "agreement_missing" in result:
        print(f"no agreement: {result['agreement_missing']}")
    if args.json:
        write_json(args.json, {"model": args.model, "data_dir": args.data_dir, "teacher": args.teacher, **result})
    return 0
