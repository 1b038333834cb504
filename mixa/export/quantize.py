"""INT8 with ONNX Runtime's quantization tools, and top-1 agreement of the INT8 file with the fp32 one.

- ``dynamic``: weights of MatMul/Gemm (and Conv) to int8 ahead of time, activations quantised at run time
  (``quantize_dynamic``); needs no data.
- ``static``: weights and activations quantised with ranges calibrated on images (``quantize_static``,
  QDQ format, per-channel weights); needs calibration data.

What stays fp32 (``keep_fp32``):
- ``"cores"`` (default): INT8 for the layers only -- the MatMul/Gemm/Conv of qkv, proj, gate, MLP, patch
  embedding and head, where >= 95% of the MACs are at 224 px -- and fp32 for everything else:
  * every attention core, excluded by node name (``nodes_to_exclude``): all nodes an attention module makes
    itself between its qkv and its output projection -- the token reductions (k^T v, sum_j k_j, mean_j),
    the normalisers and divisions (relu's q . sum k + eps, RALA's 1 / (q . mean k' + eps), SteLLA's
    1/(N sqrt d)), the softmax / RALA reweighting, LePE and the gate product. Why: a linear attention's
    normaliser is a Div of two data-dependent sums (ONNX Runtime issue 16219: quantising Div/Pow/Sqrt ruins
    models) and its d x d buffer k^T v sums all N tokens, so its range grows with N. The softmax cores are
    kept fp32 too, so that the original and the converted model are quantised alike (the split ExecuTorch's
    XNNPACK quantizer makes). The cores are found by the name scopes ``mixa export`` records in the file
    (``mixa.attention_scopes``).
  * the residual additions, norms and other element-wise ops (``op_types_to_quantize`` = the layers): static
    QDQ of the residual stream cost 1-4 of 300 images of top-1 agreement on the packaged trained teacher
    (98.7-99.3%), layers-only static INT8 agreed on 300/300 (benchmarks/edge/INT8.md).
  * the layers' outputs (``OpTypesToExcludeOutputQuantization``): every consumer of a MatMul/Gemm output
    is fp32 here, so a QuantizeLinear/DequantizeLinear pair there would only round (ONNX Runtime then runs
    the layer as a QGemm with fp32 output). Measured on DeiT-T/14 keep-6 rala: the rala layers' qkv output
    otherwise got a second pair after its head transpose (ONNX Runtime's transpose optimiser).
  * ONNX Runtime's ``Attention`` operator (a ViT softmax layer exported in the ``ort`` form,
    ``mixa.export.ort_attention``) holds the layer's qkv projection and its core: dynamic INT8 makes it a
    ``QAttention`` (the projection in int8, the softmax attention in fp32, as above); static QDQ INT8 has no
    quantised form of it, so the node stays fp32, projection included.
- ``"none"``: ONNX Runtime's defaults (everything it can quantise).

Static mode gives every node its own copy of each constant it reads first (``own_constants``):
``quantize_static`` replaces a quantised bias by a DequantizeLinear output *under the initializer's name*,
so every other reader of a shared initializer -- the exporter merges equal tensors, e.g. the zero biases of
a freshly converted model -- then reads a computed tensor. For rala's LePE Conv (its bias merged with the
zero biases of the Linears) that turned off ONNX Runtime's NCHWc Conv, which needs constant weights:
5.7 ms instead of 0.6 ms for six layers at DeiT-T/14.

Weights (``weights``): ``"s8"`` (U8S8) is the default on CPUs with VNNI (AVX512-VNNI / AVX-VNNI) and on ARM,
where it is exact and fastest; ``"u8"`` (U8U8) on x86 CPUs without VNNI, where ONNX Runtime's U8S8 kernels
can saturate (measured on an AVX2-only CPU with the quick-start student: 57-73% top-1 agreement with s8
weights against 100% with u8). ``"auto"`` picks by ``int8_weights_for_this_cpu``.

Both modes first run ONNX Runtime's ``quant_pre_process`` (shape inference + graph optimisation), which its
documentation recommends.

Dynamic mode quantises a Gemm only as a MatMul, which ONNX Runtime's quantiser makes of a Gemm whose first
input is not transposed; a Gemm with ``transA`` (the output projection of a one-image layer,
``mixa.export.lowering.one_image_forms``, reads its input transposed) would stay fp32. Such a Gemm first gets
its transpose as a node of its own (``untransposed_gemms``): a 20 us Transpose and a 250 us INT8 product
instead of a 320 us fp32 one per layer at DeiT-T/14.
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

import numpy as np

from ..errors import MixaError, UsageError
from ..io import atomic_path
from ..profile.records import cpu_flags

QUANT_MODES = ("dynamic", "static")
WEIGHT_TYPES = ("auto", "u8", "s8")
KEEP_FP32 = ("cores", "none")
LAYER_OPS = ["MatMul", "Gemm", "Conv"]
# ONNX Runtime's attention operator (mixa.export.ort_attention writes it): a projection (a layer) with its core.
ORT_DOMAIN, ORT_ATTENTION = "com.microsoft", "Attention"
# Layers whose outputs stay fp32 in layers-only static INT8 (a Conv's: ONNX Runtime has no QLinearConv with an
# fp32 output, and the patch embedding's Conv would then run in fp32).
LAYER_OUTPUTS_FP32 = ["MatMul", "Gemm"]
# Sub-modules of an attention layer that are layers (quantised like any Linear), not its core. The others
# (rala's LePE, a learnable feature map) belong to the core and stay fp32, in ONNX and in .pte alike.
LAYER_CHILDREN = ("qkv", "proj", "gate")
_LAYER_SCOPES = tuple(f"{child}/" for child in LAYER_CHILDREN)


@dataclass
class QuantizeResult:
    path: Path
    mode: str
    weights: str
    keep_fp32: str
    excluded: List[str] = field(default_factory=list)


def cpu_has_vnni() -> Optional[bool]:
    """True / False from /proc/cpuinfo's flags on x86 Linux; None where it cannot tell."""
    flags = cpu_flags()
    return None if flags is None else bool(flags & {"avx512_vnni", "avx_vnni"})


