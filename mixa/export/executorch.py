"""ExecuTorch (.pte) with the XNNPACK backend: lowering, INT8 (PT2E + XNNPACK quantizer), verification,
and running a .pte with ExecuTorch's Python runtime. Needs the ``edge`` extra (``pip install 'mixa[edge]'``,
executorch); the runtime half (``load_pte``) needs executorch only, not torch's model code.

Lowering: ``torch.export`` -> ``to_edge_transform_and_lower`` with the ``XnnpackPartitioner`` ->
``to_executorch``, with ``mixa.export.delegation``'s rewrites that keep view-like ops in the delegate and
LayerNorm in a form XNNPACK runs (``mixa.export.lowering.layer_norm_forms``). Whatever XNNPACK still cannot
run falls back to ExecuTorch's portable kernels in the same program; the result says which ops do
(``PteResult.delegation``).

INT8: PT2E quantization with the ``XNNPACKQuantizer`` (symmetric int8, per-channel weights, static
activation ranges calibrated on images): it quantises the layers (linear, conv) and leaves the attention
matmuls, softmax and the linear-attention reductions and divisions in fp32 -- the split mixa's ONNX INT8
makes by name (``mixa.export.quantize``). In a replaced layer only its layers are annotated (q/k/v, proj,
the gate): left alone, the quantizer would also take the adds inside its core (rala's kappa) and LePE's
depth-wise conv; on an AVX512-VNNI Xeon XNNPACK's int8 depth-wise conv with the conversions and int8
transposes around it took 165 us per LePE against 73 in fp32 (benchmarks/edge/README.md). timm's softmax
layers are left to the quantizer (``_attention_names``).
LayerNorms stay fp32 (as a native LayerNorm is never annotated).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from ..errors import MixaError, UsageError
from ..io import atomic_path
from .lowering import layer_norm_forms, linear_core_forms, projection_forms, runtime_softmax_form, softmax_form
from .delegation import DelegationReport, delegation_report, keep_views_delegable
from .quantize import LAYER_CHILDREN

EDGE_EXTRA_HINT = "pip install 'mixa[edge]'"
# |ExecuTorch - torch| <= RTOL * max(1, max |torch output|), as for ONNX.
DEFAULT_RTOL = 1e-4


def executorch_available() -> bool:
    try:
        import executorch.runtime  # noqa: F401
    except ImportError:
        return False
    return True


def require_executorch(what: str = ".pte files") -> None:
    """One line naming the extra to install when executorch is missing (checked before any import of it)."""
    if not executorch_available():
        raise MixaError(f"{what} need ExecuTorch, which is not installed: {EDGE_EXTRA_HINT}")


@dataclass
class PteResult:
    path: Path
    input_size: tuple
    int8: bool
    max_abs_diff: float
    tolerance: float
    delegation: Optional[DelegationReport] = None  # what runs outside the XNNPACK delegate


def _quantized_module(model, example, calib_batches, fp32_types=(), fp32_cores=()):
    """PT2E: export for training-free graph capture, annotate for XNNPACK (modules of ``fp32_types`` left
    out; in the attention layers named in ``fp32_cores``, only their layers: ``_layers_only``), calibrate,
    convert."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    captured = torch.export.export(model, (example,), strict=False).module()
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    for module_type in fp32_types:
        quantizer.set_module_type(module_type, None)
    if fp32_cores:
        quantizer.set_filter_function(_layers_only(fp32_cores))
    prepared = prepare_pt2e(captured, quantizer)
    with torch.no_grad():
        for batch in calib_batches:
            for image in torch.as_tensor(np.asarray(batch)).split(1):
                prepared(image)
    return _without_unread_buffers(convert_pt2e(prepared))


def _without_unread_buffers(module):
    """``module`` without the buffers its graph no longer reads. convert_pt2e folds every quantised weight into
    a new constant; a weight held in a buffer (``mixa.export.lowering.projection_forms``) would otherwise stay
    behind unread, and torch.export would store it in the program in fp32."""
    read = {node.target for node in module.graph.nodes if node.op == "get_attr"}
    for name, _ in list(module.named_buffers()):
        if name not in read:
            owner, _, leaf = name.rpartition(".")
            del module.get_submodule(owner)._buffers[leaf]
    return module


def _attention_names(model) -> list:
    """The attention layers whose cores INT8 keeps fp32 by a node filter: mixa's replaced layers. timm's
    softmax layers are left to the quantizer: in a ViT it annotates nothing in their cores; in Swin it takes
    q's scale and the relative-position bias add (so q @ k^T reaches the softmax through int8), and the bias
    gather then folds into a constant -- filtered, that gather stays in the program, outside the delegate."""
    from ..attention.modules import MixAttention

    return [name for name, m in model.named_modules() if isinstance(m, MixAttention)]


