"""The convert / info commands: reports, checkpoints, and one-line errors with the right exit codes."""
import json
import os
import stat
import subprocess
import sys

import pytest
import torch

import mixa
from mixa.cli import main
from mixa.models import create_model

TINY = ["convert", "--model", "deit_t", "--model-arg", "depth=4", "--model-arg", "embed_dim=32", "--model-arg", "num_heads=2",
        "--model-arg", "img_size=32", "--model-arg", "patch_size=8", "--num-classes", "3"]


def run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def tiny_images(image_folder):
    root = image_folder("calib", classes=3, per_class=4, size=32)
    (root / "class0" / "broken.png").write_bytes(b"not a png")
    return root


def test_convert_with_calibration_report_and_info(tmp_path, tiny_images, capsys):
    out_dir = tmp_path / "model"
    code, out, err = run(TINY + ["--no-pretrained", "--keep", "2", "--attn", "stella", "--calib-data",
                                 str(tiny_images), "--calib-images", "12", "--output", str(out_dir),
                                 "--json", str(tmp_path / "r.json")], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["selection"] == "sensitivity"
    assert sum(l["kept"] for l in report["layers"]) == 2
    kept_by_score = sorted(sorted(range(4), key=lambda i: -report["layers"][i]["score"])[:2])
    assert [l["index"] for l in report["layers"] if l["kept"]] == kept_by_score
    assert 0 <= report["agreement"]["top1_agreement"] <= 100 and report["agreement"]["images"] == 12
    assert report["macs_after"] < report["macs_before"] or report["macs_after"] > 0
    assert "agreement with the original" in out and "sensitivity" in out
    model = mixa.load(out_dir)
    assert mixa.attention_kinds(model).count("softmax") == 2
    code, out, _ = run(["info", "--model", str(out_dir)], capsys)
    assert code == 0 and "stella" in out and "sensitivity" in out and "deit_tiny_patch16_224" in out


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_checkpoint_is_loaded(tmp_path, suffix, capsys):
    source = create_model("deit_tiny_patch16_224", pretrained=False, depth=4, embed_dim=32, num_heads=2,
                          img_size=32, patch_size=8, num_classes=3)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pth":
        torch.save({"model": source.state_dict()}, path)       # the usual {"model": ...} wrapper
    else:
        from safetensors.torch import save_file
        save_file(source.state_dict(), str(path))
    args = [a for a in TINY] + ["--checkpoint", str(path), "--keep", "4", "--output", str(tmp_path / "m")]
    code, _, err = run(args, capsys)
    assert code == 0, err
    loaded = mixa.load(tmp_path / "m")
    assert torch.equal(loaded.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["base"]["checkpoint"] == str(path.resolve())


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("case,code,message", [
    (["convert", "--model", "resnet_9000", "--keep", "1"], 2, "unknown model"),
    (["convert", "--model", "resnet18", "--no-pretrained", "--keep", "1"], 2, "cannot convert ResNet"),
    (TINY + ["--no-pretrained", "--keep", "1", "--attn", "performer"], 2, "--attn must be a linear kind"),
    (TINY + ["--no-pretrained", "--keep", "9"], 2, "--keep must be in [0, 4]"),
    (TINY + ["--no-pretrained", "--select", "0,7"], 2, "out of range"),
    (TINY + ["--no-pretrained", "--select", "sometimes"], 2, "--select must be"),
    (TINY + ["--no-pretrained", "--keep", "2", "--select", "sensitivity"], 2, "needs calibration data"),
    (TINY + ["--no-pretrained", "--patch-size", "14", "--window-size", "14"], 2, "Swin"),
    (TINY + ["--checkpoint", "missing.pth"], 1, "checkpoint not found"),
    (TINY + ["--no-pretrained", "--calib-data", "nowhere"], 1, "data directory not found"),
])
def test_bad_input_gives_one_line(tmp_path, capsys, case, code, message):
    got, out, err = run(case + ["--output", str(tmp_path / "o")], capsys)
    assert got == code
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_corrupt_and_pickled_checkpoints_are_refused(tmp_path, capsys):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x04garbage")
    code, _, err = run(TINY + ["--checkpoint", str(corrupt), "--output", str(tmp_path / "o")], capsys)
    assert code == 1 and "cannot read checkpoint" in err
    evil = tmp_path / "evil.pth"
    torch.save({"model": Evil()}, evil)
    code, out, err = run(TINY + ["--checkpoint", str(evil), "--output", str(tmp_path / "o")], capsys)
    assert code == 1 and "cannot read checkpoint" in err and "pwned" not in out
    # say what the file is; never pass on torch's advice to unpickle it
    assert "never unpickles" in err and "weights_only" not in err and "False" not in err


def test_info_on_a_non_model_dir(tmp_path, capsys):
    code, _, err = run(["info", "--model", str(tmp_path)], capsys)
    assert code == 1 and "not a mixa model directory" in err


def test_offline_hub_fails_fast_with_advice_and_no_traceback(tmp_path):
    env_cmd = [sys.executable, "-m", "mixa", "convert", "--model", "deit_t", "--keep", "2",
               "--output", str(tmp_path / "o")]
    proc = subprocess.run(env_cmd, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "HF_ENDPOINT": "https://hub.invalid"})
    assert proc.returncode == 1
    assert "--checkpoint" in proc.stderr and "--no-pretrained" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_convert_refuses_a_non_empty_output_unless_overwrite(tmp_path, capsys):
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("mine")
    code, _, err = run(TINY + ["--no-pretrained", "--keep", "2", "--output", str(out_dir)], capsys)
    assert code == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in out_dir.iterdir()] == ["notes.txt"]  # nothing touched
    code, _, err = run(TINY + ["--no-pretrained", "--keep", "2", "--output", str(out_dir), "--overwrite"], capsys)
    assert code == 0, err and mixa.load(out_dir)


