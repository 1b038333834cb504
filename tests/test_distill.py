"""mixa distill / mixa eval: loss maths, schedule, training, exact resume, torchrun, errors."""
import json
import math
import re
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mixa
from mixa.saved import WEIGHTS_NAME, is_model_dir
from mixa import metrics
from mixa.errors import UsageError
from mixa.cli import main
from mixa.distill import losses
from mixa.distill.evaluation import evaluate
from mixa.distill.optim import create_optimizer, create_scheduler, param_groups
from mixa.distill.step import DistillStep
from mixa.distill.teacher import build_teacher, recorded_original
from mixa.distill.train import distill
from mixa.models import create_model

ROOT = Path(__file__).resolve().parents[1]
BASE = "deit_tiny_patch16_224"
TINY = dict(depth=2, embed_dim=32, num_heads=2, img_size=32, patch_size=8, num_classes=4)
FAST = dict(recipe="tiny", progress=False, workers=0)


# ------------------------------------------------------------------------------------------ fixtures

def make_imagefolder(root: Path, classes=4, train=8, val=4, size=36, seed=0):
    """Classes differ in mean colour (learnable in a few steps), with per-pixel noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    palette = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (40, 200, 200)]
    for split, count in (("train", train), ("val", val)):
        for c in range(classes):
            d = root / split / f"class_{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.clip(np.array(palette[c]) + rng.normal(0, 30, (size, size, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from safetensors.torch import save_file
    import timm

    root = tmp_path_factory.mktemp("distill")
    make_imagefolder(root / "data")
    torch.manual_seed(1)
    save_file(timm.create_model(BASE, **TINY).state_dict(), str(root / "teacher.safetensors"))
    teacher = create_model(BASE, checkpoint=str(root / "teacher.safetensors"), **TINY)
    student = mixa.convert(teacher, keep=1, attn="rala", progress=False)
    with torch.no_grad():  # a student that differs from its teacher (a fresh conversion nearly equals it)
        student.head.weight.add_(0.5 * torch.randn_like(student.head.weight))
    mixa.save(student, root / "student")
    return root


# ------------------------------------------------------------------------------------------ loss maths

def test_cross_entropy_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    target = torch.tensor([0, 1])

    def logp(row, j):
        return row[j] - math.log(sum(math.exp(v) for v in row))

    rows = logits.tolist()
    plain = -(logp(rows[0], 0) + logp(rows[1], 1)) / 2
    assert losses.cross_entropy(logits, target).item() == pytest.approx(plain, rel=1e-6)
    eps = 0.1  # smoothed target: 1 - eps + eps/C on the label, eps/C elsewhere
    smooth = -sum(sum(((1 - eps) * (j == t) + eps / 3) * logp(r, j) for j in range(3))
                  for r, t in zip(rows, [0, 1])) / 2
    assert losses.cross_entropy(logits, target, smoothing=eps).item() == pytest.approx(smooth, rel=1e-6)
    soft = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.2, 0.8]])
    by_hand = -sum(sum(p * logp(r, j) for j, p in enumerate(s)) for r, s in zip(rows, soft.tolist())) / 2
    assert losses.cross_entropy(logits, soft).item() == pytest.approx(by_hand, rel=1e-6)


def test_kd_losses_match_hand_computation():
    s = torch.tensor([[1.0, 2.0, 0.0]])
    t = torch.tensor([[0.0, 3.0, 1.0]])
    T = 2.0

    def softmax(row):
        e = [math.exp(v / T) for v in row]
        return [v / sum(e) for v in e]

    ps, pt = softmax(s[0].tolist()), softmax(t[0].tolist())
    kl = sum(b * math.log(b / a) for a, b in zip(ps, pt)) * T * T
    assert losses.kd_loss(s, t, "soft", T).item() == pytest.approx(kl, rel=1e-6)
    # hard: cross-entropy against the teacher's argmax (class 1)
    hard = -(2.0 - math.log(math.exp(1) + math.exp(2) + 1))
    assert losses.kd_loss(s, t, "hard").item() == pytest.approx(hard, rel=1e-6)
    assert losses.kd_loss(t, t, "soft", T).item() == pytest.approx(0.0, abs=1e-7)


def test_distillation_loss_weights_and_two_heads():
    torch.manual_seed(0)
    cls, dist_head, teacher = torch.randn(3, 5), torch.randn(3, 5), torch.randn(3, 5)
    target = torch.tensor([1, 0, 4])
    w = 0.3
    single = losses.distillation_loss(cls, target, teacher, "soft", w, 1.0, 0.1)
    expected = (1 - w) * losses.cross_entropy(cls, target, 0.1) + w * losses.kd_loss(cls, teacher, "soft")
    assert single["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    pair = losses.distillation_loss((cls, dist_head), target, teacher, "hard", w, 1.0, 0.0)
    expected = (1 - w) * F.cross_entropy(cls, target) + w * F.cross_entropy(dist_head, teacher.argmax(-1))
    assert pair["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    none = losses.distillation_loss(cls, target, teacher, "none", w)
    assert none["loss"].item() == pytest.approx(F.cross_entropy(cls, target).item(), rel=1e-6)


def test_agreement_and_topk():
    reference = torch.tensor([[2.0, 0.0, 1.0], [0.0, 2.0, 1.0]])
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 1.0, 2.0]])
    a = metrics.agreement_sums(reference, logits)
    assert a["match"] == 1 and a["images"] == 2
    # KL(reference || logits) by hand
    def softmax(row):
        e = [math.exp(v) for v in row]
        return [v / sum(e) for v in e]
    kl = sum(sum(p * math.log(p / q) for p, q in zip(softmax(r), softmax(o)))
             for r, o in zip(reference.tolist(), logits.tolist()))
    assert a["kl"] == pytest.approx(kl, rel=1e-6)
    summary = metrics.agreement(reference, logits)
    assert summary["top1_agreement"] == 50.0 and summary["mean_kl"] == pytest.approx(kl / 2, rel=1e-6)
    hits = metrics.topk_hits(logits, torch.tensor([1, 0]), ks=(1, 2))
    assert hits[1] == 0 and hits[2] == 1
    assert metrics.topk_hits(logits, torch.tensor([1, 0]), ks=(1, 5))[5] == 2  # k capped at the classes


def test_conversion_report_uses_the_same_agreement():
    from mixa.conversion.report import model_agreement

    torch.manual_seed(0)
    a, b = torch.nn.Linear(6, 5).eval(), torch.nn.Linear(6, 5).eval()
    batches = [torch.randn(4, 6), torch.randn(3, 6)]
    with torch.no_grad():
        ref, out = torch.cat([a(x) for x in batches]), torch.cat([b(x) for x in batches])
    sums = metrics.agreement_sums(ref, out)
    report = model_agreement(a, b, batches)
    assert report["images"] == 7 and report["top1_agreement"] == pytest.approx(100 * sums["match"] / 7)
    assert report["mean_kl"] == pytest.approx(sums["kl"] / 7)


def test_lr_schedule_warmup_then_cosine():
    """timm's CosineLRScheduler, per optimiser step: linear warm-up, then cosine to min_lr."""
    settings = {"min_lr": 1e-5, "warmup_lr": 1e-6, "betas": (0.9, 0.999), "eps": 1e-8}
    optimizer = create_optimizer([torch.nn.Parameter(torch.zeros(1))], 1e-3, settings)
    scheduler = create_scheduler(optimizer, total_steps=110, warmup_steps=10, settings=settings)

    def lr_at(step):
        scheduler.step_update(step)
        return optimizer.param_groups[0]["lr"]

    assert lr_at(0) == pytest.approx(1e-6)
    assert lr_at(5) == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.5)
    assert lr_at(10) == pytest.approx(1e-3)
    assert lr_at(60) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))  # half way down the cosine
    assert lr_at(85) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * 0.75)))
    assert lr_at(110) == pytest.approx(1e-5)


