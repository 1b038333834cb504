"""mixa plan: rows for every (kind, k), scores once per kind, the cache, the Pareto front, budgets, file formats
and the command line."""
import shlex

import pytest
import torch

import mixa
import mixa.conversion
import mixa.conversion.select
import mixa.plan.core
from mixa.cli import main
from mixa.models import create_model
from mixa.plan import (Plan, PlanRow, best_under, knee, mark_pareto, plan, read_csv, read_json, write_csv,
                       write_json)

NAME = "deit_tiny_patch16_224"
KWARGS = dict(depth=4, embed_dim=32, num_heads=2, img_size=32, patch_size=8, num_classes=3)
CLI_MODEL = ["--model", NAME, "--no-pretrained", *sum((["--model-arg", f"{k}={v}"] for k, v in KWARGS.items()
                                                      if k != "num_classes"), []), "--num-classes", "3"]
FAST = dict(rounds=1, repeat=2, warmup=0, progress=False, transfer_steps=0)  # today's plan: no transfer probe
FAST_CLI = ["--rounds", "1", "--repeat", "2", "--no-progress", "--transfer-steps", "0"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("calib")
    gen = torch.Generator().manual_seed(0)
    for c in range(3):
        (root / f"class{c}").mkdir()
        for i in range(4):
            pixels = (torch.rand(32, 32, 3, generator=gen) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def original():
    torch.manual_seed(0)
    return create_model(NAME, pretrained=False, **KWARGS)


class Counter:
    """Wraps a function and records its calls and results."""

    def __init__(self, fn):
        self.fn, self.results = fn, []

    def __call__(self, *args, **kwargs):
        self.results.append(self.fn(*args, **kwargs))
        return self.results[-1]


def test_rows_scores_once_per_kind_and_cache(original, images, tmp_path, monkeypatch):
    scores = Counter(mixa.conversion.select.sensitivity_scores)
    monkeypatch.setitem(mixa.conversion.select.SCORED, "sensitivity", scores)
    p = plan(original, images, attn=("relu", "rala"), keep=(4, 0, 2), calib_images=12, work_dir=tmp_path, **FAST)

    assert sorted((r.kind, r.keep) for r in p.rows) == [(k, n) for k in ("rala", "relu") for n in (0, 2, 4)]
    assert len(scores.results) == 2 and all(len(s) == 4 for s in scores.results)  # once per kind, not per k
    by_kind = dict(zip(("relu", "rala"), scores.results))
    for r in p.rows:
        assert r.kept == sorted(sorted(range(4), key=lambda i: -by_kind[r.kind][i])[:r.keep])
        assert r.latency_ms == pytest.approx(p.original["latency_ms"] / r.speedup)
    full = [r for r in p.rows if r.keep == 4]
    assert all(r.agreement == 100.0 and r.kl == 0.0 for r in full)
    assert all(r.macs == p.original["macs"] and r.params == p.original["params"] for r in full)
    assert [r.latency_ms for r in p.rows] == sorted(r.latency_ms for r in p.rows)

    # agreement of one row, recomputed independently on all 12 images
    row = next(r for r in p.rows if r.kind == "relu" and r.keep == 2)
    converted = mixa.convert(original, attn="relu", select=row.kept, progress=False)
    from mixa.data import eval_loader

    x = torch.cat([batch[0] for batch in eval_loader(images, original) if batch is not None])
    with torch.no_grad():
        same = (original(x).argmax(-1) == converted(x).argmax(-1)).float().mean().item() * 100
    assert row.agreement == pytest.approx(same)

    # a rerun reads every row back from the work dir; a lost row (killed run) is the only one redone
    converts = Counter(mixa.plan.core.convert)
    monkeypatch.setattr(mixa.plan.core, "convert", converts)
    again = plan(original, images, attn=("relu", "rala"), keep=(0, 2, 4), calib_images=12, work_dir=tmp_path,
                 **FAST)
    assert len(converts.results) == 0 and len(scores.results) == 2
    assert [(r.kind, r.keep, r.agreement, r.speedup) for r in again.rows] == \
           [(r.kind, r.keep, r.agreement, r.speedup) for r in p.rows]
    (next(tmp_path.glob("*/rala_k2.json"))).unlink()
    plan(original, images, attn=("relu", "rala"), keep=(0, 2, 4), calib_images=12, work_dir=tmp_path, **FAST)
    assert len(converts.results) == 1 and len(scores.results) == 2
    # other calibration images are another plan: nothing is reused
    plan(original, images, attn=("relu",), keep=(1,), calib_images=6, work_dir=tmp_path, **FAST)
    assert len(converts.results) == 3 and len(scores.results) == 3

    # the layers mixa convert's own sensitivity selection picks from the same images
    own = mixa.convert(original, keep=2, attn="rala", calib=str(images), calib_images=12, progress=False)
    assert next(r for r in p.rows if (r.kind, r.keep) == ("rala", 2)).kept == own.mixa_config["selection"]["kept"]


def _row(kind, keep, latency, agreement, kl=0.1):
    return PlanRow(kind=kind, keep=keep, kept=list(range(keep)), agreement=agreement, kl=kl, params=100 + keep,
                   macs=1000 + keep, latency_ms=latency, speedup=2.0 / latency)


HAND_MADE = [  # (kind, k, latency ms, agreement %) -> on the front?
    ("relu", 0, 1.0, 80.0, True),    # fastest
    ("stella", 0, 1.0, 75.0, False),  # as fast, less faithful
    ("relu", 2, 1.5, 90.0, True),
    ("stella", 2, 1.6, 90.0, False),  # as faithful, slower
    ("rala", 2, 1.7, 85.0, False),    # slower and less faithful than relu 2
    ("rala", 4, 1.8, 95.0, True),
    ("relu", 4, 1.8, 95.0, True),     # equal rows are both on the front
    ("rala", 8, 2.5, 94.0, False),
    ("relu", 12, 2.0, 100.0, True),
]


def test_pareto_marking_against_a_hand_made_table():
    rows = mark_pareto([_row(*r[:4]) for r in reversed(HAND_MADE)])
    assert {(r.kind, r.keep) for r in rows if r.pareto} == {(r[0], r[1]) for r in HAND_MADE if r[4]}
    assert [r.latency_ms for r in rows] == sorted(r[2] for r in HAND_MADE)
    assert (rows[0].kind, rows[0].keep) == ("relu", 0)  # equal latency: the more faithful first


def test_best_under_a_budget():
    rows = mark_pareto([_row(*r[:4]) for r in HAND_MADE])
    assert best_under(rows, max_latency_ms=1.7).keep == 2 and best_under(rows, max_latency_ms=1.7).kind == "relu"
    assert best_under(rows, max_latency_ms=10).keep == 12
    assert best_under(rows, max_latency_ms=0.5) is None
    assert (best_under(rows, min_agreement=91).kind, best_under(rows, min_agreement=91).keep) in \
           {("rala", 4), ("relu", 4)}
    assert best_under(rows, min_agreement=80).keep == 0 and best_under(rows, min_agreement=80).kind == "relu"
    assert best_under(rows, min_agreement=100.5) is None
    for budget in ({"max_latency_ms": 1.9}, {"min_agreement": 85}):
        assert best_under(rows, **budget).pareto  # the choice is always on the front
    with pytest.raises(ValueError):
        best_under(rows)


def test_json_and_csv_round_trip(tmp_path):
    rows = mark_pareto([_row(*r[:4]) for r in HAND_MADE])
    rows[0].kl = 1 / 3  # a float that needs all its digits
    p = Plan(model="deit_s", depth=12, rows=rows, original={"params": 5, "macs": 6, "latency_ms": 2.0},
             settings={"select": "sensitivity", "img_size": 224}, environment={"cpu": "x"})
    write_json(tmp_path / "p.json", p)
    assert read_json(tmp_path / "p.json") == p
    write_csv(tmp_path / "p.csv", rows)
    assert read_csv(tmp_path / "p.csv") == rows


def run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_budget_outputs_and_errors(images, tmp_path, capsys):
    work = ["--work-dir", str(tmp_path / "work")]
    base = ["plan", *CLI_MODEL, "--calib-data", str(images), "--attn", "stella", "--keep", "0,2,4",
            *FAST_CLI, *work]
    files = ["--json", str(tmp_path / "p.json"), "--csv", str(tmp_path / "p.csv"), "--plot", str(tmp_path / "p.png")]
    code, out, err = run(base + files + ["--min-agreement", "0"], capsys)
    assert code == 0, err
    p = read_json(tmp_path / "p.json")
    assert len(p.rows) == 3 and read_csv(tmp_path / "p.csv") == p.rows
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    fastest = p.rows[0]
    assert f"best under --min-agreement 0: {fastest.kind} k={fastest.keep}" in out
    assert "Pareto" in out and out.count("*") >= 1 + sum(r.pareto for r in p.rows)
    assert f"wrote JSON {tmp_path / 'p.json'}, CSV {tmp_path / 'p.csv'}, plot {tmp_path / 'p.png'}" in out
    assert all(r.transfer_steps == 0 and r.agreement_before is None for r in p.rows)
    assert "converted" not in out.split("\n")[1]  # today's table: one agreement column

    # nothing meets the budget: the table is still printed, then one line and exit 1
    code, out, err = run(base + ["--max-latency-ms", "1e-6"], capsys)
    assert code == 1 and "kind" in out
    assert err.strip().count("\n") == 0 and "no configuration meets --max-latency-ms 1e-06" in err
    code, _, err = run(base + ["--min-agreement", "100.1"], capsys)
    assert code == 2 and "0..100" in err

    # the printed command builds the chosen model
    from mixa.cli.plan import add_arguments, convert_command
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(base[1:])
    args.depth = p.depth
    row = next(r for r in p.rows if r.kind == "stella" and r.keep == 2)
    command = shlex.split(convert_command(args, row))
    assert command[:2] == ["mixa", "convert"]
    out_dir = tmp_path / "built"
    code, _, err = run(command[1:command.index("--output")] + ["--output", str(out_dir)], capsys)
    assert code == 0, err
    kinds = mixa.attention_kinds(mixa.load(out_dir))
    assert [i for i, k in enumerate(kinds) if k == "softmax"] == row.kept and kinds.count("stella") == 2


@pytest.mark.parametrize("extra, message", [
    (["--attn", "relu,softmax"], "--attn takes linear kinds"),
    (["--keep", "0,5"], "--keep values must be in 0..4"),
    (["--select", "middle"], "--select must be one of"),
])
def test_cli_usage_errors(images, tmp_path, capsys, extra, message):
    code, out, err = run(["plan", *CLI_MODEL, "--calib-data", str(images), "--work-dir", str(tmp_path), *FAST_CLI,
                          *extra], capsys)
    assert code == 2 and message in err and "Traceback" not in err and err.strip().count("\n") == 0


def test_cli_refuses_missing_data_and_converted_models(images, tmp_path, capsys):
    code, _, err = run(["plan", *CLI_MODEL, "--calib-data", str(tmp_path / "nope")], capsys)
    assert code == 2 and "no such directory" in err
    converted = mixa.convert(create_model(NAME, pretrained=False, **KWARGS), keep=2, attn="relu", progress=False)
    mixa.save(converted, tmp_path / "converted")
    code, _, err = run(["plan", "--model", str(tmp_path / "converted"), "--calib-data", str(images), *FAST_CLI],
                       capsys)
    assert code == 2 and "already converted" in err
    for argparse_error in (["--max-latency-ms", "1", "--min-agreement", "1"], ["--calib-images", "0"],
                           ["--keep", "2,x"]):
        with pytest.raises(SystemExit) as exit_:
            main(["plan", *CLI_MODEL, "--calib-data", str(images), *argparse_error])
        assert exit_.value.code == 2


def test_best_under_a_speedup_budget_and_the_knee():
    rows = mark_pareto([_row(*r[:4]) for r in HAND_MADE])  # speedup = 2 / latency
    assert (best_under(rows, min_speedup=1.25).kind, best_under(rows, min_speedup=1.25).keep) == ("relu", 2)
    assert best_under(rows, min_speedup=1.0).keep == 12 and best_under(rows, min_speedup=2.5) is None
    with pytest.raises(ValueError):
        best_under(rows, min_speedup=1.0, max_latency_ms=2.0)
    # knee worked by hand: front (1, 50) (2, 90) (3, 95) (4, 100) scaled to [0, 1] on both axes is
    # (0, 0) (1/3, 0.8) (2/3, 0.9) (1, 1); heights above the chord y = x: 0, 0.47, 0.23, 0 -> (2, 90)
    front = mark_pareto([_row("relu", 0, 1.0, 50.0), _row("relu", 2, 2.0, 90.0), _row("relu", 4, 3.0, 95.0),
                         _row("relu", 8, 4.0, 100.0), _row("rala", 2, 2.5, 60.0)])
    assert (knee(front).kind, knee(front).keep) == ("relu", 2)
    two = mark_pareto([_row("relu", 0, 1.0, 50.0), _row("relu", 8, 4.0, 100.0)])
    assert knee(two).keep == 8  # nothing to trade: the most faithful


def test_transfer_probe_lowers_every_layer_error_and_replays_exactly(original):
    """The probe trains only the replaced layers (mixa.transfer's objective): each one's relative error on
    the calibration images drops (measured by mixa.transfer.layer_errors); replaying the original's cached
    activations gives bit-identical weights to recomputing them every step."""
    from mixa.plan.transfer import Probe, probe_settings
    from mixa.transfer import layer_errors, replaced_layers

    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(6, 3, 32, 32, generator=gen) for _ in range(2)]
    original = original.eval()
    settings = probe_settings(20, batch_size=6)
    students = [mixa.convert(original, attn="relu", select=[0], progress=False) for _ in range(2)]
    before = layer_errors(original, replaced_layers(students[0]), batches)
    result = Probe(original, batches).run(students[0], settings, seed=0)
    Probe(original, batches, activation_budget_bytes=0).run(students[1], settings, seed=0)
    after = layer_errors(original, replaced_layers(students[0]), batches)
    assert result["steps"] == 20 and set(after) == set(before) and len(after) == 3
    assert all(after[p] < before[p] for p in before), (before, after)
    one, two = students[0].state_dict(), students[1].state_dict()
    assert all(torch.equal(one[k], two[k]) for k in one)
    untouched = {k: v for k, v in original.state_dict().items() if not k.startswith(("blocks.1.attn", "blocks.2.attn",
                                                                                       "blocks.3.attn"))}
    assert all(torch.equal(one[k], v) for k, v in untouched.items())  # only the replaced layers learn


def test_transfer_probe_with_the_block_target_trains_blocks_and_replays_exactly(original):
    """With target block the probe trains the blocks holding the replaced layers on the blocks' updates
    (mixa.transfer's block objective): their held-out error drops, and the cached replay equals recomputing."""
    from mixa.plan.transfer import Probe, probe_settings
    from mixa.transfer import layer_errors, replaced_layers
    from mixa.transfer.layerwise import transfer_units

    import copy

    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(6, 3, 32, 32, generator=gen) for _ in range(2)]
    original = copy.deepcopy(original).eval()
    with torch.no_grad():  # peaked attention, as trained ViTs have: what a linear kind gets wrong dominates
        for block in original.blocks:  # the block's update (at random init the MLP's part does)
            block.attn.qkv.weight[:64].mul_(10.0)
    settings = probe_settings(20, batch_size=6, target="block", lr=5e-4)
    students = [mixa.convert(original, attn="rala", select=[0], progress=False) for _ in range(2)]
    blocks = lambda m: transfer_units(m, replaced_layers(m), "block")
    before = layer_errors(original, blocks(students[0]), batches, residual=True)
    Probe(original, batches).run(students[0], settings, seed=0)
    Probe(original, batches, activation_budget_bytes=0).run(students[1], settings, seed=0)
    after = layer_errors(original, blocks(students[0]), batches, residual=True)
    assert list(after) == ["blocks.1", "blocks.2", "blocks.3"]
    assert all(after[p] < before[p] for p in before), (before, after)
    one, two = students[0].state_dict(), students[1].state_dict()
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert not torch.equal(one["blocks.1.mlp.fc1.weight"], original.state_dict()["blocks.1.mlp.fc1.weight"])


