"""RAVLT backbone: official state-dict layout, maths against explicit formulas, the plain NCHW twin,
any input size, features, export."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import timm
from mixa.attention import functional as AF
from mixa.errors import MixaError
from mixa.layers import RoPE2d, rope_2d_tables, rope_angles
from mixa.macs import count_macs, count_params
from mixa.models import create_model
from mixa.models.ravlt import RAVLTAttention
from reference.ravlt_nchw import PlainRAVLT

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "tests" / "data" / "ravlt_state_dict_manifest.json"  # copy of shared/reference's
PAPER = {"ravlt_t": (14.9, 2.4), "ravlt_s": (25.6, 4.6), "ravlt_b": (48.2, 9.9), "ravlt_l": (95.2, 16.0)}
TINY = dict(embed_dims=(16, 32, 32, 32), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 2), head_dim=48)


def _tiny(**kwargs):
    torch.manual_seed(0)
    model = timm.create_model("ravlt_t", **{**TINY, "num_classes": 10, **kwargs})
    # random BN statistics and layer scales, so that a wrong mapping of any tensor shows
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith(("running_mean", "gamma_1", "gamma_2")):
                tensor.copy_(torch.randn_like(tensor) * 0.5)
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand_like(tensor) + 0.5)
    return model.eval()


# -- state dict ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PAPER))
def test_state_dict_matches_official_manifest(name):
    manifest = json.loads(MANIFEST.read_text())[name]
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(ours) == list(manifest)
    assert ours == manifest
    assert count_params(model) / 1e6 == pytest.approx(PAPER[name][0], rel=0.03)


def test_official_layout_file_loads_strictly_and_matches_plain_formulation(tmp_path):
    """A state dict written by the NCHW conv formulation (official layout), inside {"model": ...}, loads
    with strict=True through every entry point, and both formulations then agree."""
    source = _tiny()
    plain = PlainRAVLT.like(source)
    official = {k: v.clone() for k, v in plain.state_dict().items()}
    assert official["layers.0.blocks.0.attn.qkvo.weight"].shape == (64, 16, 1, 1)
    path = tmp_path / "RAVLT_T.pth"
    torch.save({"model": official, "epoch": 300}, path)

    fresh = timm.create_model("ravlt_t", **TINY, num_classes=10)
    fresh.load_state_dict(official, strict=True)
    via_mixa = create_model("ravlt_t", checkpoint=str(path), **TINY, num_classes=10)
    via_timm = timm.create_model("ravlt_t", pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=10),
                                 **TINY, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = plain.eval()(x)
        for model in (fresh.eval(), via_mixa, via_timm):
            torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)
    # and our own state dict goes back into the official layout unchanged
    assert {k: v.shape for k, v in via_mixa.state_dict().items()} == {k: v.shape for k, v in official.items()}


def test_checkpoint_with_other_head_keeps_backbone(tmp_path):
    path = tmp_path / "RAVLT_T.pth"
    torch.save({"model": _tiny().state_dict()}, path)
    model = create_model("ravlt_t", checkpoint=str(path), **TINY, num_classes=3)
    assert model.head.weight.shape == (3, 48)
    torch.testing.assert_close(model.layers[1].blocks[0].attn.qkvo.weight,
                               _tiny().layers[1].blocks[0].attn.qkvo.weight)


def test_pretrained_without_weights_is_a_clear_error():
    with pytest.raises(MixaError, match="--checkpoint"):
        create_model("ravlt_t", pretrained=True, **TINY)


# -- params / MACs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ravlt_t", pytest.param("ravlt_s", marks=pytest.mark.slow),
                                  pytest.param("ravlt_b", marks=pytest.mark.slow),
                                  pytest.param("ravlt_l", marks=pytest.mark.slow)])
def test_macs_at_224(name):
    """The paper's GFLOPs are the conv/linear layers only (its counter missed the attention matmuls):
    those match within 3%; the full count adds exactly the cores' formulas on top."""
    model = timm.create_model(name).eval()
    cores = [0]
    hooks = [m.register_forward_hook(lambda mod, inp, out: cores.__setitem__(0, cores[0] + mod.attention_macs(inp[0])))
             for m in model.modules() if isinstance(m, RAVLTAttention)]
    total = count_macs(model)  # one pass: the hooks above see the same forward
    for h in hooks:
        h.remove()
    assert (total - cores[0]) / 1e9 == pytest.approx(PAPER[name][1], rel=0.03)
    # cores from the formulas: RALA 2Nd^2 + 3Nd per head (its token mean is a reduction), softmax 2N^2 d per head
    expected = 0
    for stage, n in zip(model.layers, (56 * 56, 28 * 28, 14 * 14, 7 * 7)):
        attn = stage.blocks[0].attn
        d = attn.head_dim
        per_head = 2 * n * d * d + 3 * n * d if attn.kind == "rala" else 2 * n * n * d
        expected += len(stage.blocks) * attn.num_heads * per_head
    assert cores[0] == expected and cores[0] > 0


