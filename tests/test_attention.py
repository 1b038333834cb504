"""Attention cores against independent O(N^2) computations of their formulas, and the module around them."""
import math
import types

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from mixa.attention import MixAttention, functional as AF, get_attention_kind, list_attention_kinds, list_keep_kinds
from mixa.attention.modules import regions_from_window_mask

torch.manual_seed(0)


def qkv(b=2, h=3, n=37, d=16, scale=1.0, dtype=torch.float64):
    return [(torch.randn(b, h, n, d, dtype=torch.float64) * scale).to(dtype) for _ in range(3)]


# ---- explicit quadratic references (written from ATTENTION.md, not from the cores) ----

def ref_softmax(q, k, v):
    a = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return a.softmax(-1) @ v


def ref_relu(q, k, v, eps=1e-5):
    a = F.relu(q) @ F.relu(k).transpose(-1, -2)          # N x N
    return (a @ v) / (a.sum(-1, keepdim=True) + eps)


def ref_stella(q, k, v):
    n, d = q.shape[-2], q.shape[-1]
    a = F.relu(q) @ F.relu(k).transpose(-1, -2) / (n * math.sqrt(d))
    return a @ v


def ref_rope(x, cos, sin):
    """Rotation of consecutive pairs as complex multiplication by exp(i theta)."""
    pairs = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())
    theta = torch.atan2(sin[..., 0::2], cos[..., 0::2])
    return torch.view_as_real(pairs * torch.polar(torch.ones_like(theta), theta)).flatten(-2)


def ref_rala(q, k, v, eps=1e-6, rope=None):
    n, d = q.shape[-2], q.shape[-1]
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
    q_g = phi_q.mean(-2, keepdim=True)
    alpha = n * torch.softmax((q_g @ phi_k.transpose(-1, -2)) / math.sqrt(d), dim=-1)  # (B,H,1,N)
    k_prime = phi_k * alpha.transpose(-1, -2)
    q_num, k_num = (phi_q, k_prime) if rope is None else (ref_rope(phi_q, *rope), ref_rope(k_prime, *rope))
    numerator = (q_num @ k_num.transpose(-1, -2)) @ v / n          # N x N, then (1/N) sum_j
    denominator = phi_q @ k_prime.mean(-2, keepdim=True).transpose(-1, -2) + eps
    return numerator / denominator


def ref_relu_quadratic(q, k, v):
    """ATTENTION.md section 1: O = (ReLU(Q) ReLU(K)^T / (N sqrt(d))) V, entry by entry."""
    n, d = q.shape[-2], q.shape[-1]
    a = torch.einsum("bhid,bhjd->bhij", F.relu(q), F.relu(k)) / (n * math.sqrt(d))
    return torch.einsum("bhij,bhjd->bhid", a, v)


REFERENCES = {"softmax": ref_softmax, "relu": ref_relu, "stella": ref_stella, "rala": ref_rala,
              "relu-quadratic": ref_relu_quadratic}


@pytest.mark.parametrize("kind", ["softmax", "relu", "stella", "rala", "relu-quadratic"])
def test_core_matches_quadratic_formula(kind):
    q, k, v = qkv()
    out = get_attention_kind(kind).core(q, k, v)
    torch.testing.assert_close(out, REFERENCES[kind](q, k, v), rtol=1e-9, atol=1e-9)


def test_relu_matches_timm_litemla():
    from timm.models.efficientvit_mit import LiteMLA

    q, k, v = qkv(dtype=torch.float32)
    fake = types.SimpleNamespace(eps=1e-5)
    # LiteMLA gets kernelised q, k and v padded with a ones column (the denominator in the same matmul).
    timm_out = LiteMLA._attn(fake, F.relu(q), F.relu(k), F.pad(v, (0, 1), value=1.0))
    torch.testing.assert_close(AF.relu_linear_attention(q, k, v), timm_out, rtol=1e-5, atol=1e-5)


