"""The packaged teachers and the quick start pipeline (task "extremes", mixa/assets/extremes_teacher).

The first teacher (task "shapes", mixa/assets/teacher) is still packaged and tested here: tools/bench_offline.py
and tests/test_export.py use it."""
import json

import pytest
import torch

import mixa
from mixa.saved import read_config
from mixa.data import synthetic
from mixa.quickstart import PROXY_TEACHER_DIR, SHAPES_TEACHER_DIR, TASK, load_teacher

# Val scenes the teacher never saw (its training watched val samples 0..999 of seed 0 to stop).
FRESH = dict(split="val", length=400, seed=0, offset=5000)


def _top1(model, x, y):
    with torch.no_grad():
        return 100.0 * (model(x).argmax(-1) == y).float().mean().item()


@pytest.fixture(scope="module")
def fresh_val():
    return synthetic.SyntheticShapes(**FRESH).tensors()


@pytest.mark.parametrize("directory, size", [(SHAPES_TEACHER_DIR, 32), (PROXY_TEACHER_DIR, 64)])
def test_packaged_teachers_small_and_loadable(directory, size):
    assert (directory / "model.safetensors").stat().st_size <= 20 * 2 ** 20
    cfg = read_config(directory)
    assert len(cfg.layers) == 12 and not cfg.converted
    model = mixa.load(directory)
    assert model.pretrained_cfg["input_size"] in ([3, size, size], (3, size, size))


def test_packaged_teacher_reaches_its_accuracy(fresh_val):
    """On scenes it never saw, the teacher matches the val accuracy its training recorded (400 images:
    binomial sd ~1.1 points at 95%, so 4 points is a wide margin) and lies in the 85-97% band."""
    training = json.loads((SHAPES_TEACHER_DIR / "training.json").read_text())
    x, y = fresh_val
    top1 = _top1(load_teacher(SHAPES_TEACHER_DIR), x, y)
    assert abs(top1 - training["val_top1"]) < 4.0, (top1, training["val_top1"])
    assert 85.0 <= top1 <= 97.0
    # load_teacher (timm model + checkpoint) and mixa.load (saved model) are the same network.
    with torch.no_grad():
        assert torch.allclose(load_teacher(SHAPES_TEACHER_DIR)(x[:8]), mixa.load(SHAPES_TEACHER_DIR)(x[:8]),
                              atol=1e-5)


@pytest.fixture(scope="module")
def fresh_val_500():
    return synthetic.SyntheticShapes("val", 500, seed=0, offset=5000).tensors()


@pytest.mark.parametrize("kind", ["relu", "stella", "rala"])
def test_replacing_attention_without_finetuning_costs_points(kind, fresh_val_500):
    """The task needs attention. Keeping softmax in 6 of 12 evenly spaced layers, untrained linear
    attention in the others, loses about 10 points or more before distillation (measured on these
    500 images: relu 10.8, stella 18.6, rala 11.4), while keeping the 6 layers that sensitivity
    selection picks loses far less (0.6 / 0.2 / 2.0: the teacher's work is done in its first blocks)."""
    x, y = fresh_val_500
    teacher = load_teacher(SHAPES_TEACHER_DIR)
    base = _top1(teacher, x, y)
    uniform = mixa.convert(teacher, keep=6, attn=kind, select="uniform", progress=False)
    uniform_top1 = _top1(uniform, x, y)
    assert base - uniform_top1 >= 9.0
    calib = synthetic.SyntheticShapes("calib", 64, seed=0).tensors()[0]
    chosen = mixa.convert(teacher, keep=6, attn=kind, select="sensitivity", calib=[calib], calib_images=None,
                          progress=False)
    assert _top1(chosen, x, y) > uniform_top1 + 5.0


