import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mixa.export import export_onnx
from mixa.profile.records import latency_stats

sys.path.insert(0, str(Path(__file__).parent))
from _export_helpers import tiny_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RECORD_FIELDS = {"target", "runtime", "device", "threads", "batch", "resolution", "params", "macs", "latency_ms",
                 "images_per_s", "environment", "round_robin", "round_ms"}

# Installed as sitecustomize: any import of a package a board install lacks (docs/profile.md, "On the board":
# numpy and onnxruntime only; torch and everything else mixa depends on, or offers as an extra) is recorded
# and refused. The torch family must not even be tried; the others may be, where mixa does without them.
TORCH_FAMILY = ("torch", "timm", "torchvision")
BOARD_LACKS = TORCH_FAMILY + ("onnx", "onnxscript", "safetensors", "yaml", "tqdm", "matplotlib", "executorch")
BLOCKER = '''
import importlib.abc, os, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in %r:
            with open(os.environ["MIXA_TEST_BLOCK_LOG"], "a") as f:
                f.write(name + "\\n")
            raise ImportError(f"{name} is blocked in this test")
        return None
sys.meta_path.insert(0, _Block())
''' % (BOARD_LACKS,)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx(tiny_model("vit", "stella"), path, (3, 32, 32), dynamic_batch=True)
    return path


def test_latency_stats_against_numpy():
    seconds = [i / 1000 for i in range(1, 101)]  # 1 .. 100 ms
    stats = latency_stats(seconds)
    assert stats["median"] == pytest.approx(50.5) and stats["mean"] == pytest.approx(50.5)
    assert stats["min"] == pytest.approx(1.0)
    assert stats["p90"] == pytest.approx(90.1) and stats["p99"] == pytest.approx(99.01)


def _blocked_env(tmp_path):
    (tmp_path / "block").mkdir(exist_ok=True)
    (tmp_path / "block" / "sitecustomize.py").write_text(BLOCKER)
    log = tmp_path / "blocked_imports.log"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MIXA_TEST_BLOCK_LOG": str(log),
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "block"), str(REPO)])}
    return env, log


def test_onnx_profiling_needs_only_numpy_and_onnxruntime(tmp_path, tiny_onnx):
    env, log = _blocked_env(tmp_path)
    # The blocker works: importing torch under it fails and is logged.
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and log.read_text() == "torch\n"
    log.unlink()
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "mixa", "profile", str(tiny_onnx), "--batch-size", "2",
                           "--threads", "1,2", "--warmup", "1", "--repeat", "3", "--json", str(out),
                           "--csv", str(tmp_path / "r.csv")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    tried = log.read_text().split() if log.exists() else []
    assert not [name for name in tried if name.split(".")[0] in TORCH_FAMILY], f"torch-side imports tried: {tried}"
    records = json.loads(out.read_text())
    assert [r["threads"] for r in records] == [1, 2]
    for r in records:
        assert set(r) == RECORD_FIELDS
        assert (r["runtime"], r["device"], r["batch"], r["resolution"]) == ("ort", "cpu", 2, 32)
        assert set(r["latency_ms"]) == {"median", "mean", "p90", "p99", "min"}
        assert r["latency_ms"]["min"] <= r["latency_ms"]["median"] <= r["latency_ms"]["p99"]
        assert r["images_per_s"] == pytest.approx(2 / (r["latency_ms"]["median"] / 1e3))
        assert r["params"] > 0 and r["macs"] > 0  # from the metadata mixa export wrote
        assert r["environment"]["versions"]["onnxruntime"] and r["environment"]["cpu"]
    assert "tiny.onnx" in proc.stdout and "median ms" in proc.stdout
    assert (tmp_path / "r.csv").read_text().count("\n") == 3


def test_profile_model_dir_torch_and_ort_with_macs(tmp_path, capsys):
    import mixa
    from mixa.cli import main
    from mixa.export.targets import at_resolution
    from mixa.macs import count_macs

    model = tiny_model("vit", "rala")
    mixa.save(model, tmp_path / "tiny")
    out = tmp_path / "r.json"
    for runtime in ("torch", "ort"):
        code = main(["profile", str(tmp_path / "tiny"), "--runtime", runtime, "--img-size", "32,48", "--warmup", "0",
                     "--repeat", "2", "--json", str(out)])
        assert code == 0, capsys.readouterr().err
        records = json.loads(out.read_text())
        assert [(r["runtime"], r["resolution"]) for r in records] == [(runtime, 32), (runtime, 48)]
        for r in records:
            assert r["macs"] == count_macs(at_resolution(model, r["resolution"]), (3, r["resolution"]) * 1
                                           + (r["resolution"],))