def _groups(model, wd=0.05):
    names = {id(p): n for n, p in model.named_parameters()}
    by_decay = {g["weight_decay"]: {names[id(p)] for p in g["params"]} for g in param_groups(model, wd)}
    return by_decay.get(wd, set()), by_decay.get(0.0, set())


def test_no_weight_decay_on_norms_biases_tokens_and_gates():
    import timm
    from mixa.attention import MixAttention

    model = timm.create_model(BASE, **TINY)
    model.blocks[1].attn = MixAttention.from_timm(model.blocks[1].attn, "rala", num_prefix_tokens=1)
    decay, plain = _groups(model)
    assert {"pos_embed", "cls_token", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias",
            "blocks.1.attn.gate.scale", "blocks.1.attn.lepe.weight"} <= plain
    assert {"blocks.0.attn.qkv.weight", "blocks.1.attn.qkv.weight", "head.weight",
            "patch_embed.proj.weight"} <= decay
    assert decay | plain == {n for n, _ in model.named_parameters()} and not decay & plain


def test_ravlt_layer_scale_takes_no_weight_decay():
    """RAVLT declares its layer-scale gammas (4-d, so not caught by the 1-d rule) as no-decay keywords."""
    import timm

    model = timm.create_model("ravlt_t", embed_dims=(16, 32, 32, 32), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1),
                              head_dim=32, num_classes=3)
    decay, plain = _groups(model)
    gammas = {n for n, _ in model.named_parameters() if ".gamma_" in n}
    assert gammas and gammas <= plain and not gammas & decay
    assert {n for n, p in model.named_parameters() if p.ndim > 1 and n not in gammas} <= decay


