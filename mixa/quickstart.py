"""``mixa quickstart``: the whole pipeline on the embedded teacher and synthetic data, offline, in minutes.

    summary = mixa.quickstart.quickstart("mixa-quickstart", attn="rala")

Stages (each result is printed, and kept in OUTPUT so a killed run resumes after the last finished one):

1. data     -- the ``extremes`` task (mixa.data.synthetic: 64x64 images, 256 tokens at patch 4) written
               as an ImageFolder: OUTPUT/data/{train,val}
2. teacher  -- the packaged, converged 12-block ViT (mixa/assets/extremes_teacher), evaluated on val
3. convert  -- keep softmax in ``keep`` layers chosen by sensitivity on calibration images, ``attn``
               elsewhere: OUTPUT/converted (also evaluated as is: the cost before fine-tuning)
4. distill  -- KD fine-tuning from the teacher: OUTPUT/distill (best/ and last/ checkpoints)
5. eval     -- student top-1 and agreement with the teacher on val
6. export   -- teacher.onnx and student.onnx, verified against PyTorch
7. profile  -- ONNX Runtime CPU latency of both, batch 1

and a summary table; OUTPUT/summary.json holds every number (top-1 values in percent). The summary
puts the student beside the teacher with the sampling noise of the val set: a student below the
teacher by more than noise needs more KD (benchmarks/proxy has the curves), a student above a
converged teacher by more than noise would be a bug, and the summary says so.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from .errors import UsageError

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
# The quick start's and the proxy benchmark's teacher; TASK is the task its training.json names (a test
# checks), kept here as a constant so that the command line can name it without reading files.
PROXY_TEACHER_DIR = ASSETS_DIR / "extremes_teacher"
TASK = "extremes"
# The first teacher (task "shapes", 16 tokens), still used by tools/bench_offline.py and tests/test_export.py.
SHAPES_TEACHER_DIR = ASSETS_DIR / "teacher"
TEACHER_DIR = SHAPES_TEACHER_DIR
STAGES = ("data", "teacher", "convert", "distill", "eval", "export", "profile")

# KD fine-tuning settings for the synthetic tasks (also every row of benchmarks/proxy). No augmentation:
# a flip or crop changes the answer (left/right, above/below), colour jitter can change the colours.
RECIPE: Dict[str, Any] = {
    "epochs": 2,
    "warmup_epochs": 0,
    "batch_size": 64,
    "lr": 5.0e-4,
    "lr_base_batch": None,
    "min_lr": 1.0e-5,
    "warmup_lr": 1.0e-5,
    "weight_decay": 0.05,
    "clip_grad": 1.0,
    "amp": "none",
    "kd": "soft",
    "kd_weight": 0.5,
    "kd_temperature": 1.0,
    "smoothing": 0.0,
    "auto_augment": None,
    "reprob": 0.0,
    "color_jitter": 0.0,
    "hflip": 0.0,
    "scale": [1.0, 1.0],
    "mixup": 0.0,
    "cutmix": 0.0,
    "workers": 0,
}
DEFAULT_SIZES = {"train": 3000, "val": 1000}


def load_teacher(directory: Path = TEACHER_DIR):
    """A packaged teacher as a timm model whose config records its weights file as checkpoint, so a
    student converted from it names it as its distillation teacher ("auto")."""
    from .saved import load

    return load(directory)


def _stage_file(out: Path, name: str) -> Path:
    return out / "stages" / f"{name}.json"


def _run_stage(out: Path, name: str, fn: Callable[[], Dict[str, Any]], say: Callable[[str], None],
               timings: Dict[str, float]) -> Dict[str, Any]:
    """Run a stage once: its result is stored in OUTPUT/stages/NAME.json and reused on the next run."""
    from .io import write_json

    path = _stage_file(out, name)
    if path.is_file():
        result = json.loads(path.read_text())
        timings[name] = result.get("_seconds", 0.0)
        say(f"[{STAGES.index(name) + 1}/{len(STAGES)}] {name}: done before (kept from {path})")
        return result
    say(f"[{STAGES.index(name) + 1}/{len(STAGES)}] {name} ...")
    start = time.perf_counter()
    result = fn()
    result["_seconds"] = round(time.perf_counter() - start, 2)
    timings[name] = result["_seconds"]
    write_json(path, result)
    return result


def quickstart(output="mixa-quickstart", attn: str = "rala", keep: int = 6, select: str = "sensitivity",
               sizes: Optional[Dict[str, int]] = None, calib_images: int = 256, seed: int = 1,
               threads: Optional[int] = None, profile_repeat: int = 200, progress: bool = True,
               say: Callable[[str], None] = print, **recipe) -> Dict[str, Any]:
    """Run the whole pipeline into ``output`` and return the summary (also OUTPUT/summary.json).

    ``sizes``: images per split of the synthetic data (default DEFAULT_SIZES); ``recipe``:
    overrides of the distillation settings in ``RECIPE`` (epochs, batch_size, lr, ...).
    ``threads``: torch and ONNX Runtime threads (default: torch's default).
    """
    import torch

    from . import convert as mixa_convert
    from .io import atomic_path, write_json
    from .saved import is_model_dir, load, save
    from .attention import get_attention_kind, list_attention_kinds
    from .data import synthetic
    from .macs import count_macs, count_params

    if attn not in list_attention_kinds() or not get_attention_kind(attn).linear:
        raise UsageError(f"--attn must be a linear kind: {', '.join(list_attention_kinds(linear_only=True))}")
    if not is_model_dir(PROXY_TEACHER_DIR):
        raise UsageError(f"the packaged teacher is missing from {PROXY_TEACHER_DIR} (a broken install?)")
    unknown = sorted(set(recipe) - set(RECIPE) - {"seed"})
    if unknown:
        raise UsageError(f"unknown distillation setting(s): {', '.join(unknown)}")
    settings = {**RECIPE, "seed": seed, **{k: v for k, v in recipe.items() if v is not None}}
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    if threads is not None:
        torch.set_num_threads(int(threads))
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    data_dir, converted_dir, run_dir = out / "data", out / "converted", out / "distill"
    # Stages are reused on a rerun only if they were made with the same settings.
    run_settings = {"attn": attn, "keep": keep, "select": select, "sizes": sizes, "calib_images": calib_images,
                    "seed": seed, "recipe": settings}
    settings_path = out / "stages" / "settings.json"
    if settings_path.is_file():
        previous = json.loads(settings_path.read_text())
        if previous != json.loads(json.dumps(run_settings)):
            changed = sorted(k for k in run_settings if previous.get(k) != json.loads(json.dumps(run_settings[k])))
            raise UsageError(f"{out} holds a quickstart run with other settings ({', '.join(changed)}); "
                             f"choose another --output or delete it")
    write_json(settings_path, run_settings)
    timings: Dict[str, float] = {}
    t_start = time.perf_counter()

    from .distill import distill, evaluate

    teacher = load_teacher(PROXY_TEACHER_DIR)
    input_size = tuple(teacher.pretrained_cfg["input_size"])

    def eval_kwargs():
        return {"batch_size": 250, "workers": 0, "device": "cpu", "progress": progress}

    def stage_data():
        synthetic.write_image_folder(data_dir, seed=seed, sizes=sizes, progress=progress, task=TASK)
        return {"dir": str(data_dir), "task": TASK, "sizes": sizes, "classes": synthetic.class_names(TASK)}

    def stage_teacher():
        metrics = evaluate(teacher, data_dir, **eval_kwargs())
        return {"top1": metrics["top1"], "images": metrics["images"], "params": count_params(teacher),
                "macs": count_macs(teacher, input_size)}

    def stage_convert():
        calib_x, _ = synthetic.SyntheticShapes("calib", calib_images, seed=seed, task=TASK).tensors()
        calib = list(calib_x.split(64))
        model = mixa_convert(teacher, keep=keep, attn=attn, select=select,
                             calib=calib if select == "sensitivity" else None, calib_images=None,
                             progress=progress)
        save(model, converted_dir)
        metrics = evaluate(model, data_dir, teacher=teacher, **eval_kwargs())
        return {"dir": str(converted_dir), "kept": model.mixa_config["selection"]["kept"],
                "scores": model.mixa_config["selection"]["scores"], "top1_before_kd": metrics["top1"],
                "agreement_before_kd": metrics.get("agreement_top1"), "params": count_params(model),
                "macs": count_macs(model, input_size)}

    def stage_distill():
        resume = (run_dir / "last").exists()
        metrics = distill(converted_dir, data_dir, run_dir, teacher=teacher, recipe=settings, resume=resume,
                          device="cpu", progress=progress)
        return {"run": str(run_dir), "settings": settings,
                **{k: metrics.get(k) for k in ("best_top1", "epochs_done", "val_top1", "agreement_top1")}}

    def stage_eval():
        student_dir = run_dir / "best"
        metrics = evaluate(student_dir, data_dir, teacher=teacher, **eval_kwargs())
        return {"student": str(student_dir), "top1": metrics["top1"], "agreement_top1": metrics["agreement_top1"],
                "mean_kl": metrics.get("mean_kl"), "images": metrics["images"]}

    def stage_export():
        from .export import export_onnx

        files = {}
        for name, model in (("teacher", teacher), ("student", load(run_dir / "best"))):
            result = export_onnx(model, out / f"{name}.onnx", input_size)
            files[name] = {"path": str(result.path), "max_abs_diff": result.max_abs_diff,
                           "tolerance": result.tolerance}
        return files

    def stage_profile():
        from .profile.ort import profile_file

        records = {}
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=2 * profile_repeat, desc="profile (ort, batch 1)", leave=False)
        for name in ("teacher", "student"):
            records[name] = profile_file(out / f"{name}.onnx", threads=threads, batch=1, resolution=None,
                                         warmup=20, repeat=profile_repeat, label=name, progress=bar)
        if bar is not None:
            bar.close()
        return records

    stage_fns = {"data": stage_data, "teacher": stage_teacher, "convert": stage_convert,
                 "distill": stage_distill, "eval": stage_eval, "export": stage_export, "profile": stage_profile}
    results: Dict[str, Dict[str, Any]] = {}
    for name in STAGES:
        results[name] = _run_stage(out, name, stage_fns[name], say, timings)
        say(_stage_line(name, results[name]))

    summary = _summary(results, attn, keep, select, timings, time.perf_counter() - t_start, threads)
    write_json(out / "summary.json", summary)
    table = format_summary(summary)
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(table + "\n")
    say("")
    say(table)
    say(f"\neverything is in {out}/ (summary.json, teacher.onnx, student.onnx, distill/best)")
    return summary


def _latency_ms(record: Dict[str, Any]) -> float:
    latency = record.get("latency_ms") or {}
    return float(latency["median"]) if isinstance(latency, dict) and "median" in latency else float("nan")


def _stage_line(name: str, r: Dict[str, Any]) -> str:
    if name == "data":
        return f"    synthetic data ({r.get('task', 'shapes')}): {', '.join(f'{k} {v}' for k, v in r['sizes'].items())} images in {r['dir']}"
    if name == "teacher":
        return f"    teacher top-1 {r['top1']:.2f}%"
    if name == "convert":
        return (f"    kept softmax in layers {r['kept']}; before fine-tuning: top-1 {r['top1_before_kd']:.2f}%, "
                f"agreement {r['agreement_before_kd']:.2f}%")
    if name == "distill":
        return f"    {r['epochs_done']} epochs, best val top-1 {r['best_top1']:.2f}%"
    if name == "eval":
        return f"    student top-1 {r['top1']:.2f}%, agreement with teacher {r['agreement_top1']:.2f}%"
    if name == "export":
        return "    " + ", ".join(f"{k}.onnx (max |ort - torch| {v['max_abs_diff']:.1e})" for k, v in r.items()
                                  if k != "_seconds")
    if name == "profile":
        return "    " + ", ".join(f"{k} {_latency_ms(v):.3f} ms" for k, v in r.items() if k != "_seconds")
    return ""


def noise_points(top1: float, images: int) -> float:
    """Two binomial standard errors of a top-1 (percent) measured on ``images`` images: differences
    between two models on the same val set smaller than this are not evidence of anything."""
    p = min(max(top1 / 100.0, 0.0), 1.0)
    return 200.0 * math.sqrt(max(p * (1.0 - p), 0.25 / max(images, 1)) / max(images, 1))


def verdict(gap: float, noise: float) -> str:
    """One honest line on the student against the teacher (``gap`` = student - teacher, points)."""
    if gap > noise:
        return (f"student {gap:+.2f} points ABOVE the converged teacher (noise +-{noise:.2f}): not expected "
                f"from distillation; suspect the evaluation (teacher/student data or preprocessing)")
    if gap < -noise:
        return (f"student {gap:+.2f} points below the teacher (noise +-{noise:.2f}): more KD epochs/images "
                f"close the gap (see benchmarks/proxy for the curves)")
    return f"student matches the teacher within noise ({gap:+.2f} points, noise +-{noise:.2f})"


def _summary(results, attn, keep, select, timings, total_s, threads) -> Dict[str, Any]:
    t, c, e, p = results["teacher"], results["convert"], results["eval"], results["profile"]
    teacher_ms, student_ms = _latency_ms(p["teacher"]), _latency_ms(p["student"])
    gap, noise = e["top1"] - t["top1"], noise_points(t["top1"], e["images"])
    return {
        "task": TASK,
        "teacher_top1": t["top1"],
        "student_top1": e["top1"],
        "student_minus_teacher": gap,
        "noise_points": noise,
        "verdict": verdict(gap, noise),
        "student_top1_before_kd": c["top1_before_kd"],
        "agreement_top1": e["agreement_top1"],
        "agreement_top1_before_kd": c["agreement_before_kd"],
        "teacher_latency_ms": teacher_ms,
        "student_latency_ms": student_ms,
        "speedup": teacher_ms / student_ms if student_ms > 0 else None,
        "teacher_params": t["params"], "student_params": c["params"],
        "teacher_macs": t["macs"], "student_macs": c["macs"],
        "attn": attn, "keep": keep, "select": select, "kept_layers": c["kept"],
        "val_images": e["images"], "threads": threads,
        "stage_seconds": timings, "total_seconds": round(total_s, 2),
        "distill_settings": results["distill"]["settings"],
    }


def format_summary(s: Dict[str, Any]) -> str:
    """The summary as a text table: teacher vs student, then where the time went."""
    from .report import human, table

    rows = [
        ("top-1 (%)", f"{s['teacher_top1']:.2f}", f"{s['student_top1']:.2f}",
         f"{s['student_top1_before_kd']:.2f}"),
        ("agreement with teacher (%)", "100.00", f"{s['agreement_top1']:.2f}",
         f"{s['agreement_top1_before_kd']:.2f}"),
        ("latency ORT CPU batch 1 (ms)", f"{s['teacher_latency_ms']:.3f}", f"{s['student_latency_ms']:.3f}", ""),
        ("params", human(s["teacher_params"]), human(s["student_params"]), ""),
        ("MACs", human(s["teacher_macs"]), human(s["student_macs"]), ""),
    ]
    head = ["", "teacher (12 softmax)", f"student ({s['keep']} softmax + {s['attn']})", "student before KD"]
    stages = ", ".join(f"{k} {v:.0f}s" for k, v in s["stage_seconds"].items())
    return (table(rows, head) + f"\n\n{s['verdict']}" + f"\ntotal {s['total_seconds']:.0f}s: {stages}")