def test_keep_sweep_and_compare(tmp_path, capsys):
    import mixa
    from mixa.cli import main

    mixa.save(tiny_model("vit"), tmp_path / "plain")
    code = main(["profile", str(tmp_path / "plain"), "--compare", str(tmp_path / "plain"), "--keep-sweep", "0,2",
                 "--attn", "stella", "--runtime", "torch", "--warmup", "0", "--repeat", "2",
                 "--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png")])
    assert code == 0, capsys.readouterr().err
    records = json.loads((tmp_path / "r.json").read_text())
    assert [r["target"] for r in records] == ["plain (original)", "plain keep=0 stella", "plain keep=2 stella"]
    # keep=2 of 2 layers is the original again; keep=0 swaps both cores (2 heads, N = 17, d = 32):
    # softmax 2 N^2 d vs SteLLA 2 N d^2 per head -- here d > N, so the linear core costs more.
    heads, n, d = 2, 17, 32
    per_layer = heads * (2 * n * n * d - 2 * n * d * d)
    assert records[2]["macs"] == records[0]["macs"] == records[1]["macs"] + 2 * per_layer
    assert (tmp_path / "r.png").stat().st_size > 1000
    assert "speed-up" in capsys.readouterr().out


@pytest.mark.parametrize("args,code,message", [
    (["missing.onnx"], 1, "no such file"),       # a missing input is a failure (1), like a missing dir
    (["missing_dir/"], 1, "no such file or directory"),
    (["{onnx}", "--img-size", "64"], 2, "wrong input size"),
    (["{onnx}", "--runtime", "torch"], 2, "files run with their own runtime"),
    (["{onnx}", "--runtime", "tensorrt"], 2, "invalid choice"),
    (["{onnx}", "--threads", "1,x"], 2, "comma-separated"),
    (["{onnx}", "--keep-sweep", "0,6"], 2, "give a model name or directory"),
])
def test_profile_bad_input(tmp_path, capsys, tiny_onnx, args, code, message):
    from mixa.cli import main

    args = [a.replace("{onnx}", str(tiny_onnx)) for a in args]
    try:
        got = main(["profile", *args])
    except SystemExit as exit_:  # argparse's own usage errors
        got = exit_.code
    err = capsys.readouterr().err
    assert got == code and message in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_absent_is_a_clear_error(tmp_path, capsys):
    import mixa
    from mixa.cli import main

    mixa.save(tiny_model("vit"), tmp_path / "plain")
    got = main(["profile", str(tmp_path / "plain"), "--runtime", "torch", "--device", "cuda"])
    err = capsys.readouterr().err
    assert got == 1 and "no CUDA device" in err and len(err.strip().splitlines()) == 1


def test_keep_sweep_with_gate_and_keep_kind(tmp_path, capsys):
    import mixa
    from mixa.cli import main
    from mixa.macs import count_macs

    model = tiny_model("vit")
    mixa.save(model, tmp_path / "plain")
    code = main(["profile", str(tmp_path / "plain"), "--attn", "rala", "--gate", "identity", "--keep-kind",
                 "relu-quadratic", "--keep-sweep", "1", "--runtime", "torch", "--warmup", "0", "--repeat", "2",
                 "--json", str(tmp_path / "r.json")])
    assert code == 0, capsys.readouterr().err
    (record,) = json.loads((tmp_path / "r.json").read_text())
    assert record["target"] == "plain keep=1 rala kept=relu-quadratic"
    expected = mixa.convert(model, keep=1, attn="rala", keep_kind="relu-quadratic",
                            attn_options={"gate": "identity"}, progress=False)
    assert record["macs"] == count_macs(expected, (3, 32, 32))
    assert main(["profile", str(tmp_path / "plain"), "--attn", "rala", "--keep-kind", "relu"]) == 2
    assert "--keep-kind must be one of" in capsys.readouterr().err