def test_transfer_rows_are_cached_and_reused(original, images, tmp_path, monkeypatch):
    import mixa.plan.transfer

    runs = Counter(mixa.plan.transfer.Probe.run)
    monkeypatch.setattr(mixa.plan.transfer.Probe, "run", lambda self, *a, **k: runs(self, *a, **k))
    kwargs = dict(attn=("relu", "rala"), keep=(0, 2, 4), calib_images=12, work_dir=tmp_path, rounds=1, repeat=2,
                  warmup=0, progress=False)
    p = plan(original, images, transfer_steps=4, **kwargs)
    assert len(runs.results) == 4  # k = 4 keeps every layer: nothing to transfer
    assert all(r.transfer_steps == 4 for r in p.rows)
    assert all(r.agreement == r.agreement_before == 100.0 for r in p.rows if r.keep == 4)
    # relu adds no parameters: before transfer it is the plan without the probe, row by row
    today = plan(original, images, transfer_steps=0, **kwargs)
    before = {(r.kind, r.keep): r.agreement_before for r in p.rows}
    assert all(before[(r.kind, r.keep)] == r.agreement for r in today.rows if r.kind == "relu")
    assert all(r.agreement_before is None for r in today.rows)
    assert len(runs.results) == 4

    converts = Counter(mixa.plan.core.convert)
    monkeypatch.setattr(mixa.plan.core, "convert", converts)
    again = plan(original, images, transfer_steps=4, **kwargs)
    assert len(converts.results) == 0 and len(runs.results) == 4
    figures = lambda plan_: sorted((r.kind, r.keep, r.agreement_before, r.agreement, r.kl) for r in plan_.rows)
    assert figures(again) == figures(p)
    lost = list(tmp_path.glob("*/rala_k2_transfer4_*.json"))
    assert len(lost) == 1
    lost[0].unlink()
    redone = plan(original, images, transfer_steps=4, **kwargs)
    assert len(converts.results) == 1 and len(runs.results) == 5
    assert figures(redone) == figures(p)  # a row does not depend on the rows converted before it
    plan(original, images, transfer_steps=5, **{**kwargs, "attn": ("relu",), "keep": (2,)})
    assert len(converts.results) == 2 and len(runs.results) == 6  # other steps: another row


