"""The wheel carries everything a command needs: installed (not editable) and run from another directory,
named recipes and the packaged teachers work."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(REPO),
                    "-w", str(work / "dist")], check=True, capture_output=True, timeout=300)
    wheel = next((work / "dist").glob("mixa-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(work / "site"),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    return work / "site"


def _run(site: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_installed_package_is_the_wheel_and_holds_recipes_and_assets(installed, tmp_path):
    code = ("import json, mixa; from importlib.resources import files; "
            "print(json.dumps({'file': mixa.__file__, "
            "'recipes': sorted(p.name for p in files('mixa.recipes').iterdir() if p.name.endswith('.yaml')), "
            "'assets': sorted(p.name for p in files('mixa').joinpath('assets').iterdir())}))")
    proc = _run(installed, tmp_path, "-c", code)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert found["file"].startswith(str(installed))
    assert {"deit_s.yaml", "deit_t.yaml", "swin_s.yaml", "swin_t.yaml", "tiny.yaml"} <= set(found["recipes"])
    assert "teacher" in found["assets"]
    proc = _run(installed, tmp_path, "-m", "mixa", "info", "--model", str(installed / "mixa" / "assets" / "teacher"))
    assert proc.returncode == 0 and "not converted" in proc.stdout, proc.stderr


def test_a_named_recipe_runs_from_outside_the_repository(installed, tmp_path):
    from conftest import write_image_folder

    data = write_image_folder(tmp_path / "data", classes=3, per_class=4, size=32, splits=("train", "val"))
    student = tmp_path / "student"
    proc = _run(installed, tmp_path, "-m", "mixa", "convert", "--model", "deit_t", "--no-pretrained",
                "--model-arg", "depth=2", "--model-arg", "embed_dim=32", "--model-arg", "num_heads=2",
                "--model-arg", "img_size=32", "--model-arg", "patch_size=8", "--num-classes", "3",
                "--keep", "1", "--attn", "relu", "--output", str(student))
    assert proc.returncode == 0, proc.stderr
    # the deit_s recipe (RandAugment, Mixup/CutMix, random erasing) with a budget a test can afford
    proc = _run(installed, tmp_path, "-m", "mixa", "distill", "--model", str(student), "--data-dir", str(data),
                "--recipe", "deit_s", "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "4", "--workers", "0",
                "--amp", "none", "--teacher", "none", "--no-progress", "--output", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    settings = json.dumps(json.loads((tmp_path / "run" / "run.json").read_text()))
    # values the deit_s recipe sets and neither the defaults (no Mixup/CutMix) nor tiny.yaml (clip 1.0) have
    assert '"mixup": 0.8' in settings and '"cutmix": 1.0' in settings and '"clip_grad": 5.0' in settings
