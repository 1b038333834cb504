"""What a new user hit (issue 19): each defect, checked the way the user met it."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mixa
from mixa.cli import main
from mixa.data.synthetic import write_image_folder

# the packaged 32 px teacher: unconverted, its config records the random-init deit_tiny it was trained from
TEACHER_DIR = Path(mixa.__file__).parent / "assets" / "teacher"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """The packaged teacher's task as an ImageFolder (train/ and val/), small."""
    return write_image_folder(tmp_path_factory.mktemp("shapes"), seed=3, sizes={"train": 48, "val": 32},
                              task="shapes")


# --- defect 1: the reference of an unconverted model is the model itself ---------------------------------

def test_eval_of_an_unconverted_saved_model_agrees_fully_with_itself(shapes, tmp_path, capsys):
    # Its config records the random-init deit_tiny it was trained from; that is not its reference.
    out = tmp_path / "eval.json"
    assert main(["eval", "-m", str(TEACHER_DIR), "--data-dir", str(shapes), "-j", "0", "--no-progress",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["agreement_top1"] == 100.0
    assert abs(result["mean_kl"]) < 1e-6


def test_eval_of_a_random_init_timm_name_is_its_own_reference(shapes, capsys):
    from mixa.distill import evaluate

    result = evaluate("deit_tiny_patch16_224", shapes, teacher="auto", workers=0, progress=False,
                      pretrained=False, num_classes=8, img_size=32, patch_size=8, depth=2, embed_dim=32,
                      num_heads=2)
    assert result["agreement_top1"] == 100.0 and abs(result["mean_kl"]) < 1e-6


def test_every_consumer_of_the_recorded_original_resolves_it_alike(tmp_path):
    """distill's and transfer's default teacher and eval's reference: the model itself when unconverted
    (its own weights), the recorded original when converted (the saved teacher it came from)."""
    from mixa.distill.teacher import build_teacher, recorded_original

    teacher = mixa.load(TEACHER_DIR)
    own = build_teacher("auto", recorded_original(str(TEACHER_DIR), teacher))
    assert own is not teacher  # a frozen copy: training the student leaves its teacher alone
    for name, tensor in teacher.state_dict().items():
        assert torch.equal(own.state_dict()[name], tensor), name

    student = mixa.convert(mixa.load(TEACHER_DIR), keep=6, attn="relu")
    mixa.save(student, tmp_path / "student")
    for source in (str(tmp_path / "student"), student):
        reference = build_teacher("auto", recorded_original(source))
        assert mixa.attention_kinds(reference) == ["softmax"] * 12
        for name, tensor in teacher.state_dict().items():
            assert torch.equal(reference.state_dict()[name], tensor), name


# --- defect 2: `import mixa, timm; timm.create_model("ravlt_s")` as the README says, --help stays light ---

def _python(code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, **kwargs)


def test_import_mixa_then_timm_knows_ravlt_and_the_cli_stays_light():
    done = _python("import sys, mixa\n"
                   "assert 'torch' not in sys.modules and 'timm' not in sys.modules, 'import mixa loaded torch'\n"
                   "import timm\n"
                   "model = timm.create_model('ravlt_s', num_classes=100, drop_path_rate=0.15)\n"
                   "print(type(model).__name__)")
    assert done.returncode == 0 and done.stdout.strip() == "RAVLT", done.stderr
    done = _python("import timm, mixa\nprint(timm.is_model('ravlt_t'))")  # timm first: registered at once
    assert done.stdout.strip() == "True", done.stderr
    done = _python("import sys\nfrom mixa.cli import main\n"
                   "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
                   "print(sorted(m for m in ('torch', 'timm') if m in sys.modules), file=sys.stderr)")
    assert done.stderr.strip() == "[]" and done.stdout.startswith("usage: mixa")


# --- defect 5: a closed pipe ends quietly ------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["--help"], ["convert", "--help"], ["info", "-m", str(TEACHER_DIR)]],
                         ids=["help", "convert-help", "info"])
def test_a_reader_that_goes_away_ends_the_command_quietly(argv):
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first byte: every write meets a closed pipe
    try:
        done = subprocess.run([sys.executable, "-m", "mixa", *argv], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=300)
    finally:
        os.close(write)
    assert done.stderr == "", done.stderr
    assert done.returncode in (0, 141)  # 141: as a Unix tool killed by SIGPIPE (argparse ends --help with 0)


# --- defect 7: a read-only output directory -------------------------------------------------------------

def _read_only_mount(path: Path) -> bool:
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_a_read_only_output_is_one_line_naming_it(tmp_path, capsys):
    ro = tmp_path / "ro"
    if not _read_only_mount(ro):
        pytest.skip("cannot mount a read-only tmpfs here (needs root); the simulated test below still runs")
    try:
        code = main(["convert", "--model", str(TEACHER_DIR), "--keep", "6", "--attn", "relu",
                     "--output", str(ro / "student")])
        err = capsys.readouterr().err
        assert code == 1
        assert err == f"mixa convert: error: cannot write {ro / 'student'}: read-only file system\n"
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_a_read_only_file_system_seen_anywhere_is_named_in_one_line(tmp_path, monkeypatch, capsys):
    """Wherever a command meets EROFS (here: the mkdir of --output), the line names the path."""
    target = tmp_path / "out" / "student"
    real_mkdir = Path.mkdir

    def read_only_mkdir(self, *args, **kwargs):
        if str(self).startswith(str(tmp_path / "out")):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only_mkdir)
    code = main(["convert", "--model", str(TEACHER_DIR), "--keep", "6", "--attn", "relu", "--output", str(target)])
    assert code == 1
    assert capsys.readouterr().err == f"mixa convert: error: cannot write {target}: read-only file system\n"