def test_records_follow_the_order_of_the_targets(tmp_path, capsys, tiny_onnx):
    """A file given after a model stays after it (files and models are profiled by different runtimes)."""
    import json

    import mixa
    from mixa.cli import main
    from mixa.models import create_model

    mixa.save(create_model("deit_tiny_patch16_224", pretrained=False, depth=1, embed_dim=32, num_heads=2,
                           img_size=32, patch_size=16, num_classes=3), tmp_path / "m")
    code = main(["profile", str(tmp_path / "m"), str(tiny_onnx), "--warmup", "0", "--repeat", "2",
                 "--json", str(tmp_path / "r.json")])
    assert code == 0
    targets = [r["target"] for r in json.loads((tmp_path / "r.json").read_text())]
    assert targets == ["m", tiny_onnx.name]
    assert f"wrote the records (JSON) to {tmp_path / 'r.json'}" in capsys.readouterr().out  # issue 19 defect 8


def test_several_targets_are_timed_round_robin_with_the_chosen_clock():
    """Issue 20: the targets of one command alternate call by call (after their warm-up), each thread count
    in its own round-robin, records in the order given; the cpu clock counts this thread's CPU time only."""
    import time

    from mixa.profile.compare import Runner, measure

    calls = []

    def runner(name, threads, work=0.0):
        def start():
            calls.append(f"start {name}")
            return lambda: (calls.append(name), time.sleep(work))
        return Runner(dict(target=name, runtime="ort", device="cpu", threads=threads, batch=1, resolution=8,
                           params=None, macs=None), start)

    records = measure([runner("a", 1), runner("b", 2), runner("c", 1)], warmup=1, repeat=3)
    assert [r["target"] for r in records] == ["a", "b", "c"]
    assert sorted(calls[:2]) == ["start a", "start c"]  # loaded in a shuffled order (below)
    assert calls[2:] == ["a", "c"] + ["a", "c"] * 3 + ["start b", "b"] + ["b"] * 3
    # sleeping costs wall time but no CPU time
    slept, busy = measure([runner("s", 1, work=0.02), runner("t", 1)], warmup=0, repeat=3, clock="cpu")
    assert slept["latency_ms"]["median"] < 5
    slept = measure([runner("s", 1, work=0.02)], warmup=0, repeat=3)[0]
    assert slept["latency_ms"]["median"] >= 19


def test_targets_load_in_a_shuffled_order_and_keep_theirs_in_the_records():
    """Twenty-first session: programs loaded in a fixed order ran apart by the same amounts every time, so
    ``measure`` (and ``mixa profile``) load the targets in a shuffled order; records stay in the given one."""
    from mixa.profile.compare import Runner, measure

    loaded = []

    def runner(i):
        def start():
            loaded.append(i)
            return lambda: None
        return Runner(dict(target=f"t{i}", runtime="ort", device="cpu", threads=1, batch=1, resolution=8,
                           params=None, macs=None), start)

    orders = {}
    for seed in range(6):
        loaded.clear()
        records = measure([runner(i) for i in range(5)], warmup=0, repeat=2, seed=seed)
        assert [r["target"] for r in records] == [f"t{i}" for i in range(5)]
        assert sorted(loaded) == list(range(5))
        orders[seed] = tuple(loaded)
    assert len({order[0] for order in orders.values()}) > 1  # not always the same target first
    loaded.clear()
    measure([runner(i) for i in range(5)], warmup=0, repeat=2, seed=3)
    assert tuple(loaded) == orders[3]  # a seed repeats its order


def test_cpu_clock_needs_one_thread(capsys, tiny_onnx):
    from mixa.cli import main

    assert main(["profile", str(tiny_onnx), "--clock", "cpu", "--threads", "2"]) == 2
    err = capsys.readouterr().err
    assert "--clock cpu" in err and len(err.strip().splitlines()) == 1
    assert main(["profile", str(tiny_onnx), str(tiny_onnx), "--clock", "cpu", "--repeat", "2"]) == 0
    assert "timed round-robin in one process (2 rounds, cpu clock" in capsys.readouterr().out