def rope_tables(n, d):
    angle = torch.rand(d // 2, dtype=torch.float64) * 3
    pos = torch.arange(n, dtype=torch.float64)[:, None] * angle.repeat_interleave(2)[None]
    return pos.cos(), pos.sin()


def test_apply_rope_is_pairwise_complex_rotation():
    x = torch.randn(2, 3, 11, 8, dtype=torch.float64)
    cos, sin = rope_tables(11, 8)
    torch.testing.assert_close(AF.apply_rope(x, cos, sin), ref_rope(x, cos, sin))


def test_rala_rope_in_numerator_only():
    q, k, v = qkv(n=25)
    rope = rope_tables(25, 16)
    torch.testing.assert_close(AF.rala_attention(q, k, v, rope=rope), ref_rala(q, k, v, rope=rope),
                               rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", ["relu", "stella", "rala"])
def test_key_mask_equals_attention_over_the_subset(kind):
    q, k, v = qkv(b=1, h=2, n=20)
    member = torch.zeros(1, 1, 20, dtype=torch.bool)
    member[..., 3:11] = True
    core = get_attention_kind(kind).core
    masked = core(q, k, v, key_mask=member)[:, :, 3:11]
    alone = core(q[:, :, 3:11], k[:, :, 3:11], v[:, :, 3:11])
    torch.testing.assert_close(masked, alone, rtol=1e-9, atol=1e-9)


class ShapeRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.shapes, self.matmul_dtypes = [], set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        if func.__name__.split(".")[0] in ("mm", "bmm", "addmm", "matmul", "baddbmm"):
            self.matmul_dtypes.update(a.dtype for a in args if isinstance(a, torch.Tensor))
        return out


@pytest.mark.parametrize("kind", ["relu", "stella", "rala"])
def test_linear_cores_never_form_n_by_n_and_reduce_in_fp32(kind):
    n = 1024
    q, k, v = qkv(b=1, h=2, n=n, d=16, dtype=torch.bfloat16)
    recorder = ShapeRecorder()
    with recorder, torch.autocast("cpu", dtype=torch.bfloat16):
        out = get_attention_kind(kind).core(q, k, v)
    assert out.dtype == torch.bfloat16
    assert not [s for s in recorder.shapes if sum(dim >= n for dim in s) >= 2]
    assert recorder.matmul_dtypes == {torch.float32}


@pytest.mark.parametrize("dtype,scale", [(torch.float16, 30.0), (torch.float16, 250.0),
                                         (torch.bfloat16, 30.0), (torch.bfloat16, 1e4)])
@pytest.mark.parametrize("kind", ["relu", "stella", "rala"])
def test_low_precision_stable_at_16k_tokens(kind, dtype, scale):
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 1, 16384, 64, generator=gen) * scale for _ in range(3))
    core = get_attention_kind(kind).core
    out = core(q.to(dtype), k.to(dtype), v.to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    if kind != "stella":  # relu/rala are weighted means of v: close to the fp32 result of the same inputs
        exact = core(q.to(dtype).float(), k.to(dtype).float(), v.to(dtype).float())
        assert (out.float() - exact).abs().max() <= 0.02 * exact.abs().max()


def test_registry_lists_kinds_and_costs():
    assert list_attention_kinds() == ["softmax", "relu-quadratic", "relu", "stella", "rala", "hedgehog"]
    assert list_attention_kinds(linear_only=True) == ["relu", "stella", "rala", "hedgehog"]
    assert list_keep_kinds() == ["softmax", "relu-quadratic"]
    assert get_attention_kind("softmax").core_macs(2, 10, 4) == 2 * 2 * 10 * 10 * 4
    with pytest.raises(ValueError, match="unknown attention kind"):
        get_attention_kind("performer")


# ---- the module ----

def plain_kernelised(module, x, kind):
    b, n, c = x.shape
    q, k, v = module.qkv(x).reshape(b, n, 3, module.num_heads, -1).permute(2, 0, 3, 1, 4)
    y = REFERENCES[kind](q, k, v).transpose(1, 2).reshape(b, n, c)
    return module.proj(y)


@pytest.mark.parametrize("kind", ["relu", "stella", "rala"])
def test_new_parameters_start_neutral(kind):
    module = MixAttention(32, 4, kind=kind, num_prefix_tokens=1).double()
    x = torch.randn(2, 1 + 25, 32, dtype=torch.float64)
    torch.testing.assert_close(module(x), plain_kernelised(module, x, kind), rtol=1e-9, atol=1e-9)


def test_rala_lepe_skips_prefix_tokens_and_gate_multiplies():
    module = MixAttention(32, 4, kind="rala", num_prefix_tokens=2).double()
    torch.nn.init.normal_(module.lepe.weight)
    x = torch.randn(1, 2 + 16, 32, dtype=torch.float64)
    plain = plain_kernelised(module, x, "rala")
    out = module(x)
    torch.testing.assert_close(out[:, :2], plain[:, :2])        # prefix tokens: no LePE term
    assert not torch.allclose(out[:, 2:], plain[:, 2:])
    # LePE = depth-wise conv of v on the 4 x 4 grid, added before the projection
    b, n, c = x.shape
    v = module.qkv(x)[..., 2 * c:][:, 2:].transpose(1, 2).reshape(1, c, 4, 4)
    lepe = F.conv2d(v, module.lepe.weight, module.lepe.bias, padding=2, groups=c).flatten(2).transpose(1, 2)
    q, k, vv = module.qkv(x).reshape(b, n, 3, 4, 8).permute(2, 0, 3, 1, 4)
    y = ref_rala(q, k, vv).transpose(1, 2).reshape(b, n, c)
    y[:, 2:] += lepe
    torch.testing.assert_close(out, module.proj(y))


def swin_mask(side=4, shift=2):
    """Swin's shifted-window mask for one side x side window grid (one window) built the timm way."""
    regions = torch.zeros(side, side, dtype=torch.long)
    cut = [slice(0, -side), slice(-side, -shift), slice(-shift, None)]
    label = 0
    for rs in cut:
        for cs in cut:
            regions[rs, cs] = label
            label += 1
    flat = regions.flatten()
    mask = (flat[:, None] != flat[None, :]).float() * -100.0
    return mask[None], flat


@pytest.mark.parametrize("kind", ["relu", "stella", "rala"])
def test_swin_shifted_window_mask_makes_regions_independent(kind):
    mask, labels = swin_mask()
    assert torch.equal(regions_from_window_mask(mask)[0].unique(return_inverse=True)[1],
                       labels.unique(return_inverse=True)[1])
    module = MixAttention(16, 2, kind=kind, lepe=False).double()
    x = torch.randn(3, 16, 16, dtype=torch.float64)
    out = module(x, mask=mask)
    for label in labels.unique():
        idx = (labels == label).nonzero().flatten()
        alone = module(x[:, idx])
        torch.testing.assert_close(out[:, idx], alone, rtol=1e-9, atol=1e-9)


def test_swin_regions_are_numbered_densely_and_the_loop_is_static():
    """Every window of a real Swin mask numbers its regions 0, 1, .. (at most SWIN_MAX_REGIONS); a labelling
    beyond the static count is refused in eager mode instead of silently dropping a region."""
    from timm.models.swin_transformer import SwinTransformerBlock

    from mixa.attention import functional as AF
    from mixa.attention.modules import SWIN_MAX_REGIONS

    block = SwinTransformerBlock(16, (12, 12), num_heads=2, window_size=4, shift_size=2)
    regions = regions_from_window_mask(block.attn_mask)
    for window, mask in zip(regions, block.attn_mask):
        same = mask == 0
        torch.testing.assert_close(window[:, None] == window[None, :], same)  # one number per region
        assert set(window.tolist()) == set(range(int(window.max()) + 1))
    assert int(regions.max()) + 1 == SWIN_MAX_REGIONS  # the corner window: 2 x 2 regions
    q = k = v = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="count is 2"):
        AF.masked_by_regions(AF.relu_linear_attention, q, k, v, torch.tensor([[0, 1, 2, 2]]), 2)