def test_quickstart_end_to_end_tiny(tmp_path, monkeypatch, capsys):
    """The whole pipeline on a tiny setting (a one-row plan) writes summary.json with numbers that agree with
    the artefacts it wrote: the plan's pick is the student, recovered transfer-first; the student's top-1
    recomputed from its checkpoint and the val folder; a rerun says every stage was done before."""
    import mixa.quickstart as qs
    from mixa.cli import main

    for name, value in (("PLAN_KINDS", ("stella",)), ("PLAN_KEEP", (0, 2)), ("PLAN_TRANSFER_STEPS", 2),
                        ("PLAN_TRANSFER_BATCH", 16), ("PLAN_CALIB_IMAGES", 32), ("TRANSFER_STEPS", 2)):
        monkeypatch.setattr(qs, name, value)
    out = tmp_path / "qs"
    argv = ["quickstart", "--output", str(out), "--train-images", "128", "--val-images", "200", "--epochs", "1",
            "--threads", "1", "--no-progress", "--calib-images", "32", "--min-speedup", "0.01"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    plan = json.loads((out / "stages" / "plan.json").read_text())
    # the plan: both rows timed, both within the (tiny) budget scored after transfer, the most faithful picked
    assert [r["transfer_steps"] for r in plan["timed"]] == [0, 0] and len(plan["scored"]) == 2
    best = max(plan["scored"], key=lambda r: (r["agreement"], -r["kl"]))
    assert (summary["attn"], summary["keep"], summary["chosen_by"]) == ("stella", best["keep"], "plan")
    kinds = mixa.attention_kinds(mixa.load(out / "distill" / "best"))
    assert [i for i, k in enumerate(kinds) if k == "softmax"] == best["kept"] == summary["kept_layers"]
    assert summary["transfer_steps"] == 2 and (out / "distill" / "transfer" / "model.safetensors").is_file()
    for key in ("teacher_top1", "student_top1", "agreement_top1", "teacher_latency_ms", "student_latency_ms",
                "teacher_params", "student_macs"):
        assert key in summary
    assert summary["task"] == TASK
    assert summary["speedup"] == pytest.approx(summary["teacher_latency_ms"] / summary["student_latency_ms"],
                                               rel=0.5)  # a median of per-round ratios, not a ratio of medians
    assert summary["latency_timing"]["clock"] == "thread CPU time" and summary["latency_timing"]["threads"] == 1
    assert summary["student_minus_teacher"] == pytest.approx(summary["student_top1"] - summary["teacher_top1"])
    text = (out / "summary.md").read_text()
    assert summary["verdict"] in text and summary["speed"] in text and f"{summary['speedup']:.2f}x" in text
    assert (out / "teacher.onnx").is_file() and (out / "student.onnx").is_file()
    from mixa.distill import evaluate

    again = evaluate(out / "distill" / "best", out / "data", batch_size=100, workers=0, device="cpu",
                     progress=False)
    assert again["top1"] == pytest.approx(summary["student_top1"], abs=1e-6)
    assert again["images"] == 200
    teacher_again = evaluate(PROXY_TEACHER_DIR, out / "data", batch_size=100, workers=0, device="cpu",
                             progress=False)
    assert teacher_again["top1"] == pytest.approx(summary["teacher_top1"], abs=1e-6)
    # A second run finds every stage done, rebuilds the same summary and says whose times it prints.
    capsys.readouterr()
    assert main(argv) == 0
    rerun = json.loads((out / "summary.json").read_text())
    assert rerun["student_top1"] == summary["student_top1"] and rerun["total_seconds"] == summary["total_seconds"]
    assert rerun["stages_reused"] == list(qs.STAGES)
    assert "every stage was done by an earlier call" in capsys.readouterr().out
    # ... but not a run with other settings: its stages would be stale (--transfer-steps reaches the settings).
    capsys.readouterr()
    assert main(argv + ["--attn", "relu"]) == 2
    assert "other settings (attn, keep, plan)" in capsys.readouterr().err
    assert main(argv + ["--transfer-steps", "3"]) == 2
    assert "other settings (recipe)" in capsys.readouterr().err


def test_the_pick_clears_the_budget_by_the_timing_margin():
    """The quick start's miss: relu k=4 planned at 1.23x timed 1.199x against 1.2x. A row that clears the
    budget by the margin wins over a more faithful one just over it; without such a row, the budget alone."""
    import mixa.quickstart as qs
    from mixa.plan import PlanRow

    def row(keep, speedup, agreement, kl):
        return PlanRow(kind="relu", keep=keep, kept=list(range(keep)), agreement=agreement, kl=kl, params=1,
                       macs=1, latency_ms=10 / speedup, speedup=speedup)

    edge, clear = row(4, 1.23, 100.0, 0.01), row(2, 1.28, 100.0, 0.02)
    assert 1.2 <= edge.speedup < 1.2 / qs.TIMING_MARGIN <= clear.speedup
    pick, why = qs.pick_within_budget([edge, clear], 1.2)
    assert pick is clear and "timing margin" in why
    pick, why = qs.pick_within_budget([edge], 1.2)
    assert pick is edge and "none clears" in why
    assert qs.pick_within_budget([edge], 1.3) == (None, None)


def test_summary_says_plainly_when_the_student_is_slower():
    from mixa.quickstart import speed_line

    assert speed_line(1.25, 1.2).startswith("student 1.25x as fast as the teacher")
    slower = speed_line(0.8, None)
    assert "SLOWER" in slower and "1.25x the teacher's time" in slower
    assert "1.199x is below the plan's budget of 1.2x" in speed_line(1.1989, 1.2)
    assert "budget" not in speed_line(1.2, 1.2)


def test_quickstart_rejects_bad_input(capsys):
    from mixa.cli import main

    assert main(["quickstart", "--attn", "softmax", "--output", "unused"]) == 2
    assert "linear kind" in capsys.readouterr().err
    assert main(["quickstart", "--keep", "13", "--output", "unused"]) == 2
    assert main(["quickstart", "--keep", "4", "--output", "unused"]) == 2  # auto chooses k
    assert "drop --keep" in capsys.readouterr().err


def test_quickstart_recipe_keeps_images_intact():
    """The distillation recipe of the quick start must not flip, crop or recolour: leftmost, topmost
    and colour are the label. Its training transform equals the eval transform."""
    from PIL import Image

    from mixa.distill.data import train_transform
    from mixa.distill.recipes import load_recipe
    from mixa.quickstart import RECIPE

    teacher = load_teacher(PROXY_TEACHER_DIR)
    transform = train_transform(teacher, load_recipe(RECIPE))
    ds = synthetic.SyntheticShapes("val", 4, seed=0, task=TASK)
    for i in range(4):
        for _ in range(3):
            assert torch.allclose(transform(Image.fromarray(ds.images[i])), ds[i][0], atol=1e-6)


def test_summary_verdict_is_honest():
    """The noise band is two binomial standard errors (an independent formula: sqrt(p (1 - p) / n));
    a student above the teacher by more than it is flagged, below it is called a gap, inside it a match."""
    from mixa.quickstart import noise_points, verdict

    assert noise_points(90.0, 1000) == pytest.approx(200 * (0.9 * 0.1 / 1000) ** 0.5)
    assert noise_points(50.0, 400) == pytest.approx(5.0)
    noise = noise_points(90.0, 1000)  # 1.90 points
    assert "ABOVE" in verdict(+2.5, noise)
    assert "below the teacher" in verdict(-2.5, noise)
    assert "within noise" in verdict(+1.0, noise) and "within noise" in verdict(-1.0, noise)
