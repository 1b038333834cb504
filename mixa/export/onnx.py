"""Export a mixa or timm model to ONNX, then check it: onnx checker, and ONNX Runtime vs PyTorch.

Exporter: torch's TorchScript-based exporter (``dynamo=False``) is the default. It works for every
attention kind and family on torch 2.4 .. 2.15 and takes well under a second for a tiny model. The
dynamo exporter (``exporter="dynamo"``, torch >= 2.5 with onnxscript) handles DeiT and Swin with any layers
replaced (the shifted-window regions are a static loop) and is ~10x slower; it is offered, not the default.
For a dynamic-batch Swin that ONNX Runtime's INT8 pre-processing (``quant_pre_process``) must read, use it:
the TorchScript exporter keeps timm's window-padding shape arithmetic, which ORT's symbolic shape inference
cannot follow with a symbolic batch, for the original Swin as for mixa's.

Every file carries mixa metadata (``mixa.params``, ``mixa.macs``, ``mixa.input_size``, ``mixa.source``) so
that ``mixa profile model.onnx`` can report them on a board with no torch.
"""
from __future__ import annotations

import inspect
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..attention import MixAttention
from ..errors import MixaError, UsageError
from ..io import atomic_path
from .lowering import linear_core_forms, one_image_forms, runtime_softmax_form, softmax_form
from ..macs import count_macs, count_params
from ..models.attention_layers import attention_layers, layer_kind

DEFAULT_OPSET = 17  # onnxruntime >= 1.14 covers it fully; LayerNormalization is a single node from 17 on
# The dynamo exporter writes opset 18 natively; converted down to 17, a tensor split into q, k, v kept
# opset 18's Split attribute and ONNX Runtime refused the file: lower opsets are refused with it.
DYNAMO_DEFAULT_OPSET = 18
EXPORTERS = ("torchscript", "dynamo")
INPUT_NAME, OUTPUT_NAME = "input", "logits"
# |ORT - torch| <= RTOL * max(1, max |torch output|): fp32 kernels differ in summation order only.
DEFAULT_RTOL = 1e-4


@dataclass
class ExportResult:
    path: Path
    input_size: Tuple[int, int, int]
    opset: int
    exporter: str
    dynamic_batch: bool
    max_abs_diff: Optional[float] = None
    tolerance: Optional[float] = None
    op_counts: Dict[str, int] = field(default_factory=dict)


def _torchscript_export(model, example, path, opset, dynamic_batch):
    kwargs = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about constant shapes are expected and harmless
        torch.onnx.export(model, (example,), str(path), opset_version=opset, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes=axes, do_constant_folding=True, **kwargs)


def _dynamo_export(model, example, path, opset, dynamic_batch):
    if "dynamo" not in inspect.signature(torch.onnx.export).parameters:
        raise UsageError(f"--exporter dynamo needs torch >= 2.5 (this is {torch.__version__})")
    shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset,
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=shapes, verbose=False)
    program.save(str(path))


def _weights_as_initializers(graph) -> None:
    """Make every constant of ``graph`` a plain initializer, in place.

    torch's exporter stores equal parameters once and routes the copies through ``Identity`` nodes (a
    freshly converted model has many: every zero LePE kernel, every neutral gate), and folds some constants
    into ``Constant`` nodes. ONNX Runtime's quantizers (``quantize_dynamic`` / ``quantize_static``) expect a
    weight to be an initializer and stop at an Identity ("Expected ... to be an initializer"). Here each
    such Identity becomes a copy of its initializer under the Identity's output name, and each Constant an
    initializer of the same name: the same values, one initializer per use, and nothing else changes.
    """
    from onnx import numpy_helper

    initializers = {init.name: init for init in graph.initializer}
    graph_outputs = {o.name for o in graph.output}
    kept = []
    for node in graph.node:
        tensor = None
        if node.op_type == "Identity" and node.input[0] in initializers and node.output[0] not in graph_outputs:
            tensor = numpy_helper.to_array(initializers[node.input[0]])
        elif node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = numpy_helper.to_array(node.attribute[0].t)
        if tensor is None:
            kept.append(node)
            continue
        copy = numpy_helper.from_array(tensor, node.output[0])
        graph.initializer.append(copy)
        initializers[copy.name] = copy
    del graph.node[:]
    graph.node.extend(kept)


def _fold_constants(path: Path) -> None:
    """ONNX Runtime's basic (hardware-independent, standard-ops-only) optimisations, written back: constant
    folding computes the shape arithmetic torch's tracer records (Swin's window padding is computed from
    ``x.shape``), which ORT's symbolic shape inference -- the first step of ``quant_pre_process`` -- cannot
    follow ("Incomplete symbolic shape inference"). With a dynamic batch the shapes stay computed."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    folded = path.with_name(path.name + ".folded")
    options.optimized_model_filepath = str(folded)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    os.replace(folded, path)


def _finish(path: Path, meta: Dict[str, str]) -> None:
    """Constants folded, weights as initializers (see ``_weights_as_initializers``) and mixa's metadata."""
    import onnx

    _fold_constants(path)
    proto = onnx.load(str(path))
    _weights_as_initializers(proto.graph)
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(proto, str(path))