def test_swin_with_linear_shifted_blocks_exports_with_a_dynamic_batch():
    """Issue 20: the shifted-window blocks' regions used to be a loop over the labels present (data
    dependent: torch.export failed on Eq(u0, 0)); now torch.export takes the model with a dynamic batch."""
    import mixa
    from mixa.models import create_model

    torch.manual_seed(0)
    model = create_model("swin_tiny_patch4_window7_224", pretrained=False, depths=(2,), num_heads=(2,),
                         embed_dim=32, img_size=56, window_size=7)
    model = mixa.convert(model, keep=0, attn="rala", progress=False).eval()
    assert model.layers[0].blocks[1].shift_size == (3, 3)
    program = torch.export.export(model, (torch.randn(2, 3, 56, 56),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},), strict=False)
    x = torch.randn(3, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-5)


def test_module_accepts_timm_keywords_and_rejects_causal():
    module = MixAttention(16, 2, kind="relu")
    x = torch.randn(2, 5, 16)
    pad = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    pad[1, ..., 3:] = False
    out = module(x, attn_mask=pad)
    torch.testing.assert_close(out[0], module(x[:1])[0])
    torch.testing.assert_close(out[1, :3], module(x[1:, :3])[0])
    with pytest.raises(ValueError, match="is_causal"):
        module(x, is_causal=True)


