"""mixa analyze: analyses of a model's attention layers on real images."""
from __future__ import annotations

import argparse

from ._common import (add_data_loading_arguments, add_model_argument, add_report_arguments, model_source_kwargs,
                      positive_int)

HELP = "analyse attention layers on real images (rank: numerical rank of KV buffers and outputs per head)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    r = sub.add_parser("rank", help="numerical rank per layer and head of the KV buffer (d x d) and of the "
                                    "attention output (N x d), as in the RALA paper's Figs. 2/4/5/8",
                       description="Numerical rank per layer and head of the KV buffer (d x d) and of the "
                                   "attention output (N x d) on real images. Rank = singular values above "
                                   "RTOL times the largest.")
    add_model_argument(r, help="a saved mixa model directory, a timm name / alias (deit_s, swin_t, ...) "
                               "or ravlt_t/s/b/l")
    r.add_argument("--data-dir", required=True, metavar="DIR",
                   help="ImageFolder directory (one sub-folder per class; DIR/val is used when present)")
    r.add_argument("--num-images", type=positive_int, default=64, metavar="N",
                   help="images to analyse, drawn in a fixed shuffled order (default 64)")
    add_data_loading_arguments(r, "images per batch (default 16)", batch_size_default=16)
    r.add_argument("--rtol", type=float, default=None,
                   help="relative tolerance: a singular value counts if > RTOL x the largest (default 1e-2)")
    add_report_arguments(r, plot=True)


def run(args: argparse.Namespace) -> int:
    from mixa.errors import UsageError

    if args.rtol is not None and not 0 < args.rtol < 1:
        raise UsageError("--rtol must be between 0 and 1")

    from mixa.analysis import DEFAULT_RTOL, plot_ranks, rank_analysis, rank_table
    from mixa.data import eval_loader
    from mixa.io import write_json
    from mixa.saved import load_target

    model = load_target(args.model, **model_source_kwargs(args))
    # shuffled (fixed seed): the first N images of an ImageFolder would all be one class
    loader = eval_loader(args.data_dir, model, batch_size=min(args.batch_size, args.num_images),
                         workers=args.workers, shuffle=True, seed=0)
    result = rank_analysis(model, loader, rtol=args.rtol or DEFAULT_RTOL, max_images=args.num_images,
                           progress=args.progress)
    result = {"model": args.model, "data": str(args.data_dir), **result}
    print(rank_table(result))
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    if args.plot:
        plot_ranks(result, args.plot)
        print(f"wrote {args.plot}")
    return 0

