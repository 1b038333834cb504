"""mixa distill: transfer first by default, the stage after it (low lr + hidden states), short-run schedules."""
import json
import logging
import math

import pytest
import torch

import mixa
from mixa.cli import main
from mixa.distill import losses
from mixa.distill.optim import create_optimizer, create_scheduler
from mixa.distill.recipes import (AFTER_TRANSFER_AUTO, DEFAULTS, TRANSFER_AUTO, auto_lr_scale, auto_transfer_steps,
                                  auto_transfer, load_recipe, probe_keeps, probe_steps, transfer_tier, warmup_steps)
from mixa.distill.train import distill

from test_distill import BASE, TINY, _weights, world  # noqa: F401  (the shared fixture)

QUIET = dict(progress=False, workers=0)
# the tiny recipe with the stage after transfer's own settings left at their defaults
STAGE = dict(recipe="tiny", epochs=1, **QUIET)


# ------------------------------------------------------------------------------------------ short runs

def test_a_short_run_warms_up_for_a_fraction_of_it_then_anneals():
    """The deit recipes warm up for 10 of 150 epochs; cut to 3 epochs, the warm-up is 10% of the run (not
    the whole run, which left the lr climbing until the last step)."""
    long = load_recipe("deit_t")
    assert warmup_steps(long, 100) == 10 * 100  # 10 epochs = 6.7% of 150: untouched
    short = load_recipe("deit_t", epochs=3)
    assert warmup_steps(short, 10) == 3  # 10% of 30 steps
    settings = {**short, "warmup_lr": 1e-6, "min_lr": 1e-6}
    optimizer = create_optimizer([torch.nn.Parameter(torch.zeros(1))], 1e-4, settings)
    scheduler = create_scheduler(optimizer, total_steps=30, warmup_steps=warmup_steps(short, 10), settings=settings)
    lrs = []
    for step in range(30):
        scheduler.step_update(step)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert max(lrs) == pytest.approx(1e-4) and lrs.index(max(lrs)) == 3  # the peak is reached
    assert lrs[-1] < 0.05 * 1e-4  # and the cosine anneals it by the end


def test_timms_cosine_warning_does_not_reach_the_user(caplog):
    settings = {"min_lr": 1e-6, "warmup_lr": 1e-6}
    optimizer = create_optimizer([torch.nn.Parameter(torch.zeros(1))], 1e-3, {**settings, "betas": (0.9, 0.999),
                                                                               "eps": 1e-8})
    with caplog.at_level(logging.WARNING):
        create_scheduler(optimizer, total_steps=2, warmup_steps=1, settings=settings)  # t_initial = 1
    assert "Cosine annealing" not in caplog.text


def test_distill_cut_short_reaches_its_peak_lr_and_says_what_the_recipe_does(world, tmp_path, capsys, caplog):  # noqa: F811
    """The default recipe with --epochs 2 on 32 images: on main the whole run was warm-up (lr still
    climbing at the end) and timm's warning printed. Now the lr peaks early and anneals, and the start
    says what the recipe does, that its augmentation is made for large data, and what to use instead."""
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        distill(world / "student", world / "data", run, epochs=2, batch_size=8, lr=1e-2, transfer_steps=0, **QUIET)
    out = capsys.readouterr().out
    assert "Cosine annealing" not in caplog.text + out
    info = json.loads((run / "run.json").read_text())
    peak = info["lr_scaled"]
    assert peak == pytest.approx(1e-2 * 8 / DEFAULTS["lr_base_batch"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["lr"] < 0.2 * peak  # annealed by the end, not still warming up
    assert "warm-up 0 step(s)" in out and "capped at 10% of the run" in out
    assert "made for ImageNet-scale data" in out and "--recipe small" in out
    # with the recipe's own lr, the batch rule takes it to min_lr: the start says so
    quiet = tmp_path / "quiet"
    distill(world / "student", world / "data", quiet, epochs=1, batch_size=8, transfer_steps=0, **QUIET)
    assert "the schedule barely moves" in capsys.readouterr().out


def test_the_small_recipe_is_the_quick_starts():
    from mixa.quickstart import RECIPE

    small = load_recipe("small")
    assert {k: small[k] for k in RECIPE if k not in ("epochs", "workers")} == \
        {k: v for k, v in RECIPE.items() if k not in ("epochs", "workers")}


# ------------------------------------------------------------------------------------------ hidden states

def test_hidden_state_loss_is_the_mean_relative_error():
    s = [torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 3.0]])]
    t = [torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, 0.0]])]
    # block 1: (0 + 1) / 2; block 2: (4 + 9) / 4
    assert losses.hidden_state_loss(s, t).item() == pytest.approx((0.5 + 13 / 4) / 2)
    parts = losses.distillation_loss(torch.zeros(1, 2), torch.tensor([0]), torch.zeros(1, 2), hidden=(s, t),
                                     hidden_weight=2.0)
    assert parts["loss"].item() == pytest.approx(0.5 * math.log(2) + 2.0 * (0.5 + 13 / 4) / 2)