def test_relu_quadratic_pair_mask_restricts_and_renormalises():
    """With a pair mask, each query's N is its count of participating keys: a query that sees a subset of
    keys gets the formula over that subset alone."""
    q, k, v = qkv(b=1, h=2, n=12)
    keep = torch.zeros(12, 12, dtype=torch.bool)
    keep[:5, :5] = keep[5:, 5:] = True
    out = AF.relu_quadratic_attention(q, k, v, attn_mask=keep)
    torch.testing.assert_close(out[:, :, :5], ref_relu_quadratic(q[:, :, :5], k[:, :, :5], v[:, :, :5]))
    torch.testing.assert_close(out[:, :, 5:], ref_relu_quadratic(q[:, :, 5:], k[:, :, 5:], v[:, :, 5:]))


def test_relu_quadratic_module_swin_regions_and_low_precision():
    mask, labels = swin_mask()
    module = MixAttention(16, 2, kind="relu-quadratic").double()
    assert module.gate is None and module.lepe is None
    x = torch.randn(3, 16, 16, dtype=torch.float64)
    out = module(x, mask=mask)
    for label in labels.unique():
        idx = (labels == label).nonzero().flatten()
        torch.testing.assert_close(out[:, idx], module(x[:, idx]), rtol=1e-9, atol=1e-9)
    q, k, v = (torch.randn(1, 1, 2048, 64) * 250 for _ in range(3))
    half = AF.relu_quadratic_attention(q.half(), k.half(), v.half())
    assert half.dtype == torch.float16 and torch.isfinite(half).all()


# ---- output gates (mixa.layers.gates) ----

def ref_gate(module, x):
    """phi(x) from the gate's parameters, by its documented formula."""
    gate = module.gate
    if gate is None:
        return torch.ones_like(x)
    name = type(gate).__name__
    if name == "Linear":
        return x @ gate.weight.T + gate.bias
    if name == "LowRankGate":
        return (x @ gate.down.weight.T) @ gate.up.weight.T + gate.up.bias
    return 1 + gate.scale * x


@pytest.mark.parametrize("gate", ["linear", "lowrank", "identity", "none"])
def test_gate_options_start_neutral_then_follow_their_formula(gate):
    module = MixAttention(32, 4, kind="rala", gate=gate, lepe=False, num_prefix_tokens=1).double()
    x = torch.randn(2, 1 + 16, 32, dtype=torch.float64, requires_grad=True)
    # neutral: the plain kernelised attention
    torch.testing.assert_close(module(x), plain_kernelised(module, x, "rala"), rtol=1e-9, atol=1e-9)
    # backward at the neutral start reaches the gate (it can learn) and the input
    module(x).square().sum().backward()
    grads = {n: p.grad for n, p in module.named_parameters() if n.startswith("gate.")}
    assert gate == "none" or any(g is not None and g.abs().sum() > 0 for g in grads.values()), grads
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # perturbed: y = proj(attention * phi(x)) with phi by its formula
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
        b, n, c = x.shape
        q, k, v = module.qkv(x).reshape(b, n, 3, 4, 8).permute(2, 0, 3, 1, 4)
        y = ref_rala(q, k, v).transpose(1, 2).reshape(b, n, c)
        torch.testing.assert_close(module(x), module.proj(y * ref_gate(module, x)), rtol=1e-9, atol=1e-9)


