"""Arguments shared by the commands that build a model from a name (no torch import here)."""
from __future__ import annotations

import argparse
import ast
from typing import Any, Dict, List

from mixa.errors import UsageError


def add_model_source_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint / --no-pretrained / --num-classes / --model-arg."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", metavar="PATH",
                        help="local timm-compatible weights (.pth, .pth.tar, .safetensors); read without unpickling")
    source.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                        help="random initialisation instead of timm's pretrained weights")
    parser.add_argument("--num-classes", type=int, metavar="N", help="classifier size (default: the model's)")
    parser.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="extra timm kwarg, repeatable (e.g. depth=4, drop_path_rate=0.1, img_size=384)")


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
    """The keyword arguments of mixa.models.create_model from the parsed flags."""
    return {"pretrained": args.pretrained, "checkpoint": args.checkpoint, "num_classes": args.num_classes,
            **parse_model_args(args.model_arg)}


def workers_arg(text: str):
    """--workers/-j: 'auto' (min(4, available cores)) or a count >= 0."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer >= 0, got {text!r}")
    return value


def add_data_loading_arguments(parser: argparse.ArgumentParser, batch_size_help: str,
                               batch_size_default=None) -> None:
    """-b/--batch-size, -j/--workers, --no-progress (one spelling for every command that reads images)."""
    parser.add_argument("-b", "--batch-size", type=int, default=batch_size_default, metavar="N", help=batch_size_help)
    parser.add_argument("-j", "--workers", type=workers_arg, metavar="N|auto",
                        help="data-loading processes (default auto: min(4, available cores))")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
