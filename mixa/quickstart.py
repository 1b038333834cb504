"""``mixa quickstart``: the whole pipeline on the embedded teacher and synthetic data, offline, in minutes.

    summary = mixa.quickstart.quickstart("mixa-quickstart")                  # the plan picks the student
    summary = mixa.quickstart.quickstart("mixa-quickstart", attn="rala", keep=6)  # a student of your choice

Stages (each result is printed, and kept in OUTPUT so a killed run resumes after the last finished one):

1. data     -- the ``extremes`` task (mixa.data.synthetic: 64x64 images, 256 tokens at patch 4) written
               as an ImageFolder: OUTPUT/data/{train,val}
2. teacher  -- the packaged, converged 12-block ViT (mixa/assets/extremes_teacher), evaluated on val
3. plan     -- mixa.plan under the speed budget ``min_speedup`` (attn="auto"): every (kind, k) of PLAN_KINDS x
               PLAN_KEEP timed against the teacher; those within the budget scored after PLAN_TRANSFER_STEPS
               steps of layer-wise transfer on calibration images; the most faithful one is the student
               (OUTPUT/plan.json). Skipped when ``attn`` names a kind.
4. convert  -- keep softmax in the chosen layers, the chosen kind elsewhere: OUTPUT/converted (also
               evaluated as is: the cost before recovery)
5. distill  -- mixa.distill with its defaults: layer-wise transfer first, then KD from the teacher:
               OUTPUT/distill (transfer/, best/ and last/)
6. eval     -- student top-1 and agreement with the teacher on val
7. export   -- teacher.onnx and student.onnx, verified against PyTorch
8. profile  -- ONNX Runtime latency of both at batch 1, 1 thread, timed side by side (round-robin, thread
               CPU time: mixa.profile.timing), so the speed-up holds on a shared machine

and a summary table; OUTPUT/summary.json holds every number (top-1 values in percent). The summary
puts the student beside the teacher with the sampling noise of the val set: a student below the
teacher by more than noise needs more KD (benchmarks/proxy has the curves), a student above a
converged teacher by more than noise would be a bug, and the summary says so.
"""
from __future__ import annotations

import json
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
STAGES = ("data", "teacher", "plan", "convert", "distill", "eval", "export", "profile")
# The student the plan picks: the most faithful (kind, k) at least MIN_SPEEDUP times as fast as the teacher,
# among PLAN_KINDS x PLAN_KEEP; rows within the budget are scored after PLAN_TRANSFER_STEPS transfer steps
# (batch PLAN_TRANSFER_BATCH) on PLAN_CALIB_IMAGES calibration images. The grid and the probe are small so
# that the quick start stays within ten minutes on 2 cores: rala (at most 1.03x on this teacher) and k >= 6
# (at most 1.15x) never reach 1.2x here (benchmarks/proxy/extremes/latency_best_teacher), and the probe only
# ranks the rows (distill's transfer stage does the recovery).
MIN_SPEEDUP = 1.2
PLAN_KINDS = ("relu", "stella")
PLAN_KEEP = (0, 2, 4)
PLAN_TRANSFER_STEPS = 20
PLAN_TRANSFER_BATCH = 32
PLAN_CALIB_IMAGES = 128
# Timings of one row differ by a few percent from run to run: rows down to TIMING_MARGIN x MIN_SPEEDUP are
# worth transferring, and the pick is a row that clears MIN_SPEEDUP / TIMING_MARGIN when one does (a row at
# 1.23x in the plan timed 1.199x in the summary against a 1.2x budget).
TIMING_MARGIN = 0.95

# The distill stage's transfer budget. mixa distill's own default scales with the data (4 passes: 188 steps on
# the quick start's 3000 images); 100 steps is the length the extremes proxy measured (benchmarks/transfer:
# relu k = 0 at 98.0 / 98.4 / 97.8 after 100 steps, seeds 1-3) and keeps the quick start within ten minutes
# on 2 cores. The plan's pick (stella k = 2) scored 99.2% val after 188 steps and 99.3% after 100.
TRANSFER_STEPS = 100

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
        result["_reused"] = True  # not written back: tells this call's summary the stage was done before
        timings[name] = result.get("_seconds", 0.0)
        say(f"[{STAGES.index(name) + 1}/{len(STAGES)}] {name}: done before (kept from {path})")
        return result
    say(f"[{STAGES.index(name) + 1}/{len(STAGES)}] {name} ...")
    start, cpu_start = time.perf_counter(), time.process_time()
    result = fn()
    result["_seconds"] = round(time.perf_counter() - start, 2)
    result["_cpu_seconds"] = round(time.process_time() - cpu_start, 2)  # all threads of this process
    timings[name] = result["_seconds"]
    write_json(path, result)
    return result


