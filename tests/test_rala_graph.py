"""The export-friendly RALA core and head split against the formulas written out the plain way."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mixa.attention import MixAttention
from mixa.attention import functional as AF


def reference_rala(q, k, v, key_mask=None, rope=None, eps=AF.RALA_EPS):
    """RALA as the paper states it, in fp64: alpha_j = N softmax_j(q_g . k_j / sqrt d), k'_j = alpha_j k_j,
    Y_i = kappa(q_i) (1/N) sum_j k'_j^T v_j / (kappa(q_i) . mean_j k'_j + eps), over member tokens only."""
    q, k, v = (t.double() for t in (q, k, v))
    q, k = F.elu(q) + 1, F.elu(k) + 1
    n, d = k.shape[-2], k.shape[-1]
    member = torch.ones(n, dtype=torch.bool) if key_mask is None else key_mask.bool()
    count = int(member.sum())
    q_global = q[..., member, :].mean(dim=-2, keepdim=True)
    logits = (q_global @ k.transpose(-2, -1)).squeeze(-2) / math.sqrt(d)
    alpha = count * torch.softmax(logits.masked_fill(~member, float("-inf")), dim=-1)
    k_prime = alpha.unsqueeze(-1) * k
    den = q @ (k_prime.sum(dim=-2, keepdim=True) / count).transpose(-2, -1) + eps
    if rope is not None:
        q, k_prime = AF.apply_rope(q, *rope), AF.apply_rope(k_prime, *rope)
    return (q @ (k_prime.transpose(-2, -1) @ v / count)) / den


def close_in_fp32(got, want):
    """fp32 rounding of sums whose terms cancel: absolute error relative to the output's scale."""
    return float((got.double() - want).abs().max()) <= 1e-5 * float(want.abs().max())


def qkv(seed=0, n=17, d=8, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(2, 3, n, d, generator=g) for _ in range(3)]


def test_elu_plus_one_is_elu_plus_one():
    x = torch.linspace(-30, 30, 10001)
    assert torch.allclose(AF.elu_plus_one(x), F.elu(x) + 1, rtol=1e-6, atol=1e-7)


def test_elu_plus_one_by_difference_is_bit_for_bit_elu_plus_one():
    x = torch.cat([torch.linspace(-30, 30, 10001), torch.tensor([0.0, -0.0, 1e-30, -1e-30, 3e38])])
    assert torch.equal(AF.elu_plus_one_by_difference(x), AF.elu_plus_one(x))


def test_elu_plus_one_gradient_matches_elu():
    x = torch.linspace(-5, 5, 1001, dtype=torch.float64, requires_grad=True)
    ours = torch.autograd.grad(AF.elu_plus_one(x).sum(), x)[0]
    theirs = torch.autograd.grad((F.elu(x) + 1).sum(), x)[0]
    assert torch.allclose(ours, theirs)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("core", [AF.rala_attention, AF.rala_attention_token_axis_mean])  # .pte / .onnx form
def test_rala_core_equals_reference(masked, core):
    q, k, v = qkv()
    key_mask = (torch.arange(17) % 3 != 0) if masked else None
    got = core(q, k, v, key_mask=key_mask)
    want = reference_rala(q, k, v, key_mask=key_mask)
    rows = key_mask.bool() if masked else slice(None)
    assert close_in_fp32(got[..., rows, :], want[..., rows, :])


