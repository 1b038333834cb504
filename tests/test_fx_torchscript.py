"""Converted models trace with torch.fx and script with TorchScript like their timm originals, with the same
numbers; the linear cores keep their fp32 products in a traced graph run under autocast."""
import copy
import inspect

import pytest
import torch
from torchvision.models.feature_extraction import create_feature_extractor

import mixa
from conftest import TINY_MODELS
from mixa.attention import MixAttention, functional as AF, get_attention_kind, list_attention_kinds
from mixa.models import create_model

ATOL = 1e-4
LINEAR_KINDS = list_attention_kinds(linear_only=True)


def converted(family, kind, keep_kind="softmax"):
    """keep=2 of 4 layers. Swin: select 'last' puts the linear layers on stage 1, whose second block has
    shifted windows (the region loop); ViT: 'uniform'."""
    name, kwargs, side = TINY_MODELS[family]
    torch.manual_seed(0)
    base = create_model(name, pretrained=False, num_classes=5, **kwargs)
    model = mixa.convert(base, keep=2, attn=kind, select="last" if family == "swin" else "uniform",
                         keep_kind=keep_kind, progress=False)
    for module in model.modules():  # gates and LePE start neutral (1 and 0): make them count
        if isinstance(module, MixAttention):
            for name, p in module.named_parameters():
                if name.endswith("bias") or name == "lepe.weight" or name.startswith("gate."):
                    p.data.normal_(0, 0.2)
    return model.eval(), torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))


def blocks(model, family):
    if family == "swin":
        return [f"layers.{i}.blocks.{j}" for i, layer in enumerate(model.layers) for j in range(len(layer.blocks))]
    return [f"blocks.{i}" for i in range(len(model.blocks))]


def eager_outputs(model, nodes, x):
    captured = {}
    hooks = [model.get_submodule(node).register_forward_hook(
        lambda m, i, o, node=node: captured.__setitem__(node, o)) for node in nodes]
    logits = model(x)
    for hook in hooks:
        hook.remove()
    return captured, logits


def check_fx_and_torchscript(model, family, x, script_graph=True):
    nodes = blocks(model, family)
    expected, logits = eager_outputs(model, nodes, x)

    # FX: the output of every block, forward and backward, on a copy (its own parameters and gradients)
    extractor = create_feature_extractor(copy.deepcopy(model), {node: node for node in nodes})
    traced = extractor(x)
    for node in nodes:
        torch.testing.assert_close(traced[node], expected[node], rtol=ATOL, atol=ATOL)
    weights = torch.randn_like(expected[nodes[-1]])
    eager_last = eager_outputs(model, nodes[-1:], x)[0][nodes[-1]]
    (eager_last * weights).sum().backward()
    (extractor(x)[nodes[-1]] * weights).sum().backward()
    eager_grads = dict(model.named_parameters())
    compared = 0
    for name, p in extractor.named_parameters():
        reference = eager_grads[name].grad
        if reference is None:
            assert p.grad is None, name
            continue
        torch.testing.assert_close(p.grad, reference, rtol=ATOL, atol=ATOL)
        compared += 1
    assert compared > 0

    # TorchScript: the whole model, and the traced graph scripted (as timm's test_model_forward_fx_torchscript)
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(x), logits, rtol=ATOL, atol=ATOL)
    if not script_graph:
        return
    scripted_graph = torch.jit.script(extractor.eval())
    torch.testing.assert_close(scripted_graph(x)[nodes[-1]], expected[nodes[-1]], rtol=ATOL, atol=ATOL)


# Default run: every kind on ViT, rala (LePE, gate, masked softmax) on Swin's shifted regions; the traced graph
# scripted for rala (every kind runs the same MixAttention code around its core). The rest with -m slow.
CASES = [pytest.param(family, kind, marks=() if family == "vit" or kind == "rala" else pytest.mark.slow)
         for family in ("vit", "swin") for kind in LINEAR_KINDS]


@pytest.mark.parametrize("family,kind", CASES)
def test_converted_models_trace_and_script(family, kind):
    model, x = converted(family, kind)
    assert mixa.attention_kinds(model).count(kind) == 2
    check_fx_and_torchscript(model, family, x, script_graph=kind == "rala")


@pytest.mark.parametrize("family", ["vit", pytest.param("swin", marks=pytest.mark.slow),
                                    pytest.param("deit_distilled", marks=pytest.mark.slow)])
def test_relu_quadratic_kept_layers_trace_and_script(family):
    model, x = converted(family, "rala", keep_kind="relu-quadratic")
    assert "relu-quadratic" in mixa.attention_kinds(model)
    check_fx_and_torchscript(model, "vit" if family == "deit_distilled" else family, x, script_graph=family != "vit")


class MatmulDtypes(torch.utils._python_dispatch.TorchDispatchMode):
    """The dtypes reaching batched matmuls (the attention products) and addmm (the Linear layers)."""

    def __init__(self):
        super().__init__()
        self.seen = {"bmm": set(), "addmm": set()}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if name in self.seen:
            self.seen[name].update(a.dtype for a in args if isinstance(a, torch.Tensor))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("kind", LINEAR_KINDS)
def test_traced_graph_keeps_fp32_products_under_autocast(kind):
    """keep=0: every attention product is a linear core's. Under bf16 autocast the Linear layers run in bf16
    (the check sees autocast at work) while every batched matmul stays fp32, in eager and in the traced graph;
    the outputs are finite."""
    name, kwargs, side = TINY_MODELS["vit"]
    torch.manual_seed(0)
    model = mixa.convert(create_model(name, pretrained=False, num_classes=5, **kwargs), keep=0, attn=kind,
                         progress=False).eval()
    x = 30 * torch.randn(2, 3, side, side)
    graph = torch.fx.symbolic_trace(model)
    assert "_attend_as_one_call" in graph.code
    for runner in (model, graph):
        recorder = MatmulDtypes()
        with torch.autocast("cpu", dtype=torch.bfloat16), recorder:
            out = runner(x)
        assert recorder.seen["addmm"] == {torch.bfloat16}
        assert recorder.seen["bmm"] == {torch.float32}
        assert torch.isfinite(out).all()


def test_cores_trace_with_their_fp32_helpers_as_calls():
    """A core traced on its own keeps _wide / _mm / _saturating_cast as calls (their run-time decisions stay
    out of the graph), computes the same numbers, and keeps fp32 products when the graph runs under autocast."""
    q, k, v = (torch.randn(2, 3, 10, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    for kind in LINEAR_KINDS:
        core = get_attention_kind(kind).core
        optional = {n: None for n, p in inspect.signature(core).parameters.items() if p.default is None}
        graph = torch.fx.symbolic_trace(core, concrete_args=optional)
        assert "_mm" in graph.code and "_saturating_cast" in graph.code
        torch.testing.assert_close(graph(q, k, v), core(q, k, v), rtol=0, atol=0)
        recorder = MatmulDtypes()
        with torch.autocast("cpu", dtype=torch.bfloat16), recorder:
            out = graph(q.bfloat16(), k.bfloat16(), v.bfloat16())
        assert out.dtype == torch.bfloat16 and recorder.seen["bmm"] == {torch.float32}
        torch.jit.script(core)  # and every registered core compiles with TorchScript
    assert AF._saturating_cast(torch.tensor([1e6, -1e6]), torch.float16).tolist() == [65504.0, -65504.0]