def test_distilled_deit_heads_get_their_own_loss(tmp_path):
    """Class head learns from labels only, distillation head from the teacher only (kd_weight 1 / 0)."""
    import timm
    from mixa.distill.recipes import load_recipe

    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    teacher = timm.create_model(BASE, **TINY).eval()
    for weight, silent, active in ((1.0, "head", "head_dist"), (0.0, "head_dist", "head")):
        student = timm.create_model("deit_tiny_distilled_patch16_224", **TINY).train()
        settings = load_recipe("tiny", kd_weight=weight, clip_grad=None)
        step = DistillStep(student, teacher, settings, torch.device("cpu"), 1e-3, 10, 0)
        out = step.net(x)
        assert isinstance(out, tuple), "distilled training must return (cls, dist) logits"
        with torch.no_grad():
            t_logits = teacher(x)
        losses.distillation_loss(out, y, t_logits, "soft", weight)["loss"].backward()
        assert getattr(student, silent).weight.grad.abs().max() == 0
        assert getattr(student, active).weight.grad.abs().max() > 0


# ------------------------------------------------------------------------------------------ training

def test_training_lowers_loss_and_writes_a_loadable_run(world, tmp_path):
    from mixa.distill.data import val_loader

    student = mixa.load(world / "student")
    loader = val_loader(world / "data", student, batch_size=16, workers=0, split="train")
    images, target, _ = next(iter(loader))

    def loss_of(model):
        with torch.no_grad():
            return F.cross_entropy(model.eval()(images), target).item()

    before = loss_of(student)
    run = tmp_path / "run"
    result = distill(world / "student", world / "data", run, epochs=4, warmup_epochs=0, mixup=0.0, cutmix=0.0,
                     auto_augment=None, reprob=0.0, lr=3e-3, **FAST)
    after = loss_of(mixa.load(run / "last"))
    assert after < 0.8 * before, (before, after)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4] and result["epochs_done"] == 4
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert (run / "metrics.csv").read_text().splitlines()[0].startswith("epoch,step,train_loss")
    assert is_model_dir(run / "best") and (run / "last" / "train_state.pt").is_file()
    assert result["val_top1"] == rows[-1]["val_top1"] and 0 <= result["agreement_top1"] <= 100
    assert not list(run.glob(".*")), "no temporary directories left behind"


def _weights(directory):
    from safetensors.torch import load_file

    return load_file(str(directory / WEIGHTS_NAME))


