"""The saved-model format (mixa.saved): any timm model records itself, rebuilds exactly, and the files it
writes behave like normal files. Plus the package-wide import rules the format's single owner depends on."""
import ast
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import mixa
from mixa.cli import main
from mixa.errors import MixaError, UsageError
from mixa.saved import CONFIG_NAME, WEIGHTS_NAME, build_original, read_config

PACKAGE = Path(mixa.__file__).parent

TIMM_MODELS = {
    "deit": ("deit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=4, embed_dim=32, num_heads=2,
                                           num_classes=5, drop_path_rate=0.1)),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", dict(img_size=32, patch_size=8, depth=3, embed_dim=32,
                                                               num_heads=2, num_classes=4)),
    "swin": ("swin_tiny_patch4_window7_224", dict(img_size=64, window_size=4, depths=(1, 1, 2, 1), embed_dim=16,
                                                  num_heads=(1, 2, 2, 4), num_classes=3)),
}


def _images(model, n=2):
    return torch.randn(n, *model.pretrained_cfg["input_size"]) if model.pretrained_cfg["input_size"][1] != 224 \
        else torch.randn(n, 3, 64, 64)


@pytest.mark.parametrize("family", sorted(TIMM_MODELS))
def test_a_plain_timm_model_converted_saves_and_loads_exactly(tmp_path, family):
    name, kwargs = TIMM_MODELS[family]
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs)  # built by timm directly, not through mixa
    converted = mixa.convert(model, keep=1, attn="rala", progress=False)
    mixa.save(converted, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / CONFIG_NAME).read_text())
    # the record came from the model itself: every non-default constructor setting, nothing else
    expected = {k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()}
    assert cfg["architecture"] == name and cfg["kwargs"] == expected
    assert cfg["base"]["pretrained"] is None  # an in-memory module: the origin of its weights is unknown
    loaded = mixa.load(tmp_path / "m")
    x = torch.randn(2, 3, *((32, 32) if family != "swin" else (64, 64)))
    assert torch.equal(loaded(x), converted.eval()(x))
    assert mixa.attention_kinds(loaded) == mixa.attention_kinds(converted)
    # saving the loaded model again records the same thing
    mixa.save(loaded, tmp_path / "again")
    assert json.loads((tmp_path / "again" / CONFIG_NAME).read_text()) == cfg


def test_unknown_origin_needs_an_explicit_teacher(tmp_path):
    name, kwargs = TIMM_MODELS["deit"]
    mixa.save(mixa.convert(timm.create_model(name, **kwargs), keep=1, attn="relu", progress=False), tmp_path / "m")
    with pytest.raises(MixaError, match="unknown origin.*--teacher"):
        build_original(read_config(tmp_path / "m").original)


def test_a_model_that_cannot_be_rebuilt_is_refused_and_nothing_is_written(tmp_path):
    name, kwargs = TIMM_MODELS["deit"]
    model = timm.create_model(name, **kwargs)
    model.blocks[1].mlp.fc2 = torch.nn.Linear(model.blocks[1].mlp.fc2.in_features, 16)  # surgery no kwarg explains
    with pytest.raises(UsageError, match="blocks.1.mlp.fc2"):
        mixa.save(model, tmp_path / "m")
    assert not (tmp_path / "m").exists()
    plain = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(UsageError, match="not built by timm.create_model"):
        mixa.save(plain, tmp_path / "p")


def test_the_original_of_a_converted_saved_model_is_the_saved_model(tmp_path):
    """convert --model DIR: a trained plain model saved by mixa is the original, with its own weights."""
    name, kwargs = TIMM_MODELS["deit"]
    torch.manual_seed(1)
    teacher = timm.create_model(name, **kwargs)
    mixa.save(teacher, tmp_path / "teacher")
    code = main(["convert", "--model", str(tmp_path / "teacher"), "--keep", "2", "--attn", "stella",
                 "--output", str(tmp_path / "student")])
    assert code == 0
    original = build_original(read_config(tmp_path / "student").original)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(original.eval()(x), teacher.eval()(x))