def pick_within_budget(rows, min_speedup: float):
    """(row, why): the most faithful row that clears ``min_speedup`` by the timing margin (a row just over the
    budget may time just under it in the summary's run), else the most faithful that clears it at all, else
    (None, None)."""
    from .plan import best_under

    margin = f"{100 * (1 - TIMING_MARGIN):.0f}% timing margin"
    faithful = f"the most faithful after {PLAN_TRANSFER_STEPS} transfer steps of the rows at least"
    pick = best_under(rows, min_speedup=min_speedup / TIMING_MARGIN)
    if pick is not None:
        return pick, f"{faithful} {min_speedup:g}x as fast as the teacher with a {margin} ({min_speedup / TIMING_MARGIN:.2f}x)"
    pick = best_under(rows, min_speedup=min_speedup)
    if pick is not None:
        return pick, (f"{faithful} {min_speedup:g}x as fast as the teacher (none clears the {margin}: the "
                      f"summary's timing may land under the budget)")
    return None, None


def choose_student(teacher, calib, min_speedup: float, work_dir: Path, progress: bool,
                   say: Callable[[str], None]) -> Dict[str, Any]:
    """The plan's student: every (kind, k) of PLAN_KINDS x PLAN_KEEP converted and timed against the teacher
    (1 ONNX Runtime thread, thread CPU time, round-robin); the rows within the budget (with a timing margin)
    scored again after PLAN_TRANSFER_STEPS transfer steps; the most faithful of those at least
    ``min_speedup`` times as fast. When none is, the fastest row, said plainly."""
    from dataclasses import asdict

    from .plan import Plan, format_table, mark_pareto, plan

    common = dict(threads=1, calib_images=sum(len(b) for b in calib), work_dir=work_dir, clock="cpu",
                  progress=progress)
    timed = plan(teacher, calib, attn=PLAN_KINDS, keep=PLAN_KEEP, transfer_steps=0, **common)
    say("    every (kind, k), converted as it is:\n" + format_table(timed))
    ks_by_kind: Dict[str, list] = {}
    for r in timed.rows:
        if r.speedup >= TIMING_MARGIN * min_speedup and r.keep < timed.depth:
            ks_by_kind.setdefault(r.kind, []).append(r.keep)
    rows = []
    for kind, ks in ks_by_kind.items():
        rows += plan(teacher, calib, attn=[kind], keep=ks, transfer_steps=PLAN_TRANSFER_STEPS,
                     transfer={"batch_size": PLAN_TRANSFER_BATCH}, **common).rows
    for r in rows:  # one latency scale for rows timed in several plans: the first plan's reference
        r.latency_ms = timed.original["latency_ms"] / r.speedup
    rows = mark_pareto(rows)
    if rows:
        say(f"    the rows within {min_speedup:g}x (less a {100 * (1 - TIMING_MARGIN):.0f}% timing margin), "
            f"after {PLAN_TRANSFER_STEPS} transfer steps:\n"
            + format_table(Plan(model=timed.model, depth=timed.depth, rows=rows, original=timed.original)))
    pick, why = pick_within_budget(rows, min_speedup)
    if pick is None:
        pick = min(timed.rows, key=lambda r: (-r.speedup, -r.agreement))
        why = (f"no (kind, k) of {','.join(PLAN_KINDS)} x k in {','.join(map(str, PLAN_KEEP))} is "
               f"{min_speedup:g}x as fast as the teacher on this machine: the fastest one instead")
    return {"chosen_by": "plan", "attn": pick.kind, "keep": pick.keep, "kept": pick.kept, "why": why,
            "speedup": pick.speedup, "agreement": pick.agreement, "agreement_before": pick.agreement_before,
            "min_speedup": min_speedup, "timed": [asdict(r) for r in timed.rows],
            "scored": [asdict(r) for r in rows], "cpu": timed.environment.get("cpu"),
            "work_dir": timed.settings.get("work_dir")}