# --- defect 8: an interrupted run says how to resume ---------------------------------------------------

def test_an_interrupted_distill_says_how_to_resume(shapes, tmp_path, monkeypatch, capsys):
    import mixa.distill

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mixa.distill, "distill", interrupted)
    argv = ["distill", "--model", str(TEACHER_DIR), "--data-dir", str(shapes), "--output", str(tmp_path / "run")]
    assert main(argv) == 130
    assert capsys.readouterr().err == (f"mixa distill: interrupted; continue it with: mixa {' '.join(argv)}"
                                       " --resume\n")


# --- defect 8: unreadable images counted per split ----------------------------------------------------------

def test_unreadable_images_are_counted_per_split(shapes, tmp_path, capsys):
    import shutil

    from mixa.distill import distill

    data = tmp_path / "data"
    shutil.copytree(shapes, data)
    train_class = sorted(p for p in (data / "train").iterdir())[0]
    val_class = sorted(p for p in (data / "val").iterdir())[0]
    (train_class / "broken.png").write_bytes(b"not an image")
    (val_class / "broken.png").write_bytes(b"not an image either")
    student = mixa.convert(mixa.load(TEACHER_DIR), keep=10, attn="relu", select="last")
    result = distill(student, data, tmp_path / "run", recipe="tiny", epochs=1, workers=0, progress=False,
                     auto_augment=None, mixup=0.0, cutmix=0.0, reprob=0.0)
    assert (result["skipped_train_images"], result["skipped_val_images"]) == (1, 1)
    assert ("epoch 1: 1 unreadable training image(s) replaced by readable ones, 1 unreadable val image(s) "
            "left out") in "".join(capsys.readouterr())


# --- defect 9: the synthetic data CLI checks before writing -------------------------------------------------

@pytest.mark.parametrize("train", [5, 8])
def test_a_split_that_misses_classes_is_refused_before_anything_is_written(tmp_path, capsys, train):
    from mixa.data.synthetic import main as synthetic

    out = tmp_path / "data"
    assert synthetic(["--task", "extremes", "--output", str(out), "--train", str(train), "--val", "64",
                      "--no-progress"]) == 2
    assert "split 'train' with" in capsys.readouterr().err
    assert not out.exists()