# ------------------------------------------------------------------------------------------ transfer first

def test_distill_transfers_first_by_default_for_a_converted_student(world, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setitem(TRANSFER_AUTO, "min_steps", 5)  # (100 by default: a short test)
    monkeypatch.setitem(TRANSFER_AUTO, "short_disagreement", 0.0)  # the long transfer, however far the student
    monkeypatch.setitem(TRANSFER_AUTO, "kd_disagreement", 0.0)
    run = tmp_path / "run"
    distill(world / "student", world / "data", run, recipe="small", epochs=1, batch_size=8, **QUIET)
    info = json.loads((run / "run.json").read_text())
    settings = info["settings"]
    assert settings["transfer_steps"] == auto_transfer_steps(32, 8) == 4 * 32 // 8
    # the rule read the converted student's agreement with the teacher on the training images, measured
    # independently here
    measured = mixa.distill.evaluate(world / "student", world / "data" / "train", teacher="auto", workers=0,
                                     progress=False)
    assert info["transfer_steps_auto"]["agreement_top1"] == pytest.approx(measured["agreement_top1"], abs=0.01)
    assert info["transfer_steps_auto"]["steps"] == 16 and not settings["stage_from_converted"]
    stage = json.loads((run / "transfer" / "metrics.jsonl").read_text().splitlines()[-1])
    assert stage["step"] == 16
    # an unconverted model has nothing to transfer: no stage
    plain = tmp_path / "plain"
    mixa.save(_teacher(world), tmp_path / "teacher")
    distill(tmp_path / "teacher", world / "data", plain, recipe="small", epochs=1, batch_size=8, **QUIET)
    assert json.loads((plain / "run.json").read_text())["settings"]["transfer_steps"] == 0
    assert not (plain / "transfer").exists()


def _teacher(world):  # noqa: F811
    from mixa.models import create_model

    return create_model(BASE, checkpoint=str(world / "teacher.safetensors"), **TINY)


def test_auto_transfer_steps_scale_with_the_data():
    assert auto_transfer_steps(800, 64) == 100           # the proxy: 4 passes would be 50, too few
    assert auto_transfer_steps(3000, 64) == 188          # the quick start: 4 passes
    assert auto_transfer_steps(100, 64) == TRANSFER_AUTO["min_steps"]
    assert auto_transfer_steps(1_281_167, 512) == TRANSFER_AUTO["max_steps"]


def test_auto_transfer_steps_follow_the_converted_students_agreement():
    near, short = TRANSFER_AUTO["near_disagreement"], TRANSFER_AUTO["short_disagreement"]
    kd = TRANSFER_AUTO["kd_disagreement"]
    assert (near, short, kd, TRANSFER_AUTO["short_steps"]) == (5.0, 15.0, 50.0, 4)
    assert (TRANSFER_AUTO["between_batch"], TRANSFER_AUTO["between_epochs"]) == (8, 1.0)
    # the proxy: 800 images at batch 64, KD for 3 epochs of 12 steps (2304 images); the long transfer is 100
    # steps, 6400 images: dearer than the run's KD; the between transfer, one pass at batch 8, 800 images, is not
    proxy = dict(train_images=800, batch_size=64, kd_images=3 * 12 * 64)
    cases = [(100.0, "near", 0, 64), (100.0 - near + 0.01, "near", 0, 64),           # near the teacher: none
             (100.0 - near, "short", 4, 64), (100.0 - short + 0.01, "short", 4, 64),  # closer than `short`: 4 steps
             (100.0 - short, "between", 100, 8), (100.0 - kd + 0.01, "between", 100, 8),  # between: one pass at 8
             (100.0 - kd, "long", 100, 64), (14.8, "long", 100, 64), (None, "long", 100, 64)]  # farther: the long one
    for agreement, tier, steps, batch in cases:
        assert auto_transfer(agreement=agreement, **proxy) == (tier, steps, batch), agreement
        assert transfer_tier(agreement, long_dearer=True, between_dearer=False) == tier
    # between, in a run whose KD processes at least the long transfer's images: the long transfer (probed)
    assert auto_transfer(800, 64, agreement=70.0, kd_images=6400) == ("long", 100, 64)
    assert auto_transfer(800, 64, agreement=70.0, kd_images=6399) == ("between", 100, 8)
    # ... fewer than the between transfer's: plain KD
    assert auto_transfer(800, 64, agreement=70.0, kd_images=800) == ("between", 100, 8)
    assert auto_transfer(800, 64, agreement=70.0, kd_images=799) == ("kd", 0, 64)
    assert transfer_tier(30.0, long_dearer=True, between_dearer=True) == "long"  # far: whatever the run's length
    assert auto_transfer(1_281_167, 512, agreement=70.0, kd_images=30 * 1_281_167) == ("long", 2000, 512)  # ImageNet
    assert auto_transfer_steps(800, 64, agreement=70.0) == 100  # KD images not given: as many as it takes
    # a transfer batch the user gives replaces both tiers' (the between transfer is still one pass)
    assert auto_transfer(800, 64, agreement=70.0, kd_images=2304, transfer_batch_size=4) == ("between", 200, 4)
    assert auto_transfer(800, 64, agreement=30.0, transfer_batch_size=4) == ("long", 800, 4)


def test_a_student_between_short_and_far_gets_plain_kd_when_the_transfer_costs_more(world, tmp_path, monkeypatch):  # noqa: F811
    """The "kd" tier of transfer_steps auto: no RUN/transfer, not the stage (the recipe's lr, no converted
    RUN/best), bit for bit the run with the transfer stage off; run.json says which tier and why. The same
    student in a run long enough for the between transfer gets it, at its batch."""
    monkeypatch.setitem(TRANSFER_AUTO, "near_disagreement", 0.0)
    monkeypatch.setitem(TRANSFER_AUTO, "short_disagreement", 0.0)
    monkeypatch.setitem(TRANSFER_AUTO, "kd_disagreement", 101.0)  # every student is between
    monkeypatch.setitem(TRANSFER_AUTO, "between_batch", 2)
    run = tmp_path / "kd"
    result = distill(world / "student", world / "data", run, transfer_steps="auto", **STAGE)
    info = json.loads((run / "run.json").read_text())
    auto = info["transfer_steps_auto"]
    # 32 images at batch 8, one epoch: 32 KD images; the long transfer: min_steps (100) x 8, the between one
    # min_steps x 2
    assert (auto["tier"], auto["steps"], auto["kd_images"]) == ("kd", 0, 32)
    assert (auto["long_transfer_images"], auto["between_transfer_images"]) == (800, 200)
    assert info["settings"]["transfer_steps"] == 0 and not info["settings"]["stage_from_converted"]
    assert not (run / "transfer").exists() and "after_transfer" not in info and result["best_epoch"] == 1
    assert info["lr_scaled"] == pytest.approx(load_recipe("tiny")["lr"])
    by_hand = tmp_path / "by_hand"
    distill(world / "student", world / "data", by_hand, transfer_steps=0, **STAGE)
    a, b = _weights(run / "last"), _weights(by_hand / "last")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the counter-case: the between transfer, one pass in 16 steps of 2 images (32 images), costs no more than
    # the run's KD (the long one, 16 steps of 8, would): it runs, at its own batch, not probed, and is the
    # transfer given by hand at that batch
    monkeypatch.setitem(TRANSFER_AUTO, "min_steps", 1)
    cheap = tmp_path / "cheap"
    distill(world / "student", world / "data", cheap, transfer_steps="auto", stop_after=0, **STAGE)
    info = json.loads((cheap / "run.json").read_text())
    auto = info["transfer_steps_auto"]
    assert (auto["tier"], auto["steps"], auto["between_transfer_images"], auto["probe_steps"]) == ("between", 16, 32, 0)
    assert auto["long_transfer_images"] == 128
    assert info["settings"]["transfer_batch_size"] == 2
    by_hand = tmp_path / "cheap_by_hand"
    distill(world / "student", world / "data", by_hand, transfer_steps=16, transfer_batch_size=2, stop_after=0,
            **STAGE)
    a, b = _weights(cheap / "transfer" / "last"), _weights(by_hand / "transfer" / "last")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_long_transfer_of_a_student_between_is_probed_after_a_quarter():
    assert (TRANSFER_AUTO["probe_fraction"], TRANSFER_AUTO["probe_disagreement"]) == (0.25, 6.0)
    kd = TRANSFER_AUTO["kd_disagreement"]
    assert probe_steps("long", 70.0, 100) == 25                      # the proxy's rala k = 0 (29-34%)
    assert probe_steps("long", 100.0 - kd + 0.01, 100) == 25         # still between
    assert probe_steps("long", 100.0 - kd, 100) == 0                 # far: KD alone is no alternative
    assert probe_steps("long", None, 100) == 0                       # not measured: the long transfer
    assert probe_steps("long", 70.0, 2000) == 500                    # ImageNet's long transfer
    assert probe_steps("long", 70.0, 2) == 1 and probe_steps("long", 70.0, 1) == 0
    assert all(probe_steps(tier, 70.0, 100) == 0 for tier in ("near", "short", "kd"))
    # the proxy's rala k = 0 after 25 steps (87.1-91.0%) stops; rala, stella, hedgehog k = 2 (97.3-99.6%) go on
    assert probe_keeps(94.01) and not probe_keeps(94.0) and not probe_keeps(91.0) and probe_keeps(97.3)


def _probed(monkeypatch, keeps: bool):
    """Every student between short and far, in a run whose KD (32 images) pays for a 4-step long transfer
    (32 images), probed after 1 step; the probe keeps the transfer or stops it, whatever it measures."""
    monkeypatch.setitem(TRANSFER_AUTO, "near_disagreement", 0.0)
    monkeypatch.setitem(TRANSFER_AUTO, "short_disagreement", 0.0)
    monkeypatch.setitem(TRANSFER_AUTO, "kd_disagreement", 101.0)
    monkeypatch.setitem(TRANSFER_AUTO, "epochs", 1.0)
    monkeypatch.setitem(TRANSFER_AUTO, "min_steps", 4)
    monkeypatch.setitem(TRANSFER_AUTO, "probe_disagreement", 101.0 if keeps else 0.0)


def _last_step(stage):
    return json.loads((stage / "metrics.jsonl").read_text().splitlines()[-1])["step"]


def test_a_probe_that_finds_the_transfer_behind_stops_it_for_plain_kd(world, tmp_path, monkeypatch):  # noqa: F811
    """The probe stops the transfer: run.json says what it measured (the partly transferred student's
    agreement, measured here independently), RUN/transfer keeps the probe's step, and the run is bit for bit
    the one with the transfer stage off; a run killed between the probe's steps and its verdict resumes to
    the same weights without stepping the transfer again."""
    _probed(monkeypatch, keeps=False)
    run = tmp_path / "probed"
    distill(world / "student", world / "data", run, transfer_steps="auto", **STAGE)
    info = json.loads((run / "run.json").read_text())
    auto = info["transfer_steps_auto"]
    assert (auto["tier"], auto["steps"], auto["probe_steps"]) == ("long", 4, 1)
    assert auto["probe"]["kept"] is False and auto["probe"]["steps"] == 1
    assert info["settings"]["transfer_steps"] == 0 and _last_step(run / "transfer") == 1
    measured = mixa.distill.evaluate(run / "transfer" / "last", world / "data" / "train", teacher="auto",
                                     workers=0, progress=False)
    assert auto["probe"]["agreement_top1"] == pytest.approx(measured["agreement_top1"], abs=0.01)
    assert "after_transfer" not in info and info["lr_scaled"] == pytest.approx(load_recipe("tiny")["lr"])
    by_hand = tmp_path / "by_hand"
    distill(world / "student", world / "data", by_hand, transfer_steps=0, **STAGE)
    a, b = _weights(run / "last"), _weights(by_hand / "last")
    assert all(torch.equal(a[k], b[k]) for k in a)

    import mixa.distill.train as train

    def killed(agreement):
        raise KeyboardInterrupt

    killed_run = tmp_path / "killed"
    with monkeypatch.context() as m:
        m.setattr(train, "probe_keeps", killed)
        with pytest.raises(KeyboardInterrupt):
            distill(world / "student", world / "data", killed_run, transfer_steps="auto", **STAGE)
    assert "probe" not in json.loads((killed_run / "run.json").read_text())["transfer_steps_auto"]
    distill(world / "student", world / "data", killed_run, resume=True, **STAGE)
    assert _last_step(killed_run / "transfer") == 1
    assert json.loads((killed_run / "run.json").read_text())["transfer_steps_auto"] == auto
    c = _weights(killed_run / "last")
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_a_probe_that_keeps_the_transfer_changes_nothing(world, tmp_path, monkeypatch):  # noqa: F811
    """The probe keeps the transfer: the run is bit for bit the one given the same transfer by hand."""
    _probed(monkeypatch, keeps=True)
    run = tmp_path / "probed"
    distill(world / "student", world / "data", run, transfer_steps="auto", **STAGE)
    info = json.loads((run / "run.json").read_text())
    assert info["transfer_steps_auto"]["probe"]["kept"] is True and info["transfer_steps_auto"]["probe_steps"] == 1
    assert info["settings"]["transfer_steps"] == 4 and _last_step(run / "transfer") == 4
    by_hand = tmp_path / "by_hand"
    distill(world / "student", world / "data", by_hand, transfer_steps=4, **STAGE)
    assert "transfer_steps_auto" not in json.loads((by_hand / "run.json").read_text())
    a, b = _weights(run / "last"), _weights(by_hand / "last")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_converted_student_near_the_teacher_gets_the_stage_without_transfer(world, tmp_path, monkeypatch):  # noqa: F811
    """transfer_steps auto for a student near the teacher: no RUN/transfer, KD at lr x near_scale from the
    converted weights (bit for bit the run started by hand at that lr), the converted student is RUN/best
    until an epoch clearly beats it, and a stopped run resumes exactly."""
    monkeypatch.setitem(TRANSFER_AUTO, "near_disagreement", 101.0)  # every student is near
    monkeypatch.setitem(AFTER_TRANSFER_AUTO, "full_lr_disagreement", 101.0)  # ... and gets the near lr
    stage = {**STAGE, "epochs": 2}
    staged = tmp_path / "staged"
    result = distill(world / "student", world / "data", staged, transfer_steps="auto", **stage)
    info = json.loads((staged / "run.json").read_text())
    assert info["settings"]["transfer_steps"] == 0 and info["transfer_steps_auto"]["steps"] == 0
    assert info["settings"]["stage_from_converted"] and not (staged / "transfer").exists()
    scale = AFTER_TRANSFER_AUTO["near_scale"]
    assert info["settings"]["after_transfer_lr_scale"] == scale
    assert info["lr_scaled"] == pytest.approx(load_recipe("tiny")["lr"] * scale)
    converted = mixa.distill.evaluate(world / "student", world / "data", workers=0, progress=False)
    assert info["after_transfer"]["top1"] == pytest.approx(converted["top1"])
    rows = [json.loads(line) for line in (staged / "metrics.jsonl").read_text().splitlines()]
    if result["best_epoch"] == 0:  # no epoch clearly above the converted student: RUN/best is it
        assert all(torch.equal(a, b) for a, b in zip(_weights(staged / "best").values(),
                                                     _weights(world / "student").values()))
    else:
        assert rows[result["best_epoch"] - 1]["val_top1"] > info["after_transfer"]["top1"]
    by_hand = tmp_path / "by_hand"
    distill(world / "student", world / "data", by_hand, transfer_steps=0, lr=info["lr_scaled"], **stage)
    a, b = _weights(staged / "last"), _weights(by_hand / "last")
    assert all(torch.equal(a[k], b[k]) for k in a)
    split = tmp_path / "split"
    distill(world / "student", world / "data", split, transfer_steps="auto", stop_after=1, **stage)
    distill(world / "student", world / "data", split, resume=True, **stage)
    c = _weights(split / "last")
    assert all(torch.equal(a[k], c[k]) for k in a)
    resumed = json.loads((split / "run.json").read_text())
    assert resumed["transfer_steps_auto"] == info["transfer_steps_auto"]  # what the first call recorded stays
    # the counter-case: the same student, not near, gets the recipe's lr
    monkeypatch.setitem(TRANSFER_AUTO, "near_disagreement", 0.0)
    monkeypatch.setitem(TRANSFER_AUTO, "short_disagreement", 101.0)
    short = tmp_path / "short"
    distill(world / "student", world / "data", short, transfer_steps="auto", stop_after=0, **stage)
    info = json.loads((short / "run.json").read_text())
    assert info["settings"]["transfer_steps"] == TRANSFER_AUTO["short_steps"] and (short / "transfer").is_dir()
    assert not info["settings"]["stage_from_converted"]


def test_the_stage_after_transfer_starts_from_the_transferred_weights(world, tmp_path):  # noqa: F811
    """distill with its transfer stage == transfer, then distill of the transferred model with the stage's
    settings spelled out (lr x after_transfer_lr_scale, hidden_weight): bit for bit."""
    staged = tmp_path / "staged"
    distill(world / "student", world / "data", staged, transfer_steps=3, after_transfer_lr_scale=0.2,
            after_transfer_hidden_weight=1.0, **STAGE)
    stage_lr = load_recipe("tiny")["lr"] * 0.2
    by_hand = tmp_path / "by_hand"
    distill(staged / "transfer", world / "data", by_hand, transfer_steps=0, lr=stage_lr, hidden_weight=1.0, **STAGE)
    a, b = _weights(staged / "last"), _weights(by_hand / "last")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # ... and the stage did change the transferred weights (the comparison can fail)
    t = _weights(staged / "transfer")
    assert not all(torch.equal(a[k], t[k]) for k in a)
    row = json.loads((staged / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["train_hidden"] > 0


def test_the_transfer_stage_runs_at_its_own_batch(world, tmp_path):  # noqa: F811
    """transfer_batch_size: distill's transfer stage is mixa transfer at that batch, bit for bit, and not the
    one at the recipe's batch (which the comparison would also pass if the setting were ignored: checked)."""
    from mixa.transfer import transfer

    run = tmp_path / "run"
    distill(world / "student", world / "data", run, transfer_steps=3, transfer_batch_size=2, stop_after=0, **STAGE)
    settings = json.loads((run / "transfer" / "run.json").read_text())["settings"]
    assert settings["batch_size"] == 2 and settings["steps"] == 3
    seed = load_recipe("tiny")["seed"]
    for batch, same in ((2, True), (load_recipe("tiny")["batch_size"], False)):
        by_hand = tmp_path / f"by_hand{batch}"
        transfer(world / "student", world / "data", by_hand, steps=3, batch_size=batch, seed=seed, workers=0,
                 amp=load_recipe("tiny")["amp"], progress=False)
        a, b = _weights(run / "transfer" / "last"), _weights(by_hand / "last")
        assert all(torch.equal(a[k], b[k]) for k in a) == same


def test_auto_lr_scale_threshold():
    full = AFTER_TRANSFER_AUTO["full_lr_disagreement"]
    assert full == 15.0 and AFTER_TRANSFER_AUTO["near_scale"] == 0.2
    # far: the recipe's lr (rala k = 0 after a transfer that left it at 72.5% agreement)
    assert auto_lr_scale(100.0 - full) == 1.0 and auto_lr_scale(72.5) == 1.0 and auto_lr_scale(0.0) == 1.0
    # closer: a fifth of it (rala k = 0 after the between transfer, 90.2-92.6%; stella k = 0, 87.9%; relu, 97%)
    for agreement in (100.0 - full + 0.01, 87.9, 90.2, 92.6, 97.0, 100.0):
        assert auto_lr_scale(agreement) == 0.2, agreement


@pytest.mark.parametrize("near", [True, False])
def test_auto_lr_scale_is_measured_on_the_transferred_student(near, world, tmp_path, monkeypatch):  # noqa: F811
    """after_transfer_lr_scale "auto" (the default): the agreement run.json records is the transferred
    model's on the first training images (mixa.distill.evaluate, independently), the scale follows the
    threshold, and the stage is the run started by hand from the transferred model at that lr."""
    # a threshold no agreement reaches (or every one does): that branch, whatever the tiny student's agreement
    monkeypatch.setitem(AFTER_TRANSFER_AUTO, "full_lr_disagreement", 101.0 if near else 0.0)
    scale = AFTER_TRANSFER_AUTO["near_scale"] if near else 1.0
    monkeypatch.setitem(AFTER_TRANSFER_AUTO, "images", 16)
    staged = tmp_path / "staged"
    distill(world / "student", world / "data", staged, transfer_steps=3, **STAGE)
    info = json.loads((staged / "run.json").read_text())
    measured = mixa.distill.evaluate(staged / "transfer", world / "data" / "train", teacher="auto", max_images=16,
                                     workers=0, progress=False)
    assert info["after_transfer_lr_scale_auto"]["agreement_top1"] == pytest.approx(measured["agreement_top1"], abs=0.01)
    assert info["settings"]["after_transfer_lr_scale"] == scale
    assert info["lr_scaled"] == pytest.approx(load_recipe("tiny")["lr"] * scale)
    by_hand = tmp_path / "by_hand"
    distill(staged / "transfer", world / "data", by_hand, transfer_steps=0, lr=info["lr_scaled"], **STAGE)
    a, b = _weights(staged / "last"), _weights(by_hand / "last")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _clearly_above(top1, reference, n):
    """top1 - reference above one standard error of the difference of two binomial rates on n images."""
    p, q = top1 / 100, reference / 100
    floor = 0.25 / n
    return top1 - reference > 100 * ((max(p * (1 - p), floor) + max(q * (1 - q), floor)) / n) ** 0.5


def test_clearly_above_is_one_standard_error_of_the_difference():
    from mixa.metrics import clearly_above

    # 99.4 vs 99.8 on 1000 images: sqrt(0.994 * 0.006 + 0.998 * 0.002) / sqrt(1000) = 0.282 points
    assert clearly_above(99.8, 99.4, 1000) and not clearly_above(99.6, 99.4, 1000)
    assert clearly_above(99.6, 99.4, 1000, standard_errors=0.5)
    assert not clearly_above(100.0, 100.0, 1000) and not clearly_above(90.0, 91.0, 1000)
    for top1, ref, n in ((99.2, 98.5, 1000), (97.8, 93.2, 1000), (60.0, 50.0, 64), (100.0, 99.9, 4000)):
        assert clearly_above(top1, ref, n) == _clearly_above(top1, ref, n)


def test_the_transferred_student_stays_best_until_a_kd_epoch_beats_it(world, tmp_path):  # noqa: F811
    """RUN/best starts as the transferred student, scored on val (checked against mixa.distill.evaluate);
    a KD epoch replaces it only with a val top-1 higher by more than one standard error of the difference.
    With a vanishing KD lr nothing beats it: RUN/best is the transferred model bit for bit while RUN/last
    has moved."""
    for name, scale in (("kd", 1.0), ("still", 1e-9)):
        run = tmp_path / name
        result = distill(world / "student", world / "data", run, transfer_steps=3, after_transfer_lr_scale=scale,
                         **STAGE)
        after = json.loads((run / "run.json").read_text())["after_transfer"]
        measured = mixa.distill.evaluate(run / "transfer", world / "data" / "val", teacher="auto", workers=0,
                                         progress=False)
        assert after["top1"] == pytest.approx(measured["top1"]) and after["agreement_top1"] == pytest.approx(
            measured["agreement_top1"])
        epoch = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["val_top1"]
        replaced = _clearly_above(epoch, after["top1"], measured["images"])
        assert result["best_top1"] == (epoch if replaced else after["top1"])
        source = "last" if replaced else "transfer"
        assert result["best_epoch"] == (1 if source == "last" else 0)
        best, expected = _weights(run / "best"), _weights(run / source)
        assert all(torch.equal(best[k], expected[k]) for k in best)
    assert source == "transfer"  # the vanishing lr's run
    moved = _weights(run / "last")
    assert not all(torch.equal(moved[k], best[k]) for k in best)


def test_a_kd_epoch_that_clears_the_margin_replaces_the_transferred_student(world, tmp_path, monkeypatch):  # noqa: F811
    """The replacing branch, forced: with a margin of minus a thousand standard errors every KD epoch clears
    it, and RUN/best is the KD epoch (bit for bit RUN/last) with best_epoch 1."""
    import mixa.distill.train as train

    monkeypatch.setattr(train, "KEEP_TRANSFER_STANDARD_ERRORS", -1e3)
    run = tmp_path / "forced"
    result = distill(world / "student", world / "data", run, transfer_steps=3, **STAGE)
    assert result["best_epoch"] == 1
    best, last = _weights(run / "best"), _weights(run / "last")
    assert all(torch.equal(best[k], last[k]) for k in best)


def test_the_stage_after_transfer_resumes_exactly(world, tmp_path):  # noqa: F811
    straight = tmp_path / "straight"
    stage = {**STAGE, "epochs": 2, "after_transfer_hidden_weight": 1.0}
    distill(world / "student", world / "data", straight, transfer_steps=3, **stage)
    split = tmp_path / "split"
    distill(world / "student", world / "data", split, transfer_steps=3, stop_after=0, **stage)
    assert (split / "transfer").is_dir() and not (split / "last").exists()  # killed after the transfer
    distill(world / "student", world / "data", split, resume=True, stop_after=1, **stage)
    distill(world / "student", world / "data", split, resume=True, **stage)
    a, b = _weights(straight / "last"), _weights(split / "last")
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("flag,value", [
    ("--transfer-steps", "-1"), ("--transfer-steps", "many"), ("--transfer-lr", "0"), ("--hidden-weight", "-1"),
    ("--hidden-weight", "nan"), ("--after-transfer-lr-scale", "0"), ("--after-transfer-lr-scale", "automatic"),
    ("--after-transfer-hidden-weight", "x"), ("--transfer-batch-size", "0"), ("--transfer-batch-size", "eight")])
def test_bad_new_flags_are_one_line_exit_2(world, tmp_path, capsys, flag, value):  # noqa: F811
    with pytest.raises(SystemExit) as exc:
        main(["distill", "-m", str(world / "student"), "--data-dir", str(world / "data"), "--output",
              str(tmp_path / "run"), flag, value])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and flag in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text,expect", [
    ("transfer_steps: -2", "transfer_steps must be"), ("stage_from_converted: maybe", "stage_from_converted"), ("after_transfer_lr_scale: 0", "after_transfer_lr_scale"),
    ("after_transfer_lr_scale: fast", "after_transfer_lr_scale"), ("transfer_batch_size: 0", "transfer_batch_size"),
    ("hidden_weight: -1", "hidden_weight must be"), ("warmup_max_fraction: 2", "warmup_max_fraction")])
def test_bad_recipe_values_are_one_line_exit_2(world, tmp_path, capsys, text, expect):  # noqa: F811
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text + "\n")
    code = main(["distill", "-m", str(world / "student"), "--data-dir", str(world / "data"), "--output",
                 str(tmp_path / "run"), "--recipe", str(recipe), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expect in err[0]