def test_format_1_configs_still_load():
    """The packaged teacher was written by mixa 0.1 (format 1)."""
    cfg = read_config(PACKAGE / "assets" / "teacher")
    assert cfg.architecture == "deit_tiny_patch16_224" and cfg.kwargs["img_size"] == 32 and not cfg.converted
    model = mixa.load(PACKAGE / "assets" / "teacher")
    assert model.pretrained_cfg["mean"] == (0.5, 0.5, 0.5) or list(model.pretrained_cfg["mean"]) == [0.5] * 3


def test_written_files_get_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        name, kwargs = TIMM_MODELS["deit"]
        mixa.save(timm.create_model(name, **kwargs), tmp_path / "m")
    finally:
        os.umask(old)
    for file in (WEIGHTS_NAME, CONFIG_NAME):
        assert stat.S_IMODE((tmp_path / "m" / file).stat().st_mode) == 0o644


def _module_imports(path: Path, package_root: Path):
    """Everything ``path`` imports, at module level or inside functions (a function-level import does not
    break a cycle, it only hides it)."""
    tree = ast.parse(path.read_text())
    parts = list(path.relative_to(package_root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    package = parts if path.name == "__init__.py" else parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                yield module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None


def test_the_package_has_no_import_cycle():
    files = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        deps = set()
        for module, item in _module_imports(path, PACKAGE):
            if f"{module}.{item}" in files:
                deps.add(f"{module}.{item}")
            elif module in files:
                deps.add(module)
        graph[name] = deps - {name}
    # a package's __init__ that re-exports its submodules is not a cycle: drop edges from a module to
    # the packages that contain it
    for name in graph:
        graph[name] = {d for d in graph[name] if not name.startswith(d + ".")}
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for dep in graph.get(node, ()):
            if state.get(dep) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_the_cli_loads_no_torch_before_a_command_runs():
    code = ("import sys; from mixa.cli import build_parser; build_parser(); "
            "heavy = sorted(m for m in ('torch', 'timm', 'onnx', 'onnxruntime') if m in sys.modules); "
            "print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_an_unwritable_output_names_the_users_path_not_a_temporary_file(tmp_path):
    from mixa.io import make_temp_dir, write_json

    (tmp_path / "afile").write_text("")
    with pytest.raises(MixaError, match=r"cannot write .*afile/x\.json: .*afile is not a directory"):
        write_json(tmp_path / "afile" / "x.json", {})
    old = os.umask(0o022)
    try:
        assert stat.S_IMODE(make_temp_dir(tmp_path, ".run.").stat().st_mode) == 0o755  # not mkdtemp's 0700
    finally:
        os.umask(old)


# Function-level imports hide cycles and scatter a module's dependencies; mixa keeps them for one reason:
# to defer a heavy dependency that a path must not need. Everything else imports at module level.
DEFERRED_OK = {"onnx", "onnxruntime", "executorch", "torchao", "matplotlib",  # optional or heavy tooling
               "importlib"}                                                    # mixa/__init__'s lazy API
# Modules that must import without torch, so their torch-side imports wait inside functions:
TORCH_FREE = {
    "mixa/cli": "the CLI parses and answers --help / usage errors before torch loads",
    "mixa/quickstart.py": "the CLI reads its defaults while building the parser",
    "mixa/data/synthetic.py": "the task generator is numpy; the torch Dataset view is optional",
    "mixa/profile/pte.py": "profiling a .pte needs executorch's runtime, not mixa's torch side",
    "mixa/export/executorch.py": "executorch (the edge extra) and its torch export stack load on use",
    "mixa/export/lowering.py": "mixa/export/executorch.py imports it; the LayerNorm form's torch side loads "
                               "once there is a model to switch",
}


def test_function_level_imports_only_defer_heavy_dependencies():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).as_posix()
        if any(rel == key or rel.startswith(key + "/") for key in TORCH_FREE):
            continue
        tree = ast.parse(path.read_text())
        for func in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            for node in ast.walk(func):
                if isinstance(node, ast.Import):
                    module = node.names[0].name
                elif isinstance(node, ast.ImportFrom):
                    module = "." * node.level + (node.module or "")
                else:
                    continue
                if module.split(".")[0] not in DEFERRED_OK:
                    offenders.append(f"{rel}:{node.lineno} {module}")
    assert not offenders, "import at module level instead: " + ", ".join(sorted(set(offenders)))
