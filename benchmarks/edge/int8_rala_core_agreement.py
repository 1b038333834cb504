"""Does quantising only the layers of replaced attention layers change INT8 accuracy? Top-1 agreement of an
INT8 .pte with its fp32 model, with today's quantizer filter (in a replaced layer only q/k/v, proj and the
gate are annotated; the core stays fp32) against the XNNPACK quantizer left to itself (which also takes
rala's LePE conv and kappa's adds, and relu's normaliser add), for the packaged extremes teacher converted to
keep-6 rala and relu; the data of int8_layer_norm_agreement.py (300 val scenes of seed 1, 64 calib scenes;
issue 20, ninth session). Also the relative RMS error of the INT8 logits against fp32 (more sensitive than
top-1 agreement, which moves by whole scenes).

    PYTHONPATH=. python benchmarks/edge/int8_rala_core_agreement.py [WORK_DIR]
"""
import contextlib
import importlib.util
from pathlib import Path
from unittest import mock

import numpy as np
import torch

import mixa
from mixa.export import executorch
from mixa.export.executorch import agreement_pte, export_pte, load_pte, run_pte

_spec = importlib.util.spec_from_file_location("int8_layer_norm_agreement",
                                               Path(__file__).with_name("int8_layer_norm_agreement.py"))
layer_norm_study = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(layer_norm_study)


def logit_error(model, path, batches) -> float:
    """RMS(INT8 logits - fp32 logits) / RMS(fp32 logits) over the images of ``batches``."""
    images = np.concatenate(batches)
    method = load_pte(path)
    got = np.concatenate([run_pte(method, image[None]) for image in images])
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    return float(np.sqrt(((got - expected) ** 2).mean() / (expected ** 2).mean()))


def main() -> None:
    work, teacher, calib, check, size = layer_norm_study.setup("int8_rala_core_work")
    for kind in ("rala", "relu"):
        model = mixa.convert(teacher, keep=6, attn=kind, progress=False).eval()
        for form in ("layers-only", "quantizer-default"):
            path = work / f"{kind}_k6_{form}.int8.pte"
            left_alone = mock.patch.object(executorch, "_attention_names", lambda m: []) \
                if form == "quantizer-default" else contextlib.nullcontext()
            with left_alone:
                export_pte(model, path, size, int8=True, calib_batches=calib)
            same, total = agreement_pte(model, path, check)
            print(f"{kind}_k6 {form:18s} INT8 agrees with fp32 on {same}/{total} = {100 * same / total:.2f}%; "
                  f"relative RMS logit error {logit_error(model, path, check):.4f}", flush=True)
    print(f"wrote the programs to {work}")


if __name__ == "__main__":
    main()
