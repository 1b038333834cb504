"""Does quantising only the layers of replaced attention layers change INT8 accuracy? Top-1 agreement of an
INT8 .pte with its fp32 model, with today's quantizer filter (in every attention layer only q/k/v, proj and
a gate are annotated; LePE and the core stay fp32) against the XNNPACK quantizer left to itself (which also
takes LePE's conv and kappa's adds), for the packaged extremes teacher converted to keep-6 rala; 300 val
scenes of seed 1, calibrated on 64 calib scenes (issue 20, ninth session).

    PYTHONPATH=. python benchmarks/edge/int8_rala_core_agreement.py [WORK_DIR]
"""
import contextlib
import sys
from pathlib import Path
from unittest import mock

import numpy as np

import mixa
from mixa.data import synthetic
from mixa.export import executorch
from mixa.export.executorch import agreement_pte, export_pte

TASK, SEED = "extremes", 1


def scenes(split: str, count: int, start: int = 0) -> np.ndarray:
    return synthetic.SyntheticShapes(split, count, seed=SEED, offset=start, task=TASK).tensors()[0].numpy()


def main() -> None:
    work = Path(sys.argv[1] if len(sys.argv) > 1 else "int8_rala_core_work")
    work.mkdir(parents=True, exist_ok=True)
    teacher = mixa.load(Path(mixa.__file__).parent / "assets" / "extremes_teacher").eval()
    calib = [scenes("calib", 64)]
    check = [scenes("val", 150), scenes("val", 150, 150)]
    size = tuple(calib[0].shape[1:])
    model = mixa.convert(teacher, keep=6, attn="rala", progress=False).eval()
    for form in ("layers-only", "quantizer-default"):
        path = work / f"rala_k6_{form}.int8.pte"
        # the quantizer left to itself: no replaced layer is named to it
        names = mock.patch.object(executorch, "_attention_names", lambda m: []) if form == "quantizer-default" \
            else contextlib.nullcontext()
        with names:
            export_pte(model, path, size, int8=True, calib_batches=calib)
        same, total = agreement_pte(model, path, check)
        print(f"rala_k6 {form:18s} INT8 agrees with fp32 on {same}/{total} = {100 * same / total:.2f}%", flush=True)
    print(f"wrote the programs to {work}")


if __name__ == "__main__":
    main()
