"""Rank analysis: the rank definition, KV buffers consistent with the cores, and the paper's qualitative
finding on a tiny model (softmax output near full rank, plain linear attention lower)."""
import json

import torch
import torch.nn.functional as F

import mixa
import timm
from mixa.analysis import kv_buffer, numerical_rank, rank_analysis
from mixa.analysis.rank import DEFAULT_RTOL
from mixa.attention import functional as AF
from mixa.cli import main
from mixa.layers import RoPE2d
from mixa.models import create_model

TINY_DEIT = dict(depth=2, embed_dim=64, num_heads=2, img_size=32, patch_size=4, num_classes=5)


def test_numerical_rank_counts_singular_values_above_tolerance():
    u, _ = torch.linalg.qr(torch.randn(3, 40, 8, dtype=torch.float64))
    w, _ = torch.linalg.qr(torch.randn(3, 8, 8, dtype=torch.float64))
    spectrum = torch.tensor([1.0, 0.5, 0.1, 0.02, 0.009, 1e-4, 0.0, 0.0], dtype=torch.float64)
    m = u @ torch.diag(spectrum) @ w.transpose(-1, -2)
    assert numerical_rank(m, rtol=1e-2).tolist() == [4, 4, 4]
    assert numerical_rank(m, rtol=1e-3).tolist() == [5, 5, 5]
    assert numerical_rank(m.float(), rtol=1e-5).tolist() == [6, 6, 6]
    assert numerical_rank(torch.zeros(2, 5, 3)).tolist() == [0, 0]


def test_kv_buffers_are_the_cores_buffers():
    """out = kernel(q) @ KV (/ the kind's denominator): the buffer analysed is the one the core uses."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 20, 8, dtype=torch.float64) for _ in range(3))
    relu_q = F.relu(q)
    kv = kv_buffer("relu", q, k, v)
    denom = relu_q @ F.relu(k).sum(-2, keepdim=True).transpose(-2, -1) + AF.RELU_EPS
    torch.testing.assert_close(AF.relu_linear_attention(q, k, v) * denom, relu_q @ kv)
    torch.testing.assert_close(AF.stella_attention(q, k, v), relu_q @ kv_buffer("stella", q, k, v))
    rope = tuple(t.double() for t in RoPE2d(8)(4, 5))
    kappa_q = F.elu(q) + 1
    kv = kv_buffer("rala", q, k, v, rope)
    # z_i = 1 / (kappa(q_i) . mean_j k'_j); sum_j k'_j = N sum_j alpha_j kappa(k_j) with sum alpha = 1
    alpha = torch.softmax(kappa_q.mean(-2, keepdim=True) @ (F.elu(k) + 1).transpose(-2, -1) / 8 ** 0.5, -1)
    k_mean = alpha @ (F.elu(k) + 1)
    z = 1 / (kappa_q @ k_mean.transpose(-2, -1) + AF.RALA_EPS)
    torch.testing.assert_close(AF.rala_attention(q, k, v, rope=rope), (AF.apply_rope(kappa_q, *rope) @ kv) * z)
    assert kv_buffer("softmax", q, k, v) is None


def _peaky_tiny_deit():
    """A tiny DeiT whose q/k are large enough that softmax attention is sharp, as in trained models."""
    torch.manual_seed(0)
    model = create_model("deit_tiny_patch16_224", pretrained=False, **TINY_DEIT)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.normal_(0, 0.5)
    return model


def test_softmax_near_full_rank_and_plain_linear_lower():
    model = _peaky_tiny_deit()
    images = torch.randn(6, 3, 32, 32)
    soft = rank_analysis(model, [images], progress=False)
    relu = rank_analysis(mixa.convert(model, keep=0, attn="relu", progress=False), [images], progress=False)
    assert soft["rtol"] == DEFAULT_RTOL and soft["images"] == 6
    full = soft["layers"][0]["full_rank_out"]
    assert full == 32 and soft["layers"][0]["tokens"] == 65
    for s, r in zip(soft["layers"], relu["layers"]):
        assert s["kind"] == "softmax" and r["kind"] == "relu"
        assert s["kv_rank"] is None and len(r["kv_rank"]) == 2
        assert min(s["out_rank"]) >= 0.9 * full
        assert max(r["out_rank"]) < min(s["out_rank"])
        assert max(r["kv_rank"]) <= 32


def test_ravlt_layers_are_analysed_with_their_kinds():
    torch.manual_seed(0)
    model = timm.create_model("ravlt_t", embed_dims=(16, 32, 32, 32), depths=(1, 1, 1, 1),
                              num_heads=(1, 2, 2, 2), head_dim=32, num_classes=3)
    result = rank_analysis(model, [(torch.randn(2, 3, 64, 64), torch.zeros(2))], progress=False)
    kinds = [layer["kind"] for layer in result["layers"]]
    assert kinds == ["rala", "rala", "softmax", "softmax"]
    first = result["layers"][0]
    assert (first["tokens"], first["head_dim"], first["full_rank_out"]) == (256, 16, 16)
    assert all(0 < r <= 16 for r in first["kv_rank"] + first["out_rank"])


def test_cli_rank_on_saved_converted_model(tmp_path, capsys, image_folder):
    data = image_folder("data", classes=2, per_class=2, size=40)
    converted = mixa.convert(_peaky_tiny_deit(), keep=1, attn="rala", select=[0], progress=False)
    mixa.save(converted, tmp_path / "deit_rala")
    out_json = tmp_path / "r.json"
    code = main(["analyze", "rank", "--model", str(tmp_path / "deit_rala"), "--data-dir", str(data),
                 "--num-images", "3", "--batch-size", "2", "--json", str(out_json), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "rank = singular values > 0.01" in printed and "rala" in printed
    result = json.loads(out_json.read_text())
    assert result["images"] == 3 and [layer["kind"] for layer in result["layers"]] == ["softmax", "rala"]
    assert result["layers"][1]["kv_rank"] is not None


def test_cli_rank_usage_errors(tmp_path, capsys, image_folder):
    assert main(["analyze", "rank", "--model", "ravlt_t", "--data-dir", str(tmp_path / "missing"), "--no-pretrained"]) == 1
    assert "data directory not found" in capsys.readouterr().err
    assert main(["analyze", "rank", "--model", "no_such_model", "--data-dir", str(tmp_path)]) == 2
    data = image_folder("d", classes=2, per_class=2, size=40)
    assert main(["analyze", "rank", "--model", "ravlt_t", "--data-dir", str(data), "--rtol", "2"]) == 2