def test_speedup_pairs_the_rounds_of_one_round_robin():
    """Issue 20: targets timed in one round-robin are compared round by round (the median of per-round
    latency ratios), so load that slows one round slows both of its calls; records timed apart fall back
    to the ratio of medians. Worked by hand: base 10, 10, 30 ms and other 5, 20, 15 ms give per-round
    ratios 2, 0.5, 2 -> 2.0, while the medians give 10 / 15."""
    from mixa.profile.records import format_table, make_record, speedups

    meta = dict(runtime="ort", device="cpu", threads=1, batch=1, resolution=8, params=None, macs=None, env={})
    base = make_record(target="a", seconds=[0.010, 0.010, 0.030], round_robin="7.0", **meta)
    other = make_record(target="b", seconds=[0.005, 0.020, 0.015], round_robin="7.0", **meta)
    apart = make_record(target="c", seconds=[0.005, 0.020, 0.015], round_robin="7.1", **meta)
    assert other["round_ms"] == pytest.approx([5.0, 20.0, 15.0])
    assert speedups([base, other, apart]) == pytest.approx([1.0, 2.0, 10 / 15])
    assert "2.00x" in format_table([base, other]) and "0.67x" in format_table([base, apart])
    # the one helper behind it (also mixa plan's and the benchmarks' paired speed-up)
    from mixa.profile.timing import paired_speedup

    assert paired_speedup([10.0, 10.0, 30.0], [5.0, 20.0, 15.0]) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        paired_speedup([1.0], [1.0, 2.0])
    # measure() names one round-robin per thread count
    from mixa.profile.compare import Runner, measure

    def runner(name, threads):
        return Runner(dict(meta, target=name, threads=threads), lambda: (lambda: None))

    records = measure([runner("x", 1), runner("y", 1), runner("z", 2)], warmup=0, repeat=2)
    assert records[0]["round_robin"] == records[1]["round_robin"] != records[2]["round_robin"]


def test_records_name_the_simd_extensions_the_cpu_reports(tmp_path):
    """The environment names the instruction-set extensions that decide the INT8 kernels (an AVX2-only EPYC
    runs ONNX Runtime's and XNNPACK's INT8 without VNNI), read from x86 'flags' and ARM 'Features', and the
    CPU's generation (x86 family / model / stepping, ARM implementer / part)."""
    from mixa.profile.records import cpu_id, cpu_model, cpu_simd, describe_cpu, environment

    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\nstepping\t: 1\n"
                   "flags\t\t: fpu sse2 fma avx2 sha_ni vaes\n\nprocessor\t: 1\ncpu family\t: 25\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm aes asimddp i8mm\nCPU implementer\t: 0x41\n"
                   "CPU part\t: 0xd0c\n")
    assert cpu_simd(str(x86)) == ["avx2", "fma"]
    assert cpu_simd(str(arm)) == ["asimd", "asimddp", "i8mm"]
    assert cpu_simd(str(tmp_path / "absent")) is None
    # the generation, which a VM's marketing name may hide (the first processor's fields)
    assert cpu_model(str(x86)) == "AMD EPYC" and cpu_id(str(x86)) == "family 26 model 2 stepping 1"
    assert cpu_id(str(arm)) == "implementer 0x41 part 0xd0c" and cpu_id(str(tmp_path / "absent")) is None
    env = {"cpu": "AMD EPYC", "cpu_id": cpu_id(str(x86)), "cpu_simd": cpu_simd(str(x86))}
    assert describe_cpu(env) == "AMD EPYC, family 26 model 2 stepping 1 (avx2, fma)"
    assert describe_cpu({"cpu": "Apple M2"}) == "Apple M2 (SIMD unknown)"  # an older record: no id, no SIMD
    assert {"cpu_simd", "cpu_id"} <= set(environment())


def test_default_rounds_stop_early_only_when_the_budget_is_spent(monkeypatch):
    """Without --repeat: DEFAULT_ROUNDS rounds when they fit in the budget; a slow round-robin stops after
    DEFAULT_MIN_ROUNDS (20, the earlier default) once the budget is spent, so a big model costs no more than
    before; an explicit repeat is exact."""
    import time

    from mixa.profile import compare
    from mixa.profile.compare import Runner, measure

    def runner(work):
        return Runner(dict(target="x", runtime="ort", device="cpu", threads=1, batch=1, resolution=8, params=None,
                           macs=None), lambda: (lambda: time.sleep(work)))

    assert (compare.DEFAULT_ROUNDS, compare.DEFAULT_MIN_ROUNDS) == (60, 20)
    assert len(measure([runner(0.0), runner(0.0)], warmup=0, repeat=None)[0]["round_ms"]) == 60
    monkeypatch.setattr(compare, "DEFAULT_BUDGET_S", 0.05)  # spent after a few 10 ms rounds
    slow = measure([runner(0.005), runner(0.005)], warmup=0, repeat=None)
    assert [len(r["round_ms"]) for r in slow] == [20, 20]
    assert len(measure([runner(0.005)], warmup=0, repeat=25)[0]["round_ms"]) == 25