def test_rala_core_with_rope_equals_reference():
    q, k, v = qkv(1)
    angles = torch.randn(17, 4)
    rope = (angles.cos().repeat_interleave(2, -1), angles.sin().repeat_interleave(2, -1))
    got = AF.rala_attention(q, k, v, rope=rope)
    assert close_in_fp32(got, reference_rala(q, k, v, rope=rope))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_rala_core_low_precision_is_finite(dtype):
    q, k, v = qkv(2, scale=60.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = AF.rala_attention(q.to(dtype), k.to(dtype), v.to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    want = reference_rala(q.to(dtype), k.to(dtype), v.to(dtype))
    assert torch.allclose(out.double(), want, rtol=2e-2, atol=2e-2 * float(want.abs().max()))


def test_head_split_equals_timm_layout():
    layer = MixAttention(32, 4, kind="rala", num_prefix_tokens=1)
    x = torch.randn(2, 17, 32)
    b, n, c = x.shape
    timm_q, timm_k, timm_v = layer.qkv(x).reshape(b, n, 3, 4, 8).permute(2, 0, 3, 1, 4).unbind(0)
    for ours, theirs in zip(layer._heads(x), (timm_q, timm_k, timm_v)):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("masked", [False, True])
def test_relu_ones_column_form_equals_the_relu_core(masked):
    """The form exported to ExecuTorch (normaliser as a ones column of v) against the written-out formula
    O_i = ReLU(q_i) sum_j ReLU(k_j)^T v_j / (ReLU(q_i) . sum_j ReLU(k_j) + eps), over member keys."""
    q, k, v = qkv(3)
    key_mask = (torch.arange(17) % 4 != 1) if masked else None
    member = torch.ones(17, dtype=torch.bool) if key_mask is None else key_mask
    qd, kd, vd = F.relu(q.double()), F.relu(k.double())[..., member, :], v.double()[..., member, :]
    want = (qd @ (kd.transpose(-2, -1) @ vd)) / (qd @ kd.sum(-2).unsqueeze(-1) + AF.RELU_EPS)
    got = AF.relu_linear_attention_ones_column(q, k, v, key_mask=key_mask)
    assert close_in_fp32(got, want)
    assert close_in_fp32(AF.relu_linear_attention(q, k, v, key_mask=key_mask), want)


def test_linear_core_forms_swap_relu_cores_for_executorch_and_restore_them():
    """mixa.export.lowering: relu layers are exported to ExecuTorch in the ones-column form (same outputs),
    to ONNX in the default form; the model is restored afterwards."""
    import mixa
    from mixa.export.lowering import linear_core_forms
    from mixa.models import create_model

    torch.manual_seed(0)
    model = create_model("deit_tiny_patch16_224", pretrained=False, depth=2, embed_dim=64, num_heads=2,
                         img_size=32, patch_size=8)
    model = mixa.convert(model, keep=0, attn="relu", progress=False).eval()
    cores = lambda: [m._linear_core for m in model.modules() if isinstance(m, MixAttention)]  # noqa: E731
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        with linear_core_forms(model, "executorch"):
            assert cores() == [AF.relu_linear_attention_ones_column] * 2
            during = model(x)
        with linear_core_forms(model, "onnx"):
            assert cores() == [AF.relu_linear_attention] * 2
    assert cores() == [AF.relu_linear_attention] * 2
    torch.testing.assert_close(during, before, rtol=1e-5, atol=1e-6)


def test_linear_core_forms_export_rala_with_the_token_axis_mean_to_onnx():
    import mixa
    from mixa.export.lowering import linear_core_forms
    from mixa.models import create_model

    torch.manual_seed(0)
    model = create_model("deit_tiny_patch16_224", pretrained=False, depth=2, embed_dim=64, num_heads=2,
                         img_size=32, patch_size=8)
    model = mixa.convert(model, keep=1, attn="rala", progress=False).eval()
    rala = [m for m in model.modules() if isinstance(m, MixAttention) and m.kind == "rala"]
    with linear_core_forms(model, "onnx"):
        assert [m._linear_core for m in rala] == [AF.rala_attention_token_axis_mean]
    with linear_core_forms(model, "executorch"):
        assert [m._linear_core for m in rala] == [AF.rala_attention]
    assert [m._linear_core for m in rala] == [AF.rala_attention]


CORES = {"relu": "relu_linear_attention", "stella": "stella_attention", "rala": "rala_attention"}


def test_one_image_feature_form_is_the_feature_core_for_one_image():
    """The hedgehog kind's one-image core (features as (H, N, f), v as (N, H, d), the result as (H, d, N))
    against normalised linear attention written out with N x N products in fp64."""
    q, k, v = (t[0] for t in qkv(7))
    weight_q, weight_k = (torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    fq, fk = AF.hedgehog_features(q, weight_q), AF.hedgehog_features(k, weight_k)
    scores = fq.double() @ fk.double().transpose(-2, -1)
    want = scores @ v.double() / (scores.sum(-1, keepdim=True) + AF.HEDGEHOG_EPS)
    got = AF.feature_linear_attention_one_image(fq, fk, v.transpose(0, 1))
    assert got.shape == (3, 8, 17) and close_in_fp32(got.transpose(-2, -1), want)


def reference(kind, q, k, v):
    """The kind's attention written out with N x N products in fp64."""
    if kind == "rala":
        return reference_rala(q, k, v)
    n, d = k.shape[-2], k.shape[-1]
    scores = F.relu(q.double()) @ F.relu(k.double()).transpose(-2, -1)
    if kind == "relu":
        return (scores @ v.double()) / (scores.sum(-1, keepdim=True) + AF.RELU_EPS)
    return scores @ v.double() / (n * math.sqrt(d))


@pytest.mark.parametrize("kind", ["relu", "stella", "rala"])
def test_tokens_last_forms_are_the_cores_transposed(kind):
    """The forms exported to ExecuTorch (q and v given as (B, H, d, N), the result the same way) against the
    formulas written out."""
    q, k, v = qkv(5)
    n, d = k.shape[-2], k.shape[-1]
    got = getattr(AF, CORES[kind] + "_tokens_last")(q.transpose(-2, -1), k, v.transpose(-2, -1))
    assert got.shape == (2, 3, d, n) and close_in_fp32(got.transpose(-2, -1), reference(kind, q, k, v))


@pytest.mark.parametrize("kind", ["relu", "stella", "rala"])
def test_one_image_forms_are_the_cores_for_one_image(kind):
    """The forms exported to ONNX at batch 1 (q, k, v of one image as (N, H, d), the result as (H, d, N))
    against the formulas written out."""
    q, k, v = (t[:1] for t in qkv(6))
    n, d = k.shape[-2], k.shape[-1]
    got = getattr(AF, CORES[kind] + "_one_image")(*(t[0].transpose(0, 1) for t in (q, k, v)))
    assert got.shape == (3, d, n) and close_in_fp32(got.transpose(-2, -1), reference(kind, q, k, v)[0])
