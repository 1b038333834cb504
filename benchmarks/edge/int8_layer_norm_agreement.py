"""Does the .pte LayerNorm form change INT8 accuracy? Top-1 agreement of an INT8 .pte with its fp32 model,
LayerNorms exported by averaging (today's .pte) against native LayerNorms (``keep_views=False``: the lowering
before issue 20), for the packaged extremes teacher and its keep-6 relu conversion; 300 val scenes of seed 1,
calibrated on 64 calib scenes (issue 20, seventh session).

    PYTHONPATH=. python benchmarks/edge/int8_layer_norm_agreement.py [WORK_DIR]
"""
import sys
from pathlib import Path

import numpy as np

import mixa
from mixa.data import synthetic
from mixa.export.executorch import agreement_pte, export_pte

TASK, SEED = "extremes", 1


def scenes(split: str, count: int, start: int = 0) -> np.ndarray:
    return synthetic.SyntheticShapes(split, count, seed=SEED, offset=start, task=TASK).tensors()[0].numpy()


def setup(default_work: str):
    """(work dir from argv, the packaged teacher, calibration batches, checked batches, image size)."""
    work = Path(sys.argv[1] if len(sys.argv) > 1 else default_work)
    work.mkdir(parents=True, exist_ok=True)
    teacher = mixa.load(Path(mixa.__file__).parent / "assets" / "extremes_teacher").eval()
    calib = [scenes("calib", 64)]
    return work, teacher, calib, [scenes("val", 150), scenes("val", 150, 150)], tuple(calib[0].shape[1:])


def main() -> None:
    work, teacher, calib, check, size = setup("int8_layer_norm_work")
    models = {"teacher": teacher, "relu_k6": mixa.convert(teacher, keep=6, attn="relu", progress=False).eval()}
    for name, model in models.items():
        for form, averaged in (("layernorm-form", True), ("native", False)):
            path = work / f"{name}_{form}.int8.pte"
            export_pte(model, path, size, int8=True, calib_batches=calib, keep_views=averaged)
            same, total = agreement_pte(model, path, check)
            print(f"{name:10s} {form:15s} INT8 agrees with fp32 on {same}/{total} = {100 * same / total:.2f}%",
                  flush=True)
    print(f"wrote the programs to {work}")


if __name__ == "__main__":
    main()
