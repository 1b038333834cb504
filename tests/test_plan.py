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
from mixa.plan import (Plan, PlanRow, best_under, mark_pareto, plan, read_csv, read_json, write_csv,
                       write_json)

NAME = "deit_tiny_patch16_224"
KWARGS = dict(depth=4, embed_dim=32, num_heads=2, img_size=32, patch_size=8, num_classes=3)
CLI_MODEL = ["--model", NAME, "--no-pretrained", *sum((["--model-arg", f"{k}={v}"] for k, v in KWARGS.items()
                                                      if k != "num_classes"), []), "--num-classes", "3"]
FAST = dict(rounds=1, repeat=2, warmup=0, progress=False)
FAST_CLI = ["--rounds", "1", "--repeat", "2", "--no-progress"]


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
