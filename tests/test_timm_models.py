"""ravlt_* as timm models: the model API timm's own ``tests/test_models.py`` relies on (checked here with our
own code on a tiny configuration: CI has no copy of timm's tests), and, slow-marked, timm's real test file run
against ravlt_* when timm's sdist can be fetched from the package index."""
import copy
import fnmatch
import inspect
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import mixa.models  # noqa: F401  (registers ravlt_*)
import timm
from timm.layers import set_scriptable
from timm.models import get_notrace_functions, get_notrace_modules, group_parameters

TINY = dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), head_dim=40)
SIDE = 64  # four stages: 16, 8, 4, 2 tokens per side


def tiny(seed=0, **kwargs):
    torch.manual_seed(seed)
    return timm.create_model("ravlt_t", **{**TINY, "num_classes": 7, **kwargs}).eval()


def image(batch=2, seed=1):
    return torch.randn(batch, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))


def test_registered_with_a_config_per_variant():
    assert timm.list_models("ravlt_*") == ["ravlt_b", "ravlt_l", "ravlt_s", "ravlt_t"]
    for name in timm.list_models("ravlt_*"):
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg.input_size == (3, 224, 224) and cfg.pool_size == (7, 7)
        assert cfg.first_conv == "patch_embed.proj.0" and cfg.classifier == "head"


def test_api_contract():
    model = tiny()
    with pytest.raises(TypeError):
        timm.create_model("ravlt_t", not_a_model_arg=1)
    assert inspect.signature(model.reset_classifier).parameters["global_pool"].default is None
    groups = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    assert len(set(groups.values())) > 1
    names = [n for n, _ in [*model.named_parameters(), *model.named_buffers()]]
    for keyword in model.no_weight_decay_keywords():  # (RoPE: the official model's buffer)
        assert any(keyword in n for n in names), keyword
    state = model.state_dict()
    assert model.in_chans == 3 and f"{model.pretrained_cfg['first_conv']}.weight" in state
    assert "head.weight" in state and model.output_fmt == "NCHW"


def test_pooling_and_classifier_removal_agree():
    """Unpooled maps are (B, C, H, W) as output_fmt says, and their spatial mean is the pooled output."""
    model, x = tiny(), image()
    features = model.forward_features(x)
    assert features.shape == (2, model.num_features, SIDE // 32, SIDE // 32)
    pre_logits = model.forward_head(features, pre_logits=True)
    assert pre_logits.shape == (2, model.head_hidden_size)

    model.reset_classifier(0)
    assert model.num_classes == 0
    torch.testing.assert_close(model(x), pre_logits)
    model.reset_classifier(0, "")
    maps = model(x)
    assert maps.shape == (2, model.head_hidden_size, SIDE // 32, SIDE // 32)
    torch.testing.assert_close(maps.mean(dim=(2, 3)), pre_logits)

    rebuilt = tiny(num_classes=0, global_pool="")
    rebuilt.load_state_dict(model.state_dict())      # strict: no head either
    torch.testing.assert_close(rebuilt(x), maps)
    logits_maps = tiny(global_pool="")(x)           # a head on unpooled maps: class maps, NCHW
    torch.testing.assert_close(logits_maps.mean(dim=(2, 3)), tiny()(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(3, "max")


def test_factory_device_and_dtype_reach_every_tensor():
    model = timm.create_model("ravlt_t", **TINY, device="meta", dtype=torch.float64)
    tensors = [*model.named_parameters(), *model.named_buffers()]
    assert {t.device.type for _, t in tensors} == {"meta"}
    assert {t.dtype for n, t in tensors if t.is_floating_point()} == {torch.float64}
    model.reset_classifier(0)
    model.reset_classifier(5)
    assert model.head.weight.device.type == "meta" and model.head.weight.dtype == torch.float64

    frozen = tiny().requires_grad_(False)
    frozen.reset_classifier(0)
    frozen.reset_classifier(0, "")
    assert not [n for n, p in frozen.named_parameters() if p.requires_grad]


def test_dtype_change_after_forward():
    model, x = tiny(), image()
    model(x)  # fills the RoPE table cache in fp32
    model.to(torch.bfloat16)
    out = model(x.bfloat16())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_torchscript_equals_eager():
    model, x = tiny(), image()
    with set_scriptable(True):
        scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(x), model(x), rtol=1e-4, atol=1e-4)


def _fx_tracer_kwargs():
    return dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())


def test_fx_forward_backward_and_fx_torchscript():
    """torch.fx feature extraction of every stage (as timm's FX tests trace it), forward and backward against
    eager, and the traced graph scripted."""
    model, x = tiny(), image()
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=_fx_tracer_kwargs())
    assert train_nodes == eval_nodes
    stages = {f"layers.{i}.blocks.0": f"stage{i}" for i in range(4)}  # module names: their outputs
    extractor = create_feature_extractor(copy.deepcopy(model), {**stages, eval_nodes[-1]: "logits"},
                                         tracer_kwargs=_fx_tracer_kwargs())
    captured = {}
    hooks = [model.get_submodule(node).register_forward_hook(
        lambda m, i, o, key=key: captured.__setitem__(key, o)) for node, key in stages.items()]
    expected = model(x)
    for h in hooks:
        h.remove()
    traced = extractor(x)
    torch.testing.assert_close(traced["logits"], expected, rtol=1e-4, atol=1e-4)
    for key in stages.values():
        torch.testing.assert_close(traced[key], captured[key], rtol=1e-4, atol=1e-4)

    model.train()
    extractor.train()
    model(x).sum().backward()
    extractor(x)["logits"].sum().backward()
    grads = dict(model.named_parameters())
    for name, p in extractor.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-4, atol=1e-4)

    extractor.eval()  # (BN statistics moved in both copies alike)
    scripted = torch.jit.script(extractor)
    torch.testing.assert_close(scripted(x)["logits"], model.eval()(x), rtol=1e-4, atol=1e-4)