def test_transfer_rows_are_scored_on_images_the_probe_never_trained_on(original, images, monkeypatch):
    """The probe trains on the first half of the calibration images; the row's agreement and KL are those of
    the transferred student on the other half (recomputed here from a copy of that student), while the
    converted figures stay those of every calibration image (the plan without the probe)."""
    import copy

    import mixa.plan.transfer
    from mixa.conversion import calibration_batches
    from mixa.conversion.select import model_logits
    from mixa.metrics import agreement
    from mixa.plan.transfer import held_out_split

    seen = []
    run = mixa.plan.transfer.Probe.run

    def recording(self, student, settings, seed):
        result = run(self, student, settings, seed)
        seen.append((self.images.clone(), copy.deepcopy(student)))
        return result

    monkeypatch.setattr(mixa.plan.transfer.Probe, "run", recording)
    kwargs = dict(attn=("relu",), keep=(0,), calib_images=12, rounds=1, repeat=2, warmup=0, progress=False)
    row = plan(original, images, transfer_steps=6, **kwargs).rows[0]
    calib = torch.cat(calibration_batches(images, original.eval(), images=12))
    trained_on, student = seen[0]
    assert torch.equal(trained_on, calib[:6])
    held_out = calib[6:]
    expected = agreement(model_logits(original, [held_out]), model_logits(student, [held_out]))
    assert row.agreement == pytest.approx(expected["top1_agreement"]) and row.kl == pytest.approx(expected["mean_kl"])
    today = plan(original, images, transfer_steps=0, **kwargs).rows[0]
    assert row.agreement_before == today.agreement and row.kl_before == pytest.approx(today.kl)
    train, scored = held_out_split([calib[:5], calib[5:]])
    assert torch.equal(torch.cat(train + scored), calib) and len(torch.cat(scored)) == 6
    with pytest.raises(mixa.errors.UsageError, match="at least 2 calibration images"):
        held_out_split([calib[:1]])