def test_gate_option_validation_and_old_bool_configs():
    assert MixAttention(16, 2, kind="rala", gate=True).options["gate"] == "linear"
    assert MixAttention(16, 2, kind="rala", gate=False).gate is None
    assert MixAttention(16, 2, kind="rala", gate="lowrank", gate_rank=3).options["gate_rank"] == 3
    assert MixAttention(16, 2, kind="rala").options["gate"] == "identity"  # the registry default (measured: benchmarks/edge)
    with pytest.raises(ValueError, match="unknown gate"):
        MixAttention(16, 2, kind="rala", gate="tanh")
    with pytest.raises(ValueError, match="odd"):
        MixAttention(16, 2, kind="rala", lepe_kernel=4)


# ---- hedgehog: the paper's feature map and linear attention, naively ----

def ref_hedgehog(q, k, v, weight_q, weight_k, eps=1e-6):
    """Hedgehog (ICLR 2024): per head h and token, phi(x) = [softmax(W_h^T x), softmax(-W_h^T x)]; the
    attention weights A_ij = phi(q_i) . phi(k_j) / sum_l phi(q_i) . phi(k_l), built one head at a time."""
    out = torch.empty_like(v)
    for h in range(q.shape[1]):
        def phi(x, w):
            z = torch.einsum("bnd,dm->bnm", x, w)
            return torch.cat([torch.exp(z) / torch.exp(z).sum(-1, keepdim=True),
                              torch.exp(-z) / torch.exp(-z).sum(-1, keepdim=True)], dim=-1)
        fq, fk = phi(q[:, h], weight_q[h]), phi(k[:, h], weight_k[h])
        a = torch.einsum("bim,bjm->bij", fq, fk)
        out[:, h] = torch.einsum("bij,bjd->bid", a, v[:, h]) / (a.sum(-1, keepdim=True) + eps)
    return out


def test_hedgehog_core_matches_the_papers_formula():
    q, k, v = qkv(h=3, d=16)
    weight_q, weight_k = (torch.randn(3, 16, 12, dtype=torch.float64) for _ in range(2))  # d' = 12 != d
    out = AF.hedgehog_attention(q, k, v, weight_q=weight_q, weight_k=weight_k)
    torch.testing.assert_close(out, ref_hedgehog(q, k, v, weight_q, weight_k), rtol=1e-9, atol=1e-9)
    member = torch.zeros(1, 1, q.shape[-2], dtype=torch.bool)
    member[..., 4:20] = True
    masked = AF.hedgehog_attention(q, k, v, weight_q=weight_q, weight_k=weight_k, key_mask=member)[:, :, 4:20]
    alone = ref_hedgehog(q[:, :, 4:20], k[:, :, 4:20], v[:, :, 4:20], weight_q, weight_k)
    torch.testing.assert_close(masked, alone, rtol=1e-9, atol=1e-9)


def test_hedgehog_module_starts_at_the_identity_map_and_trains_its_map():
    module = MixAttention(32, 2, kind="hedgehog", num_prefix_tokens=1).double()
    eye = torch.eye(16, dtype=torch.float64).expand(2, 16, 16)
    assert torch.equal(module.feature_map.weight_q, eye) and torch.equal(module.feature_map.weight_k, eye)
    x = torch.randn(2, 17, 32, dtype=torch.float64)
    b, n, c = x.shape
    q, k, v = module.qkv(x).reshape(b, n, 3, 2, 16).permute(2, 0, 3, 1, 4)
    expected = module.proj(ref_hedgehog(q, k, v, eye, eye).transpose(1, 2).reshape(b, n, c))
    torch.testing.assert_close(module(x), expected, rtol=1e-9, atol=1e-9)
    module(x).sum().backward()
    assert module.feature_map.weight_q.grad.abs().sum() > 0 and module.feature_map.weight_k.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype,scale", [(torch.float16, 250.0), (torch.bfloat16, 1e4)])
def test_hedgehog_stable_in_low_precision_and_reduces_in_fp32(dtype, scale):
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 4096, 32, generator=gen) * scale for _ in range(3))
    weight = torch.eye(32).expand(2, 32, 32)
    recorder = ShapeRecorder()
    with recorder, torch.autocast("cpu", dtype=dtype):
        out = AF.hedgehog_attention(q.to(dtype), k.to(dtype), v.to(dtype), weight_q=weight, weight_k=weight)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert recorder.matmul_dtypes == {torch.float32}
    assert not [s for s in recorder.shapes if sum(dim >= 4096 for dim in s) >= 2]
