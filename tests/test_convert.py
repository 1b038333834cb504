"""mixa.convert on tiny DeiT, distilled DeiT and Swin models; save/load; selection; resizing."""
import pytest
import torch
import torch.nn.functional as F

import mixa
from mixa.attention import MixAttention, functional as AF
from mixa.conversion import attention_layers
from mixa.errors import UsageError
from mixa.models import create_model

TINY_VIT = dict(depth=4, embed_dim=32, num_heads=2, img_size=32, patch_size=8, num_classes=5)
TINY_SWIN = dict(depths=(2, 2), embed_dim=16, num_heads=(1, 2), img_size=56, window_size=7, num_classes=5)
FAMILIES = {
    "deit": ("deit_tiny_patch16_224", TINY_VIT, (3, 32, 32)),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", TINY_VIT, (3, 32, 32)),
    "swin": ("swin_tiny_patch4_window7_224", TINY_SWIN, (3, 56, 56)),
}
KINDS = ["relu", "stella", "rala"]


def tiny(family):
    name, kwargs, size = FAMILIES[family]
    torch.manual_seed(0)
    return create_model(name, pretrained=False, **kwargs), torch.randn(2, *size)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", KINDS)
def test_convert_every_family_and_kind(family, kind):
    model, x = tiny(family)
    converted = mixa.convert(model, keep=2, attn=kind, select="first")
    assert type(converted) is type(model)
    assert mixa.attention_kinds(converted) == ["softmax", "softmax", kind, kind]
    assert mixa.attention_kinds(model) == ["softmax"] * 4          # the input model is untouched
    for (_, old), (_, new) in zip(attention_layers(model), attention_layers(converted)):
        assert torch.equal(old.qkv.weight, new.qkv.weight) and torch.equal(old.proj.weight, new.proj.weight)
    converted.train()
    out = converted(x)
    out = out[0] if isinstance(out, tuple) else out
    out.sum().backward()
    linear = [m for _, m in attention_layers(converted) if isinstance(m, MixAttention)]
    assert all(m.qkv.weight.grad is not None and torch.isfinite(m.qkv.weight.grad).all() for m in linear)
    if kind == "rala":
        assert all(p.grad is not None for m in linear for p in m.gate.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_keep_all_layers_is_numerically_unchanged(family):
    model, x = tiny(family)
    converted = mixa.convert(model, keep=4, attn="rala")
    assert torch.equal(converted(x), model(x))


def test_converted_vit_layer_equals_kernelised_pretrained_attention():
    model, x = tiny("deit_distilled")
    converted = mixa.convert(model, keep=3, attn="rala", select=[0, 1, 2])
    original = model.blocks[3].attn
    replaced = converted.blocks[3].attn
    assert replaced.num_prefix_tokens == 2
    tokens = torch.randn(2, 2 + 16, 32)
    b, n, c = tokens.shape
    q, k, v = original.qkv(tokens).reshape(b, n, 3, 2, 16).permute(2, 0, 3, 1, 4)
    expected = original.proj(AF.rala_attention(q, k, v).transpose(1, 2).reshape(b, n, c))
    torch.testing.assert_close(replaced(tokens), expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_bit_exact(family, tmp_path):
    model, x = tiny(family)
    converted = mixa.convert(model, keep=1, attn="rala", select=[2])
    with torch.no_grad():  # make the new parameters non-trivial so the round trip is meaningful
        for m in converted.modules():
            if isinstance(m, MixAttention):
                m.lepe.weight.normal_()
                for p in m.gate.parameters():
                    p.normal_()
    mixa.save(converted, tmp_path / "m")
    loaded = mixa.load(tmp_path / "m")
    assert mixa.attention_kinds(loaded) == mixa.attention_kinds(converted)
    for (k1, v1), (k2, v2) in zip(converted.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    assert torch.equal(loaded(x), converted(x))
    assert loaded.pretrained_cfg == converted.pretrained_cfg


@pytest.mark.parametrize("strategy,expected", [("first", [0, 1]), ("last", [2, 3]), ("uniform", [1, 3])])
def test_fixed_strategies(strategy, expected):
    model, _ = tiny("deit")
    converted = mixa.convert(model, keep=2, attn="relu", select=strategy)
    kinds = mixa.attention_kinds(converted)
    assert [i for i, k in enumerate(kinds) if k == "softmax"] == expected
    assert converted.mixa_config["selection"]["kept"] == expected


def test_uniform_spreads_six_of_twelve():
    model = create_model("deit_tiny_patch16_224", pretrained=False, depth=12, embed_dim=16, num_heads=1,
                         img_size=16, patch_size=8)
    kinds = mixa.attention_kinds(mixa.convert(model, keep=6, attn="stella"))
    assert [i for i, k in enumerate(kinds) if k == "softmax"] == [1, 3, 5, 7, 9, 11]


def test_explicit_indices_and_errors():
    model, _ = tiny("deit")
    kinds = mixa.attention_kinds(mixa.convert(model, attn="rala", select=[0, 3]))
    assert kinds == ["softmax", "rala", "rala", "softmax"]
    with pytest.raises(UsageError, match="out of range"):
        mixa.convert(model, attn="rala", select=[0, 4])
    with pytest.raises(UsageError, match="does not match"):
        mixa.convert(model, keep=3, attn="rala", select=[0, 1])
    with pytest.raises(UsageError, match=r"\[0, 4\]"):
        mixa.convert(model, keep=5, attn="rala")
    with pytest.raises(UsageError, match="linear kind"):
        mixa.convert(model, keep=2, attn="softmax")
    with pytest.raises(UsageError, match="needs calibration data"):
        mixa.convert(model, keep=2, attn="rala", select="sensitivity")
    with pytest.raises(UsageError, match="cannot convert ResNet"):
        mixa.convert(create_model("resnet18", pretrained=False), keep=1)


def test_sensitivity_keeps_the_layers_whose_replacement_matters():
    """Layers with a zero output projection contribute nothing, so replacing them cannot change the output:
    sensitivity must score them 0 and keep exactly the two live layers."""
    model, _ = tiny("deit")
    live = [1, 2]
    with torch.no_grad():
        for i, block in enumerate(model.blocks):
            if i not in live:
                block.attn.proj.weight.zero_()
                block.attn.proj.bias.zero_()
    calib = torch.randn(8, 3, 32, 32)
    converted = mixa.convert(model, keep=2, attn="relu", calib=calib, progress=False)
    selection = converted.mixa_config["selection"]
    assert selection["strategy"] == "sensitivity"
    assert selection["kept"] == live
    scores = selection["scores"]
    assert all(scores[i] == pytest.approx(0, abs=1e-10) for i in (0, 3))
    assert all(scores[i] > 1e-6 for i in live)


def test_sensitivity_scores_match_a_direct_computation():
    model, _ = tiny("deit")
    calib = torch.randn(6, 3, 32, 32)
    scores = mixa.convert(model, keep=1, attn="stella", calib=calib, progress=False).mixa_config["selection"]["scores"]
    with torch.no_grad():
        reference = F.log_softmax(model(calib), -1)
        for i in range(4):
            single = mixa.convert(model, attn="stella", select=[j for j in range(4) if j != i])
            out = F.log_softmax(single(calib), -1)
            kl = (reference.exp() * (reference - out)).sum(-1).mean()
            assert scores[i] == pytest.approx(float(kl), rel=1e-4, abs=1e-9)


def test_patch_size_14_resamples_patch_embedding_and_positions(tmp_path):
    model = create_model("deit_tiny_patch16_224", pretrained=False, depth=2, embed_dim=32, num_heads=2,
                         num_classes=3)
    converted = mixa.convert(model, keep=1, attn="rala", select="first", patch_size=14)
    assert converted.patch_embed.proj.weight.shape[-2:] == (14, 14)
    assert converted.pos_embed.shape == (1, 1 + 16 * 16, 32)
    # A constant image: every 16-px patch of the original and every 14-px patch of the converted model see
    # the same constant; the pseudo-inverse resampling keeps their embeddings within 1% (cropping the kernel
    # instead would be off by ~15%).
    image = torch.full((1, 3, 224, 224), 0.5)
    before = model.patch_embed(image)[0, 0]
    after = converted.patch_embed(image)[0, 0]
    assert torch.allclose(before, after, atol=0.01 * before.abs().max().item())
    assert converted(torch.randn(1, 3, 224, 224)).shape == (1, 3)
    mixa.save(converted, tmp_path / "p14")
    assert mixa.load(tmp_path / "p14").patch_embed.proj.weight.shape[-1] == 14
    with pytest.raises(UsageError, match="Swin"):
        mixa.convert(model, keep=1, attn="rala", window_size=14)


def test_window_size_14_resizes_windows_and_bias_tables(tmp_path):
    model = create_model("swin_tiny_patch4_window7_224", pretrained=False, depths=(2, 2, 2, 2), embed_dim=16,
                         num_heads=(1, 1, 2, 2), num_classes=3)
    converted = mixa.convert(model, keep=8, attn="rala", window_size=14)
    windows = [b.attn.window_size for layer in converted.layers for b in layer.blocks]
    assert windows[:6] == [(14, 14)] * 6 and windows[6:] == [(7, 7)] * 2   # last stage is only 7 x 7
    table = converted.layers[0].blocks[0].attn.relative_position_bias_table
    assert table.shape == ((2 * 14 - 1) ** 2, 1)
    x = torch.randn(1, 3, 224, 224)
    mixed = mixa.convert(model, keep=4, attn="relu", select="last", window_size=14)
    assert torch.isfinite(mixed(x)).all()
    mixa.save(mixed, tmp_path / "w14")
    assert torch.equal(mixa.load(tmp_path / "w14")(x), mixed(x))


def test_patch_size_overrides_a_patch_size_given_at_build_time(tmp_path):
    model, _ = tiny("deit")                                   # built with patch_size=8, img_size=32
    converted = mixa.convert(model, keep=4, attn="relu", patch_size=4)
    assert converted.patch_embed.proj.weight.shape[-1] == 4 and converted.pos_embed.shape[1] == 1 + 64
    mixa.save(converted, tmp_path / "p4")
    assert mixa.load(tmp_path / "p4").patch_embed.proj.weight.shape[-1] == 4


def test_already_converted_model_is_rejected():
    model, _ = tiny("deit")
    with pytest.raises(UsageError, match="already converted"):
        mixa.convert(mixa.convert(model, keep=2, attn="relu"), keep=2, attn="rala")