@pytest.mark.parametrize("argv,message", [
    (["--num-classes", "-3"], "must be a positive integer"),
    (["--keep", "-1"], "must be >= 0"),
    (["--calib-images", "0"], "must be a positive integer"),
])
def test_out_of_range_numbers_are_usage_errors(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(TINY + ["--no-pretrained", "--output", str(tmp_path / "o")] + argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_info_names_a_truncated_weights_file(tmp_path, capsys):
    code, _, err = run(TINY + ["--no-pretrained", "--keep", "2", "--output", str(tmp_path / "m")], capsys)
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    code, _, err = run(["info", "--model", str(tmp_path / "m")], capsys)
    assert code == 1 and str(weights) in err and "Traceback" not in err


def test_info_on_the_packaged_teacher_says_it_is_its_own_original(tmp_path, capsys):
    from mixa.quickstart import TEACHER_DIR

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # --json into a FIFO / device is written in place, never replaced by a regular file
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE, text=True)
    code, out, _ = run(["info", "--model", str(TEACHER_DIR), "--json", str(fifo)], capsys)
    assert code == 0 and "not converted" in out and "random init" not in out
    assert json.loads(reader.communicate(timeout=30)[0])["architecture"] == "deit_tiny_patch16_224"
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def test_convert_cli_passes_gate_lepe_and_keep_kind_options(tmp_path, capsys):
    code, _, err = run(TINY + ["--no-pretrained", "--keep", "1", "--select", "2", "--attn", "rala", "--gate", "lowrank",
                               "--gate-rank", "4", "--lepe-kernel", "3", "--keep-kind", "relu-quadratic",
                               "--output", str(tmp_path / "m")], capsys)
    assert code == 0, err
    model = mixa.load(tmp_path / "m")
    assert mixa.attention_kinds(model) == ["rala", "rala", "relu-quadratic", "rala"]
    replaced = model.blocks[0].attn
    assert replaced.options["gate"] == "lowrank" and replaced.options["gate_rank"] == 4
    assert replaced.lepe.kernel_size == (3, 3)
    code, _, err = run(TINY + ["--no-pretrained", "--keep", "1", "--gate", "sigmoid",
                               "--output", str(tmp_path / "bad")], capsys)
    assert code == 2 and "sigmoid" in err and len(err.strip().splitlines()) == 1