def test_resume_is_bit_exact(world, tmp_path):
    """Stopped after epoch 1 and resumed to 2 == 2 epochs straight (RandAugment, erasing, Mixup/CutMix on)."""
    straight = tmp_path / "straight"
    distill(world / "student", world / "data", straight, epochs=2, **FAST)
    split = tmp_path / "split"
    distill(world / "student", world / "data", split, epochs=2, stop_after=1, **FAST)
    assert json.loads((split / "metrics.jsonl").read_text())["epoch"] == 1
    distill(world / "student", world / "data", split, resume=True, **FAST)
    a, b = _weights(straight / "last"), _weights(split / "last")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    sa = torch.load(straight / "last" / "train_state.pt", weights_only=True)
    sb = torch.load(split / "last" / "train_state.pt", weights_only=True)
    assert sa["step"] == sb["step"] and sa["epoch"] == sb["epoch"] == 2
    for k, v in sa["optimizer"]["state"].items():
        assert torch.equal(v["exp_avg_sq"], sb["optimizer"]["state"][k]["exp_avg_sq"])
    assert [r["train_loss"] for r in sa["metrics"]] == [r["train_loss"] for r in sb["metrics"]]
    # a different seed is not the same run (the comparison above can fail)
    other = tmp_path / "other"
    distill(world / "student", world / "data", other, epochs=1, seed=5, **FAST)
    assert not torch.equal(_weights(other / "last")["head.weight"], a["head.weight"])


def test_kill_inside_an_epoch_resumes_from_the_step_checkpoint(world, tmp_path, monkeypatch):
    """A run killed during step 3 of its first epoch resumes from the step-2 checkpoint and ends with the
    same weights as a run never interrupted (workers=0: the augmentation RNG is the restored one)."""
    straight = tmp_path / "straight"
    distill(world / "student", world / "data", straight, epochs=1, save_every_steps=2, **FAST)
    killed = tmp_path / "killed"
    original_step = DistillStep._optimizer_step

    def dying_step(self):
        if self.step == 2:
            raise KeyboardInterrupt  # the kill, after the checkpoint of step 2 was written
        original_step(self)

    monkeypatch.setattr(DistillStep, "_optimizer_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        distill(world / "student", world / "data", killed, epochs=1, save_every_steps=2, **FAST)
    monkeypatch.setattr(DistillStep, "_optimizer_step", original_step)
    state = torch.load(killed / "last" / "train_state.pt", weights_only=True)
    assert (state["epoch"], state["batch"], state["step"]) == (0, 2, 2)
    distill(world / "student", world / "data", killed, resume=True, **FAST)
    a, b = _weights(straight / "last"), _weights(killed / "last")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows_a = json.loads((straight / "metrics.jsonl").read_text())
    rows_b = json.loads((killed / "metrics.jsonl").read_text())
    assert rows_a["train_loss"] == pytest.approx(rows_b["train_loss"], rel=1e-6)


def test_stop_after_steps_stops_inside_an_epoch_and_resumes_exactly(world, tmp_path):
    """A run stopped every 3 optimiser steps (inside epochs and across their ends) and resumed each time ends
    with the weights and per-epoch metrics of a run never stopped; each stop leaves RUN/last at that step."""
    straight = tmp_path / "straight"
    distill(world / "student", world / "data", straight, epochs=2, batch_size=4, save_every_steps=0, **FAST)
    per_epoch = json.loads((straight / "run.json").read_text())["steps_per_epoch"]
    assert per_epoch % 3 and per_epoch > 3  # the stops fall inside epochs, and one epoch end is crossed
    split, stops = tmp_path / "split", []
    while True:
        result = distill(world / "student", world / "data", split, epochs=2, batch_size=4, save_every_steps=0,
                         resume=(split / "last").is_dir(), stop_after_steps=3, **FAST)
        stops.append(torch.load(split / "last" / "train_state.pt", weights_only=True)["step"])
        assert result["step"] == stops[-1]
        if stops[-1] >= 2 * per_epoch:
            break
    assert stops == list(range(3, 2 * per_epoch, 3)) + [2 * per_epoch]
    a, b = _weights(straight / "last"), _weights(split / "last")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows_a = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(line) for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_top1"] for r in rows_a] == [r["val_top1"] for r in rows_b]
    assert [r["train_loss"] for r in rows_a] == pytest.approx([r["train_loss"] for r in rows_b], rel=1e-6)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_stop_after_steps_rejects_bad_values(world, tmp_path, bad):
    with pytest.raises(UsageError, match="stop_after_steps must be a positive integer"):
        distill(world / "student", world / "data", tmp_path / "run", epochs=1, stop_after_steps=bad, **FAST)
    assert not (tmp_path / "run").exists()


def test_unreadable_images_are_skipped_and_counted(world, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(world / "data", data)
    (data / "train" / "class_0" / "broken.png").write_bytes(b"not an image at all")
    (data / "val" / "class_1" / "truncated.png").write_bytes((data / "val" / "class_1" / "0.png").read_bytes()[:40])
    result = distill(world / "student", data, tmp_path / "run", epochs=1, **FAST)
    assert result["epochs_done"] == 1
    # the train file is met once per epoch (>= 1 as a stand-in's skip), the val file exactly once
    assert result["skipped_images"] == 2
    plain = evaluate(world / "student", world / "data", batch_size=5, workers=0, progress=False)
    broken = evaluate(world / "student", data, batch_size=5, workers=0, progress=False)
    assert broken["skipped"] == 1 and broken["images"] == plain["images"] == 16  # stand-ins are not scored
    assert broken["top1"] == pytest.approx(plain["top1"])


def test_augmentation_errors_are_not_hidden(world):
    """A failing transform is a bug: it propagates instead of being counted as an unreadable image."""
    from mixa.data import SafeImageFolder

    def failing(image):
        raise ValueError("bits must be between or equal to 1 and 8")

    folder = SafeImageFolder(world / "data" / "train", transform=failing)
    with pytest.raises(ValueError, match="bits must be"):
        folder[0]


def test_posterize_matches_pillow_and_handles_zero_bits():
    from PIL import Image, ImageOps
    from mixa.distill.augment import posterize

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8))
    for bits in range(1, 9):
        assert np.array_equal(np.asarray(posterize(image, bits)), np.asarray(ImageOps.posterize(image, bits))), bits
    assert not np.asarray(posterize(image, 0)).any()  # 0 bits kept: black, as Pillow < 13 gave


