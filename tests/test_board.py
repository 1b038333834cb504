"""The board install path: `pip install --no-deps mixa` + numpy + onnxruntime, no torch, then
`python -m mixa profile model.onnx`. Creates a fresh venv and installs from the package registry (pip's
cache makes reruns fast): slow-marked."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mixa.export import export_onnx

sys.path.insert(0, str(Path(__file__).parent))
from _export_helpers import tiny_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_board_install_without_torch_profiles_an_onnx(tmp_path):
    onnx_path = tmp_path / "tiny.onnx"
    export_onnx(tiny_model("vit", "rala"), onnx_path, (3, 32, 32))
    venv = tmp_path / "board"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    pip = [py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "numpy", "onnxruntime"], check=True, timeout=900)
    subprocess.run([*pip, "--no-deps", str(REPO)], check=True, timeout=900, cwd=tmp_path)
    probe = subprocess.run([py, "-c", "import torch"], capture_output=True)
    assert probe.returncode != 0, "the board venv must not have torch"
    out = tmp_path / "r.json"
    proc = subprocess.run([py, "-m", "mixa", "profile", str(onnx_path), "--repeat", "3", "--warmup", "1",
                           "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (record,) = json.loads(out.read_text())
    assert record["runtime"] == "ort" and record["resolution"] == 32 and record["macs"] > 0
    assert record["environment"]["versions"]["torch"] is None
    # the console script works there too
    proc = subprocess.run([str(venv / "bin" / "mixa"), "profile", str(onnx_path), "--repeat", "2"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0 and "tiny.onnx" in proc.stdout, proc.stderr