def int8_weights_for_this_cpu() -> str:
    """'s8' on ARM and on x86 with VNNI; 'u8' on x86 without VNNI (or when the flags cannot be read)."""
    if platform.machine().lower() in ("arm64", "aarch64") or platform.machine().lower().startswith("arm"):
        return "s8"
    return "s8" if cpu_has_vnni() else "u8"


class _BatchReader:
    """onnxruntime CalibrationDataReader over a list of (B, C, H, W) float32 arrays."""

    def __init__(self, input_name: str, batches: List[np.ndarray]):
        self._items = iter([{input_name: b} for b in batches])

    def get_next(self):
        return next(self._items, None)

    def rewind(self):  # not needed by MinMax calibration; part of the reader protocol
        pass


def _feeds(path: os.PathLike | str, batches: List[np.ndarray]) -> _BatchReader:
    """A reader over ``batches``, re-split into the file's batch size when that is fixed."""
    import onnxruntime as ort

    spec = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0]
    if isinstance(spec.shape[0], int):
        images = np.concatenate(batches)
        size = spec.shape[0]
        batches = [images[i:i + size] for i in range(0, len(images) - size + 1, size)]
    return _BatchReader(spec.name, batches)


def attention_scopes(path: os.PathLike | str) -> dict:
    """The {name scope: kind} map ``mixa export`` wrote into the file ({} for files from elsewhere)."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return json.loads(meta.get("mixa.attention_scopes", "{}"))


def core_nodes(path: os.PathLike | str, scopes: Optional[dict] = None) -> List[str]:
    """Names of the nodes of ``path`` that belong to an attention core (see the module docstring; ONNX
    Runtime's Attention nodes hold a projection too and are left to the quantizer)."""
    import onnx

    scopes = attention_scopes(path) if scopes is None else scopes
    names = []
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if (node.domain, node.op_type) == (ORT_DOMAIN, ORT_ATTENTION):
            continue
        for scope in scopes:
            if node.name.startswith(scope) and not node.name[len(scope):].startswith(_LAYER_SCOPES):
                names.append(node.name)
                break
    return names


def _tensor_names(graph) -> set:
    """Every tensor name an ONNX graph holds: its inputs, initializers and node outputs."""
    return {v.name for v in graph.input} | {t.name for t in graph.initializer} | \
        {o for n in graph.node for o in n.output}


def _free_name(name: str, taken: set) -> str:
    """``name``, with underscores appended until no name in ``taken`` is it; added to ``taken``."""
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def own_constants(src: os.PathLike | str, dst: os.PathLike | str) -> int:
    """Write ``src`` to ``dst`` with one copy of each initializer per node reading it (see the module
    docstring); the number of copies made."""
    import onnx

    model = onnx.load(str(src))
    graph = model.graph
    by_name = {t.name: t for t in graph.initializer}
    names = _tensor_names(graph)
    reads = {}
    copies = 0
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name not in by_name:
                continue
            reads[name] = reads.get(name, 0) + 1
            if reads[name] == 1:  # the first reader keeps the original
                continue
            copy_name = _free_name(f"{name}.own{reads[name]}", names)
            copy = graph.initializer.add()
            copy.CopyFrom(by_name[name])
            copy.name = copy_name
            node.input[i] = copy_name
            copies += 1
    onnx.save(model, str(dst))
    return copies


def untransposed_gemms(src: os.PathLike | str, dst: os.PathLike | str) -> int:
    """Write ``src`` to ``dst`` with every Gemm's ``transA`` made a Transpose node of its own (named after the
    Gemm, so it stays in the Gemm's name scope); the number of Gemms changed."""
    import onnx
    from onnx import helper

    model = onnx.load(str(src))
    graph = model.graph
    names = _tensor_names(graph)
    nodes, changed = [], 0
    for node in graph.node:
        trans_a = next((a for a in node.attribute if a.name == "transA"), None)
        if node.op_type == "Gemm" and trans_a is not None and trans_a.i:
            transposed = _free_name(f"{node.input[0]}_transposed", names)
            nodes.append(helper.make_node("Transpose", [node.input[0]], [transposed], name=f"{node.name}_transpose_a",
                                          perm=[1, 0]))
            node.input[0] = transposed
            trans_a.i = 0
            changed += 1
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(dst))
    return changed