def test_intermediates_checkpointing_and_pruning():
    model, x = tiny(), image()
    final, taps = model.forward_intermediates(x)
    torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
    assert [t.shape[1:] for t in taps] == [(c, SIDE // r, SIDE // r) for c, r in zip(TINY["embed_dims"],
                                                                                       (4, 8, 16, 32))]
    expected = model(x)
    model.set_grad_checkpointing()
    model.train()
    for module in model.modules():  # train mode (checkpointing runs), but BN's eval maths; no drop path here
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)
    model.set_grad_checkpointing(False)
    model.eval()

    features = tiny(features_only=True)  # the same seed: the same weights
    for got, want in zip(features(x), taps):
        torch.testing.assert_close(got, want, rtol=0, atol=0)

    for i in range(4):
        selected = model.forward_intermediates(x, indices=[i], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(selected[0], taps[i], rtol=0, atol=0)
        pruned = copy.deepcopy(model)
        take = pruned.prune_intermediate_layers([i], prune_norm=True)
        torch.testing.assert_close(pruned.forward_intermediates(x, indices=take, intermediates_only=True)[0],
                                   taps[i], rtol=0, atol=0)
        if i < 3:  # without the head, the features end at the tap
            torch.testing.assert_close(pruned.forward_features(x), taps[i], rtol=0, atol=0)


# -- timm's own test file, slow: fetched from the package index (timm's sdist ships tests/) --------------------
def _timm_tests(tmp_path: Path) -> Path:
    """timm's tests/ folder for the installed timm version: $MIXA_TIMM_SDIST (a .tar.gz) or pip download."""
    sdist = os.environ.get("MIXA_TIMM_SDIST")
    if not sdist:
        result = subprocess.run([sys.executable, "-m", "pip", "download", f"timm=={timm.__version__}",
                                 "--no-binary", ":all:", "--no-deps", "-d", str(tmp_path)],
                                capture_output=True, text=True, timeout=300)
        found = sorted(tmp_path.glob("timm-*.tar.gz"))
        if result.returncode or not found:
            pytest.skip(f"timm's sdist not reachable: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
        sdist = found[0]
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if "/tests/" in m.name and m.isfile()]
        archive.extractall(tmp_path, members=members, filter="data")
    tests = next(tmp_path.glob("timm-*/tests"))
    with open(tests / "conftest.py", "a") as conftest:
        conftest.write("\nimport mixa.models  # registers ravlt_* before test_models.py collects\n")
    return tests


@pytest.mark.slow
def test_timm_test_models_pass_for_ravlt(tmp_path):
    """timm's tests/test_models.py -k ravlt (every test timm runs for a model registered like ravlt_*)."""
    tests = _timm_tests(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(mixa.models.__file__).parents[2]),
                                                        os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "pytest", "test_models.py", "-k", "ravlt", "-q",
                             "-p", "no:cacheprovider", "-W", "ignore", "-o", "addopts=", "--tb=line"],
                            cwd=tests, env=env, capture_output=True, text=True, timeout=3600)
    summary = (result.stdout.strip().splitlines() or [""])[-1]
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary
    assert fnmatch.fnmatch(summary, "*32 passed*"), summary   # 8 tests x 4 variants, none skipped