# -- maths --------------------------------------------------------------------------------------------------
def test_rope_tables_match_the_formula():
    d, h, w = 16, 3, 5
    angle = rope_angles(d)
    theta = [1.0 / 10000 ** (m / (d / 4 - 1)) for m in range(d // 4)]
    assert torch.allclose(angle, torch.tensor([t for t in theta for _ in range(2)]), rtol=1e-6)
    cos, sin = rope_2d_tables(angle, h, w)
    for r in range(h):
        for c in range(w):
            phase = [r * a for a in angle.tolist()] + [c * a for a in angle.tolist()]
            assert torch.allclose(cos[r * w + c], torch.tensor(phase).cos(), atol=1e-6)
            assert torch.allclose(sin[r * w + c], torch.tensor(phase).sin(), atol=1e-6)
    # rotation of consecutive pairs: (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin)
    x = torch.randn(h * w, d)
    rotated = AF.apply_rope(x, cos, sin)
    x0, x1 = x[:, 0::2], x[:, 1::2]
    torch.testing.assert_close(rotated[:, 0::2], x0 * cos[:, 0::2] - x1 * sin[:, 0::2])
    torch.testing.assert_close(rotated[:, 1::2], x1 * cos[:, 1::2] + x0 * sin[:, 1::2])


def test_rope_cache_per_grid_and_device():
    rope = RoPE2d(8)
    assert rope(4, 6) is rope(4, 6)
    assert rope(4, 6)[0].shape == (24, 8) and rope(6, 4)[0].shape == (24, 8)
    assert not torch.equal(rope(4, 6)[0], rope(6, 4)[0])
    rope.load_state_dict({"angle": rope.angle * 2})
    torch.testing.assert_close(rope(4, 6)[0], rope_2d_tables(rope.angle, 4, 6)[0])


def _explicit_ravlt_attention(attn, x):
    """RAVLT attention token by token in float64, straight from the formulas in RAVLT.md."""
    b, h, w, c = x.shape
    heads, d, n = attn.num_heads, attn.head_dim, h * w
    x = x.double()
    qkvo = x.reshape(b, n, c) @ attn.qkvo.weight.double().T + attn.qkvo.bias.double()
    q, k, v, o = qkvo.split(c, dim=-1)
    cos, sin = (t.double() for t in rope_2d_tables(rope_angles(d).double(), h, w))

    def rot(t, i):
        pairs = torch.stack((-t[1::2], t[0::2]), dim=-1).flatten()
        return t * cos[i] + pairs * sin[i]

    out = torch.zeros(b, n, c, dtype=torch.float64)
    for bi in range(b):
        for head in range(heads):
            sl = slice(head * d, (head + 1) * d)
            qh, kh, vh = q[bi, :, sl], k[bi, :, sl], v[bi, :, sl]
            if attn.kind == "rala":
                qh, kh = F.elu(qh) + 1, F.elu(kh) + 1
                q_g = qh.mean(0)
                a = torch.softmax(torch.stack([q_g @ kh[j] for j in range(n)]) / math.sqrt(d), 0)
                kp = kh * (a * n)[:, None]
                kv = sum(torch.outer(rot(kp[j], j), vh[j]) for j in range(n)) / n
                k_mean = kp.mean(0)
                for i in range(n):
                    out[bi, i, sl] = (rot(qh[i], i) @ kv) / (qh[i] @ k_mean + 1e-6)
            else:
                qr = torch.stack([rot(qh[i], i) for i in range(n)])
                kr = torch.stack([rot(kh[j], j) for j in range(n)])
                out[bi, :, sl] = torch.softmax(qr @ kr.T / math.sqrt(d), -1) @ vh
    v_grid = v.reshape(b, h, w, c).permute(0, 3, 1, 2)
    lepe = F.conv2d(v_grid, attn.lepe.weight.double(), attn.lepe.bias.double(), padding=2, groups=c)
    y = (out.reshape(b, h, w, c) + lepe.permute(0, 2, 3, 1)) * o.reshape(b, h, w, c)
    return y @ attn.proj.weight.double().T + attn.proj.bias.double()


@pytest.mark.parametrize("kind", ["rala", "softmax"])
def test_attention_matches_explicit_formulas(kind):
    torch.manual_seed(1)
    attn = RAVLTAttention(16, 2, kind)
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 3, 4, 16)
    rope = RoPE2d(8)(3, 4)
    torch.testing.assert_close(attn(x, rope).double(), _explicit_ravlt_attention(attn, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size", [(64, 64), (96, 64), (80, 112)])
def test_any_input_size_matches_plain_formulation(size):
    model = _tiny()
    plain = PlainRAVLT.like(model).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), rtol=1e-4, atol=1e-5)
    grid = (size[0] // 4, size[1] // 4)
    assert grid in model.layers[0].RoPE._cache


def test_train_step_drop_path_and_bf16():
    model = _tiny(drop_path_rate=0.2).train()
    assert model.layers[-1].blocks[0].drop_path.drop_prob == pytest.approx(0.2)
    assert isinstance(model.layers[0].blocks[0].drop_path, torch.nn.Identity)  # first block: rate 0
    out = model(torch.randn(2, 3, 64, 64))
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(model.eval()(torch.randn(2, 3, 64, 64) * 50)).all()


# -- features -----------------------------------------------------------------------------------------------
def test_features_only_and_intermediates():
    feats = timm.create_model("ravlt_t", features_only=True, **TINY).eval()
    assert feats.feature_info.channels() == [16, 32, 32, 32]
    assert feats.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        outs = feats(torch.randn(2, 3, 96, 64))
    assert [tuple(o.shape) for o in outs] == [(2, 16, 24, 16), (2, 32, 12, 8), (2, 32, 6, 4), (2, 32, 3, 2)]

    model = _tiny()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(model.forward_head(final), model(x))
        assert len(inter) == 4 and inter[-1].shape == final.shape
        (last,) = model.forward_intermediates(x, indices=[3], output_fmt="NHWC", intermediates_only=True)
    assert last.shape == (1, 2, 2, 32)
    assert model.forward_head(final, pre_logits=True).shape == (1, 48)


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_onnx_export_matches_eager(tmp_path, dynamo):
    ort = pytest.importorskip("onnxruntime")
    model = _tiny()
    x = torch.randn(1, 3, 64, 64)
    path = tmp_path / "ravlt.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["y"], opset_version=18,
                      dynamo=dynamo)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(y), model(x), rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_torch_compile_matches_eager():
    model = _tiny()
    x = torch.randn(1, 3, 64, 64)
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)
