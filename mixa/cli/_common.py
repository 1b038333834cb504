"""The one vocabulary of flags that every command shares (no torch import here: ``--help`` stays instant).

Names follow timm's train.py / validate.py where timm has one: ``--model/-m``, ``--data-dir``,
``--batch-size/-b``, ``--workers/-j``, ``--img-size``. A flag means the same thing in every command.
"""
from __future__ import annotations

import argparse
import ast
from pathlib import Path
from typing import Any, Dict, List

from mixa.errors import UsageError


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def int_list(text: str) -> List[int]:
    """'224,384' -> [224, 384] (each a positive integer)."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated non-negative integers, got {text!r}")
    return values


def add_model_argument(parser: argparse.ArgumentParser, help: str = "") -> None:
    """``--model NAME|DIR`` plus the weight-source flags that apply to a NAME."""
    parser.add_argument("-m", "--model", required=True, metavar="NAME|DIR",
                        help=help or "a saved mixa model directory, or a timm name / alias (deit_s, swin_t, ...) "
                                     "built with the weight-source flags")
    add_model_source_arguments(parser)


def add_model_source_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint / --no-pretrained / --num-classes / --model-arg (for a timm NAME)."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", metavar="PATH",
                        help="local timm-compatible weights (.pth, .pth.tar, .safetensors); read without unpickling")
    source.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                        help="random initialisation instead of timm's pretrained weights")
    parser.add_argument("--num-classes", type=positive_int, metavar="N", help="classifier size (default: the model's)")
    parser.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="extra timm kwarg, repeatable (e.g. depth=4, drop_path_rate=0.1, img_size=384)")


def add_output_argument(parser: argparse.ArgumentParser, help: str, required: bool = True) -> None:
    parser.add_argument("--output", required=required, metavar="PATH", help=help)
    parser.add_argument("--overwrite", action="store_true", help="replace what --output already holds")


def add_report_arguments(parser: argparse.ArgumentParser, csv: bool = False, plot: bool = False) -> None:
    parser.add_argument("--json", metavar="FILE", help="also write the results to FILE as JSON")
    if csv:
        parser.add_argument("--csv", metavar="FILE", help="also write the results to FILE as CSV")
    if plot:
        parser.add_argument("--plot", metavar="FILE.png", help="also write a plot (needs the plot extra)")


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def parse_model_args(items: List[str]) -> Dict[str, Any]:
    """['depth=4', 'num_heads=(1,2,4,8)', 'class_token=False'] -> kwargs (Python literals, else strings)."""
    kwargs = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"--model-arg must look like KEY=VALUE; got {item!r}")
        try:
            kwargs[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            kwargs[key] = text
    return kwargs


def model_source_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    """The weight-source keyword arguments of mixa.saved.load_target / mixa.models.create_model."""
    return {"pretrained": args.pretrained, "checkpoint": args.checkpoint, "num_classes": args.num_classes,
            **parse_model_args(args.model_arg)}


def check_output_dir(path: str, overwrite: bool) -> None:
    """Refuse to write a model into a directory that already holds something (unless --overwrite)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output {path} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"--output {path} is not empty; pass --overwrite to replace what it holds")


def auto_or_count(text: str):
    """'auto' or an integer >= 0 (--workers/-j: auto = min(4, available cores); --transfer-steps)."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer >= 0, got {text!r}")
    return value


workers_arg = auto_or_count


def add_data_loading_arguments(parser: argparse.ArgumentParser, batch_size_help: str,
                               batch_size_default=None) -> None:
    """-b/--batch-size, -j/--workers, --no-progress (one spelling for every command that reads images)."""
    parser.add_argument("-b", "--batch-size", type=positive_int, default=batch_size_default, metavar="N",
                        help=batch_size_help)
    parser.add_argument("-j", "--workers", type=workers_arg, default=None, metavar="N|auto",
                        help="data-loading processes (default auto: min(4, available cores))")
    add_progress_argument(parser)