def attention_scopes(model: nn.Module) -> Dict[str, str]:
    """{ONNX name scope of each attention module: its kind}. torch's TorchScript exporter names a node after
    the module that made it: ``blocks.2.attn`` -> ``/blocks/blocks.2/attn/`` (a ModuleList entry is named
    with its list). Stored in the file (``mixa.attention_scopes``) so that INT8 can find each attention's
    core on a machine without torch (``mixa.export.quantize.core_nodes``)."""
    try:
        layers = attention_layers(model)
    except MixaError:  # not a DeiT/Swin (e.g. RAVLT): no scopes recorded
        layers = [(n, m) for n, m in model.named_modules() if isinstance(m, MixAttention)]
    scopes = {}
    for path, module in layers:
        parts: list = []
        for part in path.split("."):
            if part.isdigit() and parts:
                parts.append(f"{parts[-1]}.{part}")
            else:
                parts.append(part)
        scopes["/" + "/".join(parts) + "/"] = layer_kind(module) if not isinstance(module, MixAttention) \
            else module.kind
    return scopes


def op_counts(path: os.PathLike | str) -> Dict[str, int]:
    import onnx

    counts: Dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def verify_onnx(path: os.PathLike | str, model: nn.Module, input_size: Sequence[int], batch: int = 1,
                rtol: float = DEFAULT_RTOL, seed: int = 0) -> Tuple[float, float]:
    """onnx checker, then ONNX Runtime vs ``model`` on a random batch; (max abs diff, tolerance).

    Raises MixaError above tolerance."""
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as err:
        raise MixaError(f"{path}: onnx checker failed: {str(err).splitlines()[0]}") from None
    x = torch.randn(batch, *input_size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = model(x).float().numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    if got.shape != expected.shape:
        raise MixaError(f"{path}: ONNX Runtime output shape {got.shape} != PyTorch {expected.shape}")
    diff = float(np.max(np.abs(got - expected))) if got.size else 0.0
    tolerance = rtol * max(1.0, float(np.max(np.abs(expected))))
    if not np.isfinite(diff) or diff > tolerance:
        raise MixaError(f"{path}: ONNX Runtime differs from PyTorch by {diff:.3g} (tolerance {tolerance:.3g}); "
                        f"the export is wrong")
    return diff, tolerance


def export_onnx(model: nn.Module, path: os.PathLike | str, input_size: Sequence[int] = (3, 224, 224), *,
                opset: Optional[int] = None, dynamic_batch: bool = False, exporter: str = "torchscript",
                verify: bool = True, rtol: float = DEFAULT_RTOL, metadata: Optional[Dict[str, str]] = None,
                softmax: Optional[str] = None, int8: Optional[str] = None) -> ExportResult:
    """Write ``model`` (fp32, CPU, eval) to ``path`` as ONNX with input ``input`` (B, C, H, W) and output
    ``logits``; verify it (see ``verify_onnx``) before it replaces ``path``: a failed export leaves no file.
    Softmax layers are exported in ``softmax`` form ('plain' / 'fused' / 'ort'; default the one ONNX Runtime
    runs best, see ``mixa.export.lowering``; the dynamo exporter cannot write 'ort' and takes 'plain'),
    linear cores in the form ONNX Runtime runs best (same maths; at a static batch of 1 the one-image form).
    ``int8``: the INT8 mode the file will be quantised in ('dynamic' / 'static'; None: it stays fp32), for the
    forms that precision runs best (see ``mixa.export.lowering``).
    """
    if exporter not in EXPORTERS:
        raise UsageError(f"unknown exporter {exporter!r}; choose from {', '.join(EXPORTERS)}")
    if opset is None:
        opset = DYNAMO_DEFAULT_OPSET if exporter == "dynamo" else DEFAULT_OPSET
    if not 7 <= opset <= 23:
        raise UsageError(f"--opset must be in 7..23; got {opset}")
    if exporter == "dynamo" and opset < DYNAMO_DEFAULT_OPSET:
        raise UsageError(f"--exporter dynamo writes opset {DYNAMO_DEFAULT_OPSET} or later (torch's conversion to an "
                         f"older opset can leave nodes ONNX Runtime refuses); got --opset {opset}")
    form = runtime_softmax_form("onnx", softmax, int8, exporter)
    input_size = tuple(int(s) for s in input_size)
    model = model.to("cpu", torch.float32).eval()
    # Counted as the model is (a switched layer's projection is no longer a module call the count can see).
    meta = {"mixa.params": count_params(model), "mixa.macs": count_macs(model, input_size),
            "mixa.input_size": "x".join(map(str, input_size)), "mixa.softmax_form": form,
            "mixa.attention_scopes": json.dumps(attention_scopes(model)), **(metadata or {})}
    with softmax_form(model, form), linear_core_forms(model, "onnx"), \
            one_image_forms(model, "onnx", dynamic_batch, form):
        return _export_onnx(model, path, input_size, opset, dynamic_batch, exporter, verify, rtol, meta)


def _export_onnx(model, path, input_size, opset, dynamic_batch, exporter, verify, rtol, meta) -> ExportResult:
    # Traced at batch 2 when the batch is dynamic (torch.export specialises a dimension of size 1).
    example = torch.randn(2 if dynamic_batch else 1, *input_size)
    path = Path(path)
    result = ExportResult(path, input_size, opset, exporter, dynamic_batch)
    with atomic_path(path) as tmp:
        try:
            with torch.no_grad():
                (_torchscript_export if exporter == "torchscript" else _dynamo_export)(
                    model, example, tmp, opset, dynamic_batch)
        except (MixaError, KeyboardInterrupt):
            raise
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise MixaError(f"ONNX export ({exporter}) of {type(model).__name__} failed: {first[:300]}") from err
        _finish(tmp, meta)
        if verify:
            result.max_abs_diff, result.tolerance = verify_onnx(tmp, model, input_size,
                                                                batch=3 if dynamic_batch else 1, rtol=rtol)
        result.op_counts = op_counts(tmp)
    return result