def quantize_onnx(fp32_path: os.PathLike | str, int8_path: os.PathLike | str, mode: str = "dynamic",
                  calib_batches: Optional[List[np.ndarray]] = None, weights: str = "auto",
                  keep_fp32: str = "cores") -> QuantizeResult:
    """Write an INT8 version of ``fp32_path`` to ``int8_path`` (atomically)."""
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quant_pre_process,
                                          quantize_dynamic, quantize_static)

    if mode not in QUANT_MODES:
        raise UsageError(f"unknown INT8 mode {mode!r}; choose from {', '.join(QUANT_MODES)}")
    if weights not in WEIGHT_TYPES:
        raise UsageError(f"unknown INT8 weight type {weights!r}; choose from {', '.join(WEIGHT_TYPES)}")
    if keep_fp32 not in KEEP_FP32:
        raise UsageError(f"unknown keep_fp32 {keep_fp32!r}; choose from {', '.join(KEEP_FP32)}")
    weights = int8_weights_for_this_cpu() if weights == "auto" else weights
    weight_type = QuantType.QUInt8 if weights == "u8" else QuantType.QInt8
    if mode == "static" and not calib_batches:
        raise UsageError("static INT8 quantization needs calibration data (--calib-data DIR)")
    int8_path = Path(int8_path)
    scopes = attention_scopes(fp32_path)
    if keep_fp32 == "cores" and not scopes:
        warnings.warn(f"{fp32_path} records no attention scopes (not written by mixa export): "
                      f"every node ONNX Runtime can quantise is quantised")
    with tempfile.TemporaryDirectory() as work, atomic_path(int8_path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = Path(work) / "prepared.onnx"
        try:
            quant_pre_process(str(fp32_path), str(prepared))
        except Exception:  # pre-processing is an optimisation; quantise the plain file if it fails
            prepared = Path(fp32_path)
        if mode == "static":
            own_constants(prepared, Path(work) / "own.onnx")
            prepared = Path(work) / "own.onnx"
        elif untransposed_gemms(prepared, Path(work) / "untransposed.onnx"):
            prepared = Path(work) / "untransposed.onnx"
        excluded = core_nodes(prepared, scopes) if keep_fp32 == "cores" else []
        op_types = LAYER_OPS if keep_fp32 == "cores" else None
        try:
            if mode == "dynamic":
                quantize_dynamic(str(prepared), str(tmp), weight_type=weight_type, per_channel=True,
                                 nodes_to_exclude=excluded,
                                 op_types_to_quantize=op_types and op_types + [ORT_ATTENTION])
            else:
                reader = _feeds(prepared, calib_batches)
                quantize_static(str(prepared), str(tmp), reader, quant_format=QuantFormat.QDQ,
                                per_channel=True, activation_type=QuantType.QUInt8,
                                weight_type=weight_type, calibrate_method=CalibrationMethod.MinMax,
                                nodes_to_exclude=excluded, op_types_to_quantize=op_types,
                                extra_options={"OpTypesToExcludeOutputQuantization": LAYER_OUTPUTS_FP32}
                                if keep_fp32 == "cores" else {})
        except (MixaError, KeyboardInterrupt):
            raise
        except Exception as err:
            raise MixaError(f"INT8 quantization ({mode}) failed: {str(err).splitlines()[0][:300]}") from err
    return QuantizeResult(int8_path, mode, weights, keep_fp32, excluded)


def agreement(fp32_path: os.PathLike | str, int8_path: os.PathLike | str,
              batches: Iterable[np.ndarray]) -> Tuple[int, int]:
    """(number of images where the two files' top-1 classes agree, number of images)."""
    import onnxruntime as ort

    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32_path, int8_path)]
    names = [s.get_inputs()[0].name for s in sessions]
    fixed_batch = [s.get_inputs()[0].shape[0] for s in sessions]
    same = total = 0
    for batch in batches:
        # A file exported without --dynamic-batch takes one fixed batch size: feed it image by image.
        chunks = [batch] if all(not isinstance(b, int) or b == len(batch) for b in fixed_batch) \
            else [batch[i:i + 1] for i in range(len(batch))]
        for chunk in chunks:
            tops = [s.run(None, {n: chunk})[0].argmax(-1) for s, n in zip(sessions, names)]
            same += int((tops[0] == tops[1]).sum())
            total += len(chunk)
    if total == 0:
        raise MixaError("no images to measure top-1 agreement on")
    return same, total