def test_recipe_randaugment_runs_on_real_images():
    """The packaged recipe's RandAugment on real PIL images: every op at the strongest magnitude that
    m9-mstd0.5 reaches (10, where posterize keeps 0 bits and timm's own op fails on Pillow >= 13), then
    the whole training transform over many draws."""
    import random

    from PIL import Image
    from timm.data.auto_augment import RandAugment
    from mixa.distill.data import train_transform
    from mixa.distill.recipes import load_recipe

    settings = load_recipe("deit_s")
    assert settings["auto_augment"] == "rand-m9-mstd0.5-inc1"
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 40, 3), dtype=np.uint8))
              for i in range(4)]
    transform = train_transform(create_model(BASE, pretrained=False, **TINY), settings)
    rand_augment = next(t for t in transform.transforms if isinstance(t, RandAugment))
    names = {op.name for op in rand_augment.ops}
    assert "PosterizeIncreasing" in names and len(names) == 15
    for op in rand_augment.ops:
        op.prob, op.magnitude_std, op.magnitude = 1.0, 0.0, 10
        for image in images:
            out = op(image)
            assert out.size == image.size, op.name
            if op.name == "PosterizeIncreasing":
                assert not np.asarray(out).any()  # 4 - 4 * 10 / 10 = 0 bits kept
        op.prob, op.magnitude_std, op.magnitude = 0.5, 0.5, 9
    for i in range(600):  # about 1 draw in 500 reaches magnitude 10 for posterize
        random.seed(i)
        torch.manual_seed(i)
        assert transform(images[i % 4]).shape == (3, 32, 32)


def test_default_workers_never_exceed_the_cores(monkeypatch):
    from mixa.data import folder
    from mixa.distill.recipes import DEFAULTS, load_recipe

    assert DEFAULTS["workers"] == "auto" and all(load_recipe(r)["workers"] in ("auto", 0)
                                                 for r in ("deit_s", "deit_t", "swin_s", "swin_t", "tiny"))
    for cores, expected in ((1, 1), (2, 2), (16, 4)):
        monkeypatch.setattr(folder, "available_cores", lambda cores=cores: cores)
        assert folder.resolve_workers("auto") == expected
    assert folder.resolve_workers(3) == 3