def quickstart(output="mixa-quickstart", attn: str = "auto", keep: Optional[int] = None,
               select: str = "sensitivity", min_speedup: float = MIN_SPEEDUP,
               sizes: Optional[Dict[str, int]] = None, calib_images: int = 256, seed: int = 1,
               threads: Optional[int] = None, profile_repeat: int = 200, progress: bool = True,
               say: Callable[[str], None] = print, **recipe) -> Dict[str, Any]:
    """Run the whole pipeline into ``output`` and return the summary (also OUTPUT/summary.json).

    ``attn="auto"``: the plan picks kind, k and layers (the most faithful row at least ``min_speedup`` times
    as fast as the teacher); a kind name converts ``keep`` layers (default 6) chosen by ``select`` instead.
    ``sizes``: images per split of the synthetic data (default DEFAULT_SIZES); ``recipe``: overrides of the
    distillation settings in ``RECIPE`` (epochs, batch_size, lr, ...) and ``transfer_steps`` (default
    TRANSFER_STEPS). ``threads``: torch threads (default: torch's default); latency is always timed with 1
    ONNX Runtime thread (thread CPU time is only meaningful for one thread).
    """
    import torch

    from . import convert as mixa_convert
    from .io import atomic_path, write_json
    from .saved import is_model_dir, load, save
    from .attention import get_attention_kind, list_attention_kinds
    from .data import synthetic
    from .macs import count_macs, count_params

    auto = attn == "auto"
    if not auto and (attn not in list_attention_kinds() or not get_attention_kind(attn).linear):
        raise UsageError(f"--attn must be auto or a linear kind: "
                         f"{', '.join(list_attention_kinds(linear_only=True))}")
    if auto and keep is not None:
        raise UsageError("--attn auto lets the plan choose k: drop --keep (or name a kind with --attn)")
    if not min_speedup > 0:
        raise UsageError(f"--min-speedup must be positive; got {min_speedup}")
    keep = None if auto else (6 if keep is None else keep)
    if not is_model_dir(PROXY_TEACHER_DIR):
        raise UsageError(f"the packaged teacher is missing from {PROXY_TEACHER_DIR} (a broken install?)")
    unknown = sorted(set(recipe) - set(RECIPE) - {"seed", "transfer_steps"})
    if unknown:
        raise UsageError(f"unknown distillation setting(s): {', '.join(unknown)}")
    settings = {**RECIPE, "seed": seed, "transfer_steps": TRANSFER_STEPS,
                **{k: v for k, v in recipe.items() if v is not None}}
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
    if auto:
        run_settings["plan"] = {"min_speedup": min_speedup, "kinds": list(PLAN_KINDS), "keep": list(PLAN_KEEP),
                                "transfer_steps": PLAN_TRANSFER_STEPS, "transfer_batch": PLAN_TRANSFER_BATCH,
                                "calib_images": PLAN_CALIB_IMAGES}
    settings_path = out / "stages" / "settings.json"
    if settings_path.is_file():
        previous = json.loads(settings_path.read_text())
        if previous != json.loads(json.dumps(run_settings)):
            changed = sorted(k for k in set(run_settings) | set(previous)
                             if previous.get(k) != json.loads(json.dumps(run_settings.get(k))))
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

    def calibration(images: int):
        calib_x, _ = synthetic.SyntheticShapes("calib", images, seed=seed, task=TASK).tensors()
        return list(calib_x.split(64))

    def stage_data():
        synthetic.write_image_folder(data_dir, seed=seed, sizes=sizes, progress=progress, task=TASK)
        return {"dir": str(data_dir), "task": TASK, "sizes": sizes, "classes": synthetic.class_names(TASK)}

    def stage_teacher():
        metrics = evaluate(teacher, data_dir, **eval_kwargs())
        return {"top1": metrics["top1"], "images": metrics["images"], "params": count_params(teacher),
                "macs": count_macs(teacher, input_size)}

    def stage_plan():
        if not auto:
            return {"chosen_by": "given", "attn": attn, "keep": keep, "select": select}
        return choose_student(teacher, calibration(PLAN_CALIB_IMAGES), min_speedup, out / "plan", progress,
                              say)

    def stage_convert(chosen):
        calib = calibration(calib_images)
        by_plan = chosen["chosen_by"] == "plan"
        selection = chosen["kept"] if by_plan else select
        model = mixa_convert(teacher, keep=None if by_plan else keep, attn=chosen["attn"], select=selection,
                             calib=calib if selection == "sensitivity" else None, calib_images=None,
                             progress=progress)
        save(model, converted_dir)
        metrics = evaluate(model, data_dir, teacher=teacher, **eval_kwargs())
        return {"dir": str(converted_dir), "kept": model.mixa_config["selection"]["kept"],
                "scores": model.mixa_config["selection"]["scores"], "top1_before_kd": metrics["top1"],
                "agreement_before_kd": metrics.get("agreement_top1"), "params": count_params(model),
                "macs": count_macs(model, input_size)}

    def stage_distill():
        resume = (run_dir / "last").exists() or (run_dir / "transfer").exists()
        metrics = distill(converted_dir, data_dir, run_dir, teacher=teacher, recipe=settings, resume=resume,
                          device="cpu", progress=progress)
        used = json.loads((run_dir / "run.json").read_text())["settings"]
        return {"run": str(run_dir), "settings": settings, "transfer_steps": used.get("transfer_steps", 0),
                **{k: metrics.get(k) for k in ("best_top1", "best_epoch", "epochs_done", "val_top1", "agreement_top1")}}

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
        from .plan import time_against
        from .profile.records import cpu_model

        rounds = max(1, profile_repeat // 20)
        timing = time_against(out / "teacher.onnx", out / "student.onnx", threads=1, rounds=rounds, repeat=20,
                              warmup=20, clock="cpu")
        return {"teacher_ms": timing["reference_ms"], "student_ms": timing["measured_ms"],
                "speedup": timing["speedup"], "threads": 1, "clock": "thread CPU time", "rounds": rounds * 20,
                "cpu": cpu_model()}

    results: Dict[str, Dict[str, Any]] = {}
    stage_fns = {"data": stage_data, "teacher": stage_teacher, "plan": stage_plan,
                 "convert": lambda: stage_convert(results["plan"]), "distill": stage_distill, "eval": stage_eval,
                 "export": stage_export, "profile": stage_profile}
    reused = []
    for name in STAGES:
        results[name] = _run_stage(out, name, stage_fns[name], say, timings)
        if results[name].get("_reused"):
            reused.append(name)
        say(_stage_line(name, results[name]))

    summary = _summary(results, select, timings, time.perf_counter() - t_start, reused, threads)
    write_json(out / "summary.json", summary)
    table = format_summary(summary)
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(table + "\n")
    say("")
    say(table)
    say(f"\neverything is in {out}/ (summary.json, teacher.onnx, student.onnx, distill/best)")
    return summary


def _stage_line(name: str, r: Dict[str, Any]) -> str:
    if name == "data":
        return f"    synthetic data ({r.get('task', 'shapes')}): {', '.join(f'{k} {v}' for k, v in r['sizes'].items())} images in {r['dir']}"
    if name == "teacher":
        return f"    teacher top-1 {r['top1']:.2f}%"
    if name == "plan":
        if r["chosen_by"] != "plan":
            return f"    student given: {r['attn']}, k={r['keep']} ({r['select']} selection)"
        return (f"    student: {r['attn']} k={r['keep']} (softmax in layers {r['kept'] or 'none'}), "
                f"{r['speedup']:.2f}x the teacher, agreement {r['agreement']:.1f}%: {r['why']}")
    if name == "convert":
        return (f"    kept softmax in layers {r['kept']}; before recovery: top-1 {r['top1_before_kd']:.2f}%, "
                f"agreement {r['agreement_before_kd']:.2f}%")
    if name == "distill":
        first = f"{r['transfer_steps']} transfer steps, then " if r.get("transfer_steps") else ""
        source = " (the transferred student: no KD epoch beat it clearly)" if r.get("best_epoch") == 0 else ""
        return f"    {first}{r['epochs_done']} KD epochs, best val top-1 {r['best_top1']:.2f}%{source}"
    if name == "eval":
        return f"    student top-1 {r['top1']:.2f}%, agreement with teacher {r['agreement_top1']:.2f}%"
    if name == "export":
        return "    " + ", ".join(f"{k}.onnx (max |ort - torch| {v['max_abs_diff']:.1e})" for k, v in r.items()
                                  if not k.startswith("_"))
    if name == "profile":
        return (f"    teacher {r['teacher_ms']:.3f} ms, student {r['student_ms']:.3f} ms: {r['speedup']:.2f}x "
                f"(side by side, {r['rounds']} rounds, 1 ORT thread, {r['clock']}, {r['cpu']})")
    return ""


def speed_line(speedup: float, min_speedup: Optional[float]) -> str:
    """One plain line on the student's speed against the teacher."""
    if speedup >= 1.0:
        line = f"student {speedup:.2f}x as fast as the teacher"
    else:
        line = f"student SLOWER than the teacher ({speedup:.2f}x: {1 / speedup:.2f}x the teacher's time)"
    if min_speedup is not None and speedup < min_speedup:
        line += (f"; {speedup:.3f}x is below the plan's budget of {min_speedup:g}x (timed again here: the "
                 f"machine's load differs)")
    return line + " (ONNX Runtime, batch 1, 1 thread, side by side)"


def noise_points(top1: float, images: int) -> float:
    """Two binomial standard errors of a top-1 (percent) measured on ``images`` images: differences
    between two models on the same val set smaller than this are not evidence of anything."""
    from .metrics import top1_standard_error

    return 2.0 * top1_standard_error(top1, images)


def verdict(gap: float, noise: float) -> str:
    """One honest line on the student against the teacher (``gap`` = student - teacher, points)."""
    if gap > noise:
        return (f"student {gap:+.2f} points ABOVE the converged teacher (noise +-{noise:.2f}): not expected "
                f"from distillation; suspect the evaluation (teacher/student data or preprocessing)")
    if gap < -noise:
        return (f"student {gap:+.2f} points below the teacher (noise +-{noise:.2f}): more KD epochs/images "
                f"close the gap (see benchmarks/proxy for the curves)")
    return f"student matches the teacher within noise ({gap:+.2f} points, noise +-{noise:.2f})"


def _summary(results, select, timings, call_s, reused, threads) -> Dict[str, Any]:
    t, c, e, p, chosen = (results["teacher"], results["convert"], results["eval"], results["profile"],
                          results["plan"])
    gap, noise = e["top1"] - t["top1"], noise_points(t["top1"], e["images"])
    min_speedup = chosen.get("min_speedup")
    return {
        "task": TASK,
        "teacher_top1": t["top1"],
        "student_top1": e["top1"],
        "student_minus_teacher": gap,
        "noise_points": noise,
        "verdict": verdict(gap, noise),
        "speed": speed_line(p["speedup"], min_speedup),
        "student_top1_before_kd": c["top1_before_kd"],
        "agreement_top1": e["agreement_top1"],
        "agreement_top1_before_kd": c["agreement_before_kd"],
        "teacher_latency_ms": p["teacher_ms"],
        "student_latency_ms": p["student_ms"],
        "speedup": p["speedup"],
        "latency_timing": {k: p[k] for k in ("threads", "clock", "rounds", "cpu")},
        "teacher_params": t["params"], "student_params": c["params"],
        "teacher_macs": t["macs"], "student_macs": c["macs"],
        "attn": chosen["attn"], "keep": chosen["keep"], "select": "plan" if chosen["chosen_by"] == "plan" else select,
        "chosen_by": chosen["chosen_by"], "min_speedup": min_speedup, "why": chosen.get("why"),
        "kept_layers": c["kept"], "transfer_steps": results["distill"].get("transfer_steps", 0),
        "val_images": e["images"], "threads": threads,
        "stage_seconds": {k: v for k, v in timings.items()}, "total_seconds": round(sum(timings.values()), 2),
        "stage_cpu_seconds": {k: results[k].get("_cpu_seconds") for k in timings},
        "this_call_seconds": round(call_s, 2), "stages_reused": reused,
        "distill_settings": results["distill"]["settings"],
    }


def format_summary(s: Dict[str, Any]) -> str:
    """The summary as a text table: teacher vs student, the speed-up and accuracy lines, where the time went."""
    from .report import human, table

    rows = [
        ("top-1 (%)", f"{s['teacher_top1']:.2f}", f"{s['student_top1']:.2f}",
         f"{s['student_top1_before_kd']:.2f}"),
        ("agreement with teacher (%)", "100.00", f"{s['agreement_top1']:.2f}",
         f"{s['agreement_top1_before_kd']:.2f}"),
        ("latency ORT CPU batch 1 (ms)", f"{s['teacher_latency_ms']:.3f}", f"{s['student_latency_ms']:.3f}", ""),
        ("speed-up (side by side)", "1.00x", f"{s['speedup']:.2f}x", ""),
        ("params", human(s["teacher_params"]), human(s["student_params"]), ""),
        ("MACs", human(s["teacher_macs"]), human(s["student_macs"]), ""),
    ]
    head = ["", "teacher (12 softmax)", f"student ({s['keep']} softmax + {s['attn']})", "student before recovery"]
    stages = ", ".join(f"{k} {v:.0f}s" for k, v in s["stage_seconds"].items())
    reused = s.get("stages_reused") or []
    if not reused:
        time_line = f"total {s['total_seconds']:.0f}s: {stages}"
    elif len(reused) == len(s["stage_seconds"]):
        time_line = (f"every stage was done by an earlier call (total {s['total_seconds']:.0f}s then: {stages}); "
                     f"this call {s['this_call_seconds']:.0f}s")
    else:
        time_line = (f"total {s['total_seconds']:.0f}s over the stages ({stages}); {', '.join(reused)} done by "
                     f"an earlier call, this call {s['this_call_seconds']:.0f}s")
    chosen = (f"\nstudent chosen by the plan: {s['why']}" if s.get("chosen_by") == "plan" else "")
    return table(rows, head) + chosen + f"\n\n{s['speed']}\n{s['verdict']}\n{time_line}"