def _layers_only(layers):
    """The quantizer's node filter that leaves the cores of the attention layers named in ``layers`` fp32:
    in those layers only the linear ops (the q/k/v projections, which the export's split form calls in the
    layer's own scope) and the sub-modules in ``mixa.export.quantize.LAYER_CHILDREN`` are annotated; kappa,
    the products' operands, LePE's conv and a feature map are not (``set_module_name`` takes no None config
    in executorch 1.5, hence a filter)."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_module_name_filter

    in_layer = [get_module_name_filter(name) for name in layers]
    in_child = [get_module_name_filter(f"{name}.{child}") for name in layers for child in LAYER_CHILDREN]

    def annotatable(node) -> bool:
        return (node.target == torch.ops.aten.linear.default or not any(f(node) for f in in_layer)
                or any(f(node) for f in in_child))

    return annotatable


def export_pte(model, path: os.PathLike | str, input_size: Sequence[int] = (3, 224, 224), *, int8: bool = False,
               calib_batches: Optional[List[np.ndarray]] = None, verify: bool = True, seed: int = 0,
               softmax: Optional[str] = None, keep_views: bool = True) -> PteResult:
    """Write ``model`` (CPU, eval, batch 1) to ``path`` as an ExecuTorch program lowered to XNNPACK, then
    run it with ExecuTorch's runtime against eager PyTorch on a random image before it replaces ``path``.
    fp32 must match within DEFAULT_RTOL. INT8 (``int8=True``, calibrated on ``calib_batches``) is an
    approximation: it must run and give finite outputs of the right shape; its difference is reported and
    its accuracy is measured as top-1 agreement with fp32 on images (``agreement_pte``). Softmax layers are
    exported in ``softmax`` form ('plain' / 'fused'; default the one XNNPACK runs best, see
    ``mixa.export.lowering``), linear cores, LayerNorms and q/k/v projections in the forms XNNPACK
    runs best;
    ``keep_views=False`` skips those and ``mixa.export.delegation``'s rewrites (the lowering before issue 20,
    for comparison)."""
    require_executorch()
    with _export_forms(model, softmax, keep_views) as fp32_types:
        return _export_pte(model, path, input_size, int8, calib_batches, verify, seed, keep_views, fp32_types)


@contextlib.contextmanager
def _export_forms(model, softmax: Optional[str] = None, keep_views: bool = True):
    """``model`` in the forms ``export_pte`` lowers (softmax form; with ``keep_views``, the linear-core,
    LayerNorm and projection forms of ``mixa.export.lowering``) for the duration of the block; yields the
    module types INT8 leaves fp32 (the switched LayerNorms)."""
    cores = linear_core_forms(model, "executorch") if keep_views else contextlib.nullcontext()
    norms = layer_norm_forms(model, "executorch") if keep_views else contextlib.nullcontext([])
    projections = projection_forms(model, "executorch") if keep_views else contextlib.nullcontext()
    with softmax_form(model, runtime_softmax_form("executorch", softmax)), cores, norms as averaged, projections:
        yield {type(m) for m in averaged}


def _export_pte(model, path, input_size, int8, calib_batches, verify, seed, keep_views, fp32_types) -> PteResult:
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    if int8 and not calib_batches:
        raise UsageError("INT8 ExecuTorch export needs calibration images (--calib-data DIR)")
    input_size = tuple(int(s) for s in input_size)
    model = model.to("cpu", torch.float32).eval()
    example = torch.randn(1, *input_size, generator=torch.Generator().manual_seed(seed))
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = _quantized_module(model, example, calib_batches, fp32_types, _attention_names(model)) \
                    if int8 else model
                program = torch.export.export(module, (example,), strict=False)
                lowered = to_edge_transform_and_lower(program, transform_passes=[keep_views_delegable] if keep_views else [],
                                                      partitioner=[XnnpackPartitioner()])
                delegation = delegation_report(lowered.exported_program())
                buffer = lowered.to_executorch().buffer
        except (MixaError, KeyboardInterrupt):
            raise
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise MixaError(f"ExecuTorch export of {type(model).__name__} failed: {first[:300]}") from err
        tmp.write_bytes(buffer)
        diff = tolerance = float("nan")
        if verify:
            with torch.no_grad():
                expected = model(example).float().numpy()
            got = run_pte(tmp, example.numpy())
            if got.shape != expected.shape:
                raise MixaError(f"{path}: ExecuTorch output shape {got.shape} != PyTorch {expected.shape}")
            diff = float(np.max(np.abs(got - expected)))
            tolerance = float("inf") if int8 else DEFAULT_RTOL * max(1.0, float(np.max(np.abs(expected))))
            if not np.isfinite(diff) or diff > tolerance:
                raise MixaError(f"{path}: ExecuTorch differs from PyTorch by {diff:.3g} (tolerance "
                                f"{tolerance:.3g}); the export is wrong")
    return PteResult(path, input_size, int8, diff, tolerance, delegation)


def agreement_pte(model, int8_path: os.PathLike | str, batches) -> tuple:
    """(images where the .pte's top-1 class equals eager ``model``'s, images)."""
    import torch

    method = load_pte(int8_path)
    same = total = 0
    with torch.no_grad():
        for batch in batches:
            for image in np.asarray(batch, dtype=np.float32):
                image = image[None]
                same += int(run_pte(method, image).argmax() == model(torch.from_numpy(image)).argmax())
                total += 1
    return same, total


def load_pte(path: os.PathLike | str):
    """The ``forward`` method of a .pte file, ready to ``execute([tensor])``."""
    require_executorch()
    from executorch.runtime import Runtime

    path = Path(path)
    if not path.is_file():
        raise MixaError(f"{path}: no such file")
    try:
        return Runtime.get().load_program(str(path)).load_method("forward")
    except Exception as err:
        raise MixaError(f"ExecuTorch cannot load {path}: {str(err).splitlines()[0][:300]}") from None


def set_threads(threads: Optional[int]) -> None:
    """Size ExecuTorch's CPU thread pool (used by XNNPACK); None leaves it as it is."""
    if threads:
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

        _unsafe_reset_threadpool(int(threads))


def input_shape(method) -> tuple:
    """The (B, C, H, W) shape the program was exported for."""
    return tuple(method.metadata.input_tensor_meta(0).sizes())


def run_pte(path_or_method, x: np.ndarray) -> np.ndarray:
    import torch

    method = load_pte(path_or_method) if isinstance(path_or_method, (str, os.PathLike)) else path_or_method
    return method.execute([torch.from_numpy(np.ascontiguousarray(x))])[0].numpy()