@pytest.fixture(scope="module")
def split_data(tmp_path_factory):
    """train/ and val/ (3 classes x 4 images each) and a saved original."""
    from PIL import Image

    root = tmp_path_factory.mktemp("data")
    gen = torch.Generator().manual_seed(2)
    for split in ("train", "val"):
        for c in range(3):
            (root / split / f"class{c}").mkdir(parents=True)
            for i in range(4):
                pixels = (torch.rand(32, 32, 3, generator=gen) * 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / f"class{c}" / f"{i}.png")
    torch.manual_seed(0)
    mixa.save(create_model(NAME, pretrained=False, **KWARGS), root / "original")
    return root


def test_cli_transfer_commands_build_and_recover_the_planned_student(split_data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["plan", "--model", str(split_data / "original"), "--calib-data", str(split_data / "val"),
            "--attn", "relu", "--keep", "0,2", "--calib-images", "12", "--transfer-steps", "10", "--rounds", "1",
            "--repeat", "2", "--no-progress", "--work-dir", str(tmp_path / "work"), "--json", "p.json"]
    code, out, err = run(base + ["--min-speedup", "1e-3"], capsys)
    assert code == 0, err
    p = read_json("p.json")
    best = best_under(p.rows, min_speedup=1e-3)
    assert "agree % after 10 transfer steps" in out and "agree % converted" in out
    assert f"best under --min-speedup 0.001: {best.kind} k={best.keep}" in out
    lines = out.split("build and recover it:\n")[1].split("\n")
    convert, distill = shlex.split(lines[0]), shlex.split(lines[1])
    assert convert[:2] == ["mixa", "convert"] and distill[:2] == ["mixa", "distill"]
    assert distill[distill.index("--data-dir") + 1] == str(split_data)
    assert distill[distill.index("--transfer-steps") + 1] == "10"
    assert run(convert[1:], capsys)[0] == 0
    student = convert[convert.index("--output") + 1]
    kinds = mixa.attention_kinds(mixa.load(student))
    assert [i for i, k in enumerate(kinds) if k == "softmax"] == best.kept and kinds.count("relu") == 4 - best.keep
    # the transfer lr pinned, as in tests/test_transfer.py: the default (6e-3, for 100+ steps on a trained
    # model) overshoots this tiny random model's small errors in 10 steps
    code, _, err = run(distill[1:] + ["--epochs", "1", "-b", "6", "-j", "0", "--no-progress",
                                      "--transfer-lr", "5e-4"], capsys)
    assert code == 0, err
    run_dir = tmp_path / distill[distill.index("--output") + 1]
    import json

    transfer = [json.loads(line) for line in (run_dir / "transfer" / "metrics.jsonl").read_text().splitlines()]
    assert transfer[-1]["step"] == 10 and transfer[-1]["holdout_error"] < transfer[0]["holdout_error"]
    assert mixa.attention_kinds(mixa.load(run_dir / "best")) == kinds


def test_convert_attn_auto_picks_what_the_plan_picks(split_data, tmp_path, capsys):
    common = ["--model", str(split_data / "original"), "--calib-data", str(split_data / "val"), "--calib-images",
              "12", "--transfer-steps", "2", "--rounds", "1", "--repeat", "2", "--no-progress", "--work-dir",
              str(tmp_path / "work")]
    code, _, err = run(["plan", *common, "--json", str(tmp_path / "p.json")], capsys)
    assert code == 0, err
    p = read_json(tmp_path / "p.json")
    budget = sorted(r.speedup for r in p.rows)[len(p.rows) // 2]
    for flags, pick in ((["--min-speedup", f"{budget!r}"], best_under(p.rows, min_speedup=budget)),
                        ([], knee(p.rows))):
        out_dir = tmp_path / f"auto{len(flags)}"
        code, out, err = run(["convert", *common, "--attn", "auto", *flags, "--output", str(out_dir)], capsys)
        if pick.keep == p.depth:
            assert code == 1 and "original model itself" in err
            continue
        assert code == 0, err
        assert f"--attn auto picks {pick.kind} k={pick.keep}" in out and "why:" in out
        assert ("knee of the Pareto front" in out) == (not flags)
        kinds = mixa.attention_kinds(mixa.load(out_dir))
        assert [i for i, k in enumerate(kinds) if k == "softmax"] == pick.kept
        assert set(kinds) - {"softmax"} <= {pick.kind} and kinds.count("softmax") == pick.keep


@pytest.mark.parametrize("argv, message", [
    (["plan", "--transfer-steps", "-1"], "must be >= 0"),
    (["plan", "--min-speedup", "0"], "must be a positive number"),
    (["convert", "--attn", "auto", "--output", "x"], "--attn auto needs --calib-data"),
    (["convert", "--attn", "auto", "--keep", "2", "--calib-data", ".", "--output", "x"], "drop --keep"),
    (["convert", "--attn", "relu", "--min-speedup", "1.2", "--output", "x"], "with --attn auto only"),
])
def test_transfer_and_auto_usage_errors(split_data, tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    argv = argv[:1] + ["--model", str(split_data / "original")] + (
        ["--calib-data", str(split_data / "val")] if argv[0] == "plan" else []) + argv[1:]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "x").exists()
    with pytest.raises(mixa.errors.UsageError):
        plan("unused", ".", transfer_steps=-1)
