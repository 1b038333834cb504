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