def test_torchrun_two_processes_gloo(world, tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "mixa", "distill", "--model", str(world / "student"), "--data-dir", str(world / "data"),
           "--output", str(run), "--recipe", "tiny", "--epochs", "1", "--no-progress", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=110, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "worker" not in proc.stderr.lower(), proc.stderr[-3000:]  # no DataLoader worker-count warning
    assert proc.stdout.count("run: ") == 1, proc.stdout  # only rank 0 reports
    state = torch.load(run / "last" / "train_state.pt", weights_only=True)
    assert len(state["rng"]) == 2 and state["epoch"] == 1
    # global batch 8 over 2 processes = 4 each; 32 images -> 16 per process -> 4 steps
    assert state["step"] == 4
    assert json.loads((run / "run.json").read_text())["per_process_batch"] == 4
    assert sorted(p.name for p in run.iterdir()) == ["best", "last", "metrics.csv", "metrics.jsonl", "run.json"]
    assert is_model_dir(run / "last")


# ------------------------------------------------------------------------------------------ mixa eval

def test_eval_reports_accuracy_and_agreement(world, tmp_path, capsys):
    from mixa.distill.data import val_loader

    student = mixa.load(world / "student")
    loader = val_loader(world / "data", student, batch_size=5, workers=0)
    correct = total = 0
    with torch.no_grad():
        for images, target, _ in loader:
            correct += (student(images).argmax(-1) == target).sum().item()
            total += target.numel()
    result = evaluate(world / "student", world / "data", teacher=str(world / "student"), batch_size=7,
                      workers=0, progress=False)
    assert result["images"] == total == 16
    assert result["top1"] == pytest.approx(100.0 * correct / total)
    assert result["agreement_top1"] == 100.0 and result["mean_kl"] == pytest.approx(0.0, abs=1e-6)
    out = tmp_path / "eval.json"
    code = main(["eval", "--model", str(world / "student"), "--data-dir", str(world / "data"), "-j", "0",
                 "--json", str(out), "--no-progress"])  # default: agreement with the recorded original
    printed = capsys.readouterr().out
    assert code == 0 and "top-1 (%)" in printed and "agreement top-1 (%)" in printed
    saved = json.loads(out.read_text())
    assert saved["top1"] == pytest.approx(result["top1"]) and 0 <= saved["agreement_top1"] <= 100
    assert saved["agreement_top1"] < 100.0  # the recorded original differs from this student
    code = main(["eval", "-m", str(world / "student"), "--data-dir", str(world / "data"), "-j", "0",
                 "--teacher", "none", "--no-progress"])
    assert code == 0 and "agreement" not in capsys.readouterr().out


def test_eval_without_a_buildable_original_still_reports_accuracy(world, tmp_path, capsys):
    """The original's checkpoint is gone: top-1/top-5 still, and one line saying why there is no agreement."""
    import shutil

    ckpt = tmp_path / "original.safetensors"
    shutil.copy(world / "teacher.safetensors", ckpt)
    original = create_model(BASE, checkpoint=str(ckpt), **TINY)
    mixa.save(mixa.convert(original, keep=1, attn="relu", progress=False), tmp_path / "student")
    ckpt.unlink()
    code = main(["eval", "-m", str(tmp_path / "student"), "--data-dir", str(world / "data"), "-j", "0",
                 "--num-images", "10", "--no-progress", "--json", str(tmp_path / "eval.json")])
    out = capsys.readouterr().out
    assert code == 0 and "top-1 (%)" in out and "agreement top-1" not in out
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["images"] == 10 and "agreement_top1" not in saved and saved["agreement_missing"]
    why = [line for line in out.splitlines() if line.startswith("no agreement:")]
    assert len(why) == 1 and "checkpoint not found" in why[0], out


def test_eval_takes_a_timm_name_with_a_checkpoint(world, capsys):
    code = main(["eval", "-m", BASE, "--checkpoint", str(world / "teacher.safetensors"),
                 *[f"--model-arg={k}={v}" for k, v in TINY.items()], "--data-dir", str(world / "data"),
                 "-j", "0", "--no-progress"])
    out = capsys.readouterr().out
    # the recorded original of a model built by name is that model: full agreement
    assert code == 0 and re.search(r"agreement top-1 \(%\) +100\.0000\n", out), out


# ------------------------------------------------------------------------------------------ errors

def _cli(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


def test_errors_are_one_line_and_lose_nothing(world, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True, raising=False)
    student, data = str(world / "student"), str(world / "data")
    common = ["--recipe", "tiny", "--no-progress", "--epochs", "1"]

    def fails(expect, *argv, code=None):
        got, err = _cli(capsys, "distill", *common, *argv)
        assert got != 0 and (code is None or got == code), err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err and expect in lines[0], err

    run = str(tmp_path / "run")
    fails("data directory not found", "--model", student, "--data-dir", str(tmp_path / "nope"), "--output", run)
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "val").mkdir()
    fails("no usable ImageFolder", "--model", student, "--data-dir", str(tmp_path / "empty"), "--output", run)
    three = make_imagefolder(tmp_path / "three", classes=3, train=2, val=1)
    fails("3 class folders but the model has 4", "--model", student, "--data-dir", str(three), "--output", run)
    fails("not a saved mixa model directory", "--model", str(world / "data"), "--data-dir", data, "--output", run)
    fails("could not get pretrained weights", "--model", student, "--data-dir", data, "--output", run,
          "--teacher", "deit_s")
    fails("unknown recipe setting", "--model", student, "--data-dir", data, "--output", run, "--recipe",
          str(_write(tmp_path / "bad.yaml", "epochs: 1\nlearning_rate: 3\n")))
    fails("fp16 autocast needs a CUDA device", "--model", student, "--data-dir", data, "--output", run,
          "--amp", "fp16", "--device", "cpu", code=2)
    fails("nothing to resume", "--model", student, "--data-dir", data, "--output", run, "--resume")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    fails("is not empty and holds no run", "--model", student, "--data-dir", data, "--output",
          str(tmp_path / "full"))
    assert not (tmp_path / "run").exists(), "a failed start writes nothing"

    # an existing run is never overwritten, and a failing resume leaves it untouched
    assert _cli(capsys, "distill", "--model", student, "--data-dir", data, "--output", run, *common)[0] == 0
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    fails("already holds a distill run", "--model", student, "--data-dir", data, "--output", run)
    fails("data directory not found", "--model", student, "--data-dir", str(tmp_path / "nope"), "--output", run,
          "--resume")
    after = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert before == after


def _write(path, text):
    path.write_text(text)
    return path


def test_checkpoint_switch_recovers_from_a_kill_between_renames(world, tmp_path):
    from mixa.distill.checkpoint import recover_checkpoint, save_checkpoint

    model = mixa.load(world / "student")
    save_checkpoint(tmp_path, "last", model, {"epoch": 0})
    # simulate a kill after `last` was moved aside and before the new one was renamed in
    os.replace(tmp_path / "last", tmp_path / ".last.old")
    (tmp_path / ".last.tmp.abc").mkdir()
    assert recover_checkpoint(tmp_path, "last").is_dir()
    assert is_model_dir(tmp_path / "last") and not (tmp_path / ".last.tmp.abc").exists()


def test_default_teacher_is_the_recorded_original(tmp_path):
    """A student converted with another patch size (16 -> 8 here) still gets the original as teacher."""
    kwargs = {k: v for k, v in TINY.items() if k != "patch_size"}  # patch 16 on 32 px
    original = create_model(BASE, pretrained=False, **kwargs)
    student = mixa.convert(original, keep=1, attn="stella", patch_size=8, progress=False)
    mixa.save(student, tmp_path / "s")
    teacher = build_teacher(None, recorded_original(tmp_path / "s"), checkpoint=None)
    assert tuple(student.patch_embed.patch_size) == (8, 8) and tuple(teacher.patch_embed.patch_size) == (16, 16)
    assert tuple(teacher.patch_embed.img_size) == tuple(student.patch_embed.img_size) == (32, 32)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_default_teacher_loads_the_recorded_checkpoint(world):
    teacher = build_teacher(None, recorded_original(world / "student"))
    from safetensors.torch import load_file

    ref = load_file(str(world / "teacher.safetensors"))
    assert all(torch.equal(v, ref[k]) for k, v in teacher.state_dict().items())
