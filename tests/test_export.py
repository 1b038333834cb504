import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import mixa
from mixa.errors import MixaError, UsageError
from mixa.export import agreement, export_onnx, image_batches, quantize_onnx, verify_onnx
from mixa.export.targets import at_resolution, trained_size
from mixa.models import create_model

sys.path.insert(0, str(Path(__file__).parent))
from _export_helpers import TINY, TINY_SIZE, image_folder, linear_nodes, tiny_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
KINDS = ["softmax", "relu", "stella", "rala", "hedgehog"]


def _ort_logits(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize("family", ["vit", "swin"])
@pytest.mark.parametrize("kind", KINDS)
def test_export_verifies_every_kind_and_family(tmp_path, family, kind):
    model = tiny_model(family, kind)
    size = TINY_SIZE[family]
    path = tmp_path / "m.onnx"
    result = export_onnx(model, path, (3, size, size), dynamic_batch=True)
    assert result.max_abs_diff <= result.tolerance
    assert "Einsum" not in result.op_counts and result.op_counts["MatMul"] > 0
    # Independent check at another batch size (the file was traced at batch 1).
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(_ort_logits(path, x), expected, atol=1e-4, rtol=1e-4)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert int(meta["mixa.params"]) == sum(p.numel() for p in model.parameters())


def _square_intermediates(path, n):
    """Names of graph values whose last two dimensions are n x n (after ONNX shape inference)."""
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    found = []
    for value in [*proto.graph.value_info, *proto.graph.output]:
        dims = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
        if len(dims) >= 2 and dims[-2:] == [n, n]:
            found.append(value.name)
    return found


def test_linear_attention_exports_as_matmul_without_n_by_n(tmp_path):
    n = (32 // 8) ** 2 + 1  # tiny DeiT: 16 patches + class token
    for kind in ["relu", "stella", "rala"]:
        path = tmp_path / f"{kind}.onnx"
        result = export_onnx(tiny_model("vit", kind, keep=0), path, (3, 32, 32))
        assert "Einsum" not in result.op_counts
        assert _square_intermediates(path, n) == [], kind
    # The check sees N x N where it exists: the softmax original has attention maps of that shape.
    export_onnx(tiny_model("vit"), tmp_path / "softmax.onnx", (3, 32, 32), softmax="plain")
    assert _square_intermediates(tmp_path / "softmax.onnx", n)


def _meta(path):
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_vit_softmax_layers_export_as_one_onnx_runtime_attention_node(tmp_path, qkv_bias):
    """The default .onnx form of a ViT's softmax layers (``ort``): one com.microsoft Attention node per kept
    layer and no Softmax left; the logits of timm's own forward and of the plain-form file; the MAC count of
    the model as it is; the model left as it was."""
    from mixa.macs import count_macs

    torch.manual_seed(0)
    name, kwargs = TINY["vit"]
    model = mixa.convert(create_model(name, pretrained=False, qkv_bias=qkv_bias, **kwargs), keep=1, attn="relu",
                         select="first", progress=False).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x).numpy()
    fused, plain = tmp_path / "ort.onnx", tmp_path / "plain.onnx"
    got = export_onnx(model, fused, (3, 32, 32), dynamic_batch=True)
    reference = export_onnx(model, plain, (3, 32, 32), dynamic_batch=True, softmax="plain")
    assert got.op_counts.get("Attention") == 1 and "Softmax" not in got.op_counts
    assert "Attention" not in reference.op_counts and reference.op_counts["Softmax"] == 1
    assert {n.domain for n in onnx.load(str(fused)).graph.node if n.op_type == "Attention"} == {"com.microsoft"}
    np.testing.assert_allclose(_ort_logits(fused, x), expected, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(_ort_logits(fused, x), _ort_logits(plain, x), atol=1e-5, rtol=1e-5)
    assert (_meta(fused)["mixa.softmax_form"], _meta(plain)["mixa.softmax_form"]) == ("ort", "plain")
    assert int(_meta(fused)["mixa.macs"]) == int(_meta(plain)["mixa.macs"]) == count_macs(model, (3, 32, 32))
    assert not any("forward" in m.__dict__ for m in model.modules())
    with torch.no_grad():
        np.testing.assert_array_equal(model(x).numpy(), expected)


def test_the_ort_form_stays_out_of_swin_and_of_runtimes_that_cannot_run_it(tmp_path):
    from mixa.export.lowering import runtime_softmax_form

    result = export_onnx(tiny_model("swin", "relu"), tmp_path / "s.onnx", (3, 56, 56))
    assert "Attention" not in result.op_counts and result.op_counts["Softmax"] > 0  # windows stay plain
    assert runtime_softmax_form("onnx") == "ort" and runtime_softmax_form("executorch") == "plain"
    with pytest.raises(UsageError, match="must be one of plain, fused;"):
        runtime_softmax_form("executorch", "ort")
    with pytest.raises(UsageError, match="torchscript exporter"):
        export_onnx(tiny_model("vit"), tmp_path / "d.onnx", (3, 32, 32), exporter="dynamo", softmax="ort")
    assert not (tmp_path / "d.onnx").exists()


def test_int8_of_the_ort_form_quantises_the_projection_in_the_attention_node(tmp_path):
    """Dynamic INT8 turns each Attention node into a QAttention (its qkv projection int8, its softmax fp32);
    static QDQ has no quantised form of it and leaves it fp32; the rala layers' cores stay fp32 either way."""
    from mixa.export.onnx import op_counts

    model = tiny_model("vit", "rala")
    fp32 = tmp_path / "m.onnx"
    export_onnx(model, fp32, (3, 32, 32), dynamic_batch=True)
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((4, 3, 32, 32), dtype=np.float32) for _ in range(2)]
    dynamic = quantize_onnx(fp32, tmp_path / "d.onnx", mode="dynamic")
    static = quantize_onnx(fp32, tmp_path / "s.onnx", mode="static", calib_batches=batches)
    ops = op_counts(tmp_path / "d.onnx")
    assert ops.get("QAttention") == 1 and "Attention" not in ops
    assert op_counts(tmp_path / "s.onnx").get("Attention") == 1
    for result in (dynamic, static):
        assert result.excluded and not any(name.endswith("/Attention") for name in result.excluded)
        assert any("/lepe/" in name for name in result.excluded)  # a rala core, kept fp32
        x = np.concatenate(batches)
        logits = [_ort_logits(f, torch.from_numpy(x)).ravel() for f in (fp32, result.path)]
        assert np.corrcoef(*logits)[0, 1] > 0.9, result.mode


def _attention_ops(path, tmp_path, op_type) -> int:
    """``op_type`` nodes in the attention layers of the graph ONNX Runtime runs (its optimised model)."""
    optimised = tmp_path / f"{Path(path).stem}.optimised.onnx"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(optimised)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return sum(n.op_type == op_type and "/attn/" in n.output[0] for n in onnx.load(str(optimised)).graph.node)


@pytest.mark.parametrize("kind", ["relu", "stella", "rala", "hedgehog"])
def test_replaced_layers_of_one_image_run_without_head_transposes(tmp_path, kind):
    """At a static batch of 1 the replaced layers export in their one-image form (q, k, v from three
    projections, no Split): ONNX Runtime folds every head transpose of relu, stella and hedgehog into the
    products (rala keeps the few its LePE and token weights need), where the batched form -- still the one of
    a dynamic batch -- runs some in every layer.
    Both files give the model's own logits; the model is left as it was."""
    model = tiny_model("vit", kind, keep=0)  # two layers, both replaced
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(x).numpy()
    one, batched = tmp_path / "one.onnx", tmp_path / "batched.onnx"
    export_onnx(model, one, (3, 32, 32))
    export_onnx(model, batched, (3, 32, 32), dynamic_batch=True)
    for path in (one, batched):
        np.testing.assert_allclose(_ort_logits(path, x), expected, atol=1e-4, rtol=1e-4)
    folded, unfolded = _attention_ops(one, tmp_path, "Transpose"), _attention_ops(batched, tmp_path, "Transpose")
    # rala keeps two a layer: v into the LePE grid (shared with its token weighting), its output before the gate
    assert folded < unfolded and folded == (2 * 2 if kind == "rala" else 0)
    # nor any Unsqueeze: rala's global query is a kept-dimension mean, its LePE grid one Reshape of v
    assert _attention_ops(one, tmp_path, "Unsqueeze") == 0
    # q, k, v from three projections: nothing copies one (N, 3C) output apart
    assert _attention_ops(one, tmp_path, "Split") == 0 < _attention_ops(batched, tmp_path, "Split")
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_plain_softmax_layers_of_one_image_run_one_transpose_each(tmp_path):
    """The plain softmax form (static INT8's, or asked for) takes the one-image form at a static batch of 1 too:
    three projections (no Split) and, after ONNX Runtime's folds, one Transpose a layer -- its output back to
    tokens first -- where the batched form runs four. Both files give the model's own logits; the model is left
    as it was."""
    model = tiny_model("vit")  # two softmax layers
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(x).numpy()
    one, batched = tmp_path / "one.onnx", tmp_path / "batched.onnx"
    export_onnx(model, one, (3, 32, 32), int8="static")
    export_onnx(model, batched, (3, 32, 32), dynamic_batch=True, int8="static")
    assert _meta(one)["mixa.softmax_form"] == _meta(batched)["mixa.softmax_form"] == "plain"
    for path in (one, batched):
        np.testing.assert_allclose(_ort_logits(path, x), expected, atol=1e-4, rtol=1e-4)
    assert _attention_ops(one, tmp_path, "Transpose") == 2 < _attention_ops(batched, tmp_path, "Transpose")
    assert _attention_ops(one, tmp_path, "Split") == 0 < _attention_ops(batched, tmp_path, "Split")
    assert _attention_ops(one, tmp_path, "Softmax") == 2
    # fp32 at batch 1 keeps ONNX Runtime's operator: the one-image switch leaves the ort form's layers alone
    ort_form = export_onnx(model, tmp_path / "ort.onnx", (3, 32, 32))
    assert ort_form.op_counts.get("Attention") == 2 and "Softmax" not in ort_form.op_counts
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_one_image_forms_take_one_image_only(tmp_path):
    """Swin's windows are a batch: with several windows an image keeps the batched form (head transposes
    left), with one window (the whole 7 x 7 token grid) it takes the one-image form (none left); either way the
    file gives the model's own logits."""
    for img_size, one_image in ((56, False), (28, True)):
        torch.manual_seed(0)
        name, kwargs = TINY["swin"]
        model = mixa.convert(create_model(name, pretrained=False, **{**kwargs, "img_size": img_size}), keep=0,
                             attn="relu", progress=False).eval()
        x = torch.randn(1, 3, img_size, img_size)
        with torch.no_grad():
            expected = model(x).numpy()
        path = tmp_path / f"swin{img_size}.onnx"
        export_onnx(model, path, (3, img_size, img_size))
        np.testing.assert_allclose(_ort_logits(path, x), expected, atol=1e-4, rtol=1e-4)
        assert (_attention_ops(path, tmp_path, "Transpose") == 0) == one_image


def test_dynamo_exports_a_vit_student_at_batch_1(tmp_path):
    """The dynamo exporter writes its own opset (18) by default: converted down to 17, the q / k / v split kept
    opset 18's Split attribute and ONNX Runtime refused the file. Its softmax layers take the plain form, at
    batch 1 the one-image one (no Split left there either)."""
    model = tiny_model("vit", "relu", keep=1)
    result = export_onnx(model, tmp_path / "d.onnx", (3, 32, 32), exporter="dynamo")
    assert result.opset == 18 and result.max_abs_diff <= result.tolerance
    assert _meta(tmp_path / "d.onnx")["mixa.softmax_form"] == "plain" and "Split" not in result.op_counts


def test_verification_fails_loudly_on_a_wrong_file(tmp_path):
    path = tmp_path / "a.onnx"
    export_onnx(tiny_model("vit", "stella"), path, (3, 32, 32))
    other = tiny_model("vit", "stella")
    with torch.no_grad():
        other.head.bias.add_(1.0)
    with pytest.raises(MixaError, match="differs from PyTorch"):
        verify_onnx(path, other, (3, 32, 32))


@pytest.mark.parametrize("family,new_size", [("vit", 48), ("swin", 112)])
def test_export_at_another_input_size(tmp_path, family, new_size):
    model = tiny_model(family, "rala")
    resized = at_resolution(model, new_size)
    assert trained_size(resized) == new_size and trained_size(model) == TINY_SIZE[family]
    if family == "vit":  # timm resampled the position embedding to the new grid
        assert resized.pos_embed.shape[1] == (new_size // 8) ** 2 + 1
    result = export_onnx(resized, tmp_path / "r.onnx", (3, new_size, new_size))
    assert result.max_abs_diff <= result.tolerance
    with pytest.raises(UsageError, match="not a multiple"):
        at_resolution(model, new_size + 2)


def test_int8_dynamic_and_static(tmp_path):
    model = tiny_model("vit", "relu")
    fp32 = tmp_path / "m.onnx"
    export_onnx(model, fp32, (3, 32, 32), dynamic_batch=True)
    data = image_folder(tmp_path / "data")
    batches = list(image_batches(data, model, (3, 32, 32), limit=8))
    assert sum(len(b) for b in batches) == 8 and batches[0].shape[1:] == (3, 32, 32)
    assert agreement(fp32, fp32, batches) == (8, 8)  # a file agrees with itself on every image
    for mode, marker in [("dynamic", "DynamicQuantizeLinear"), ("static", "QuantizeLinear")]:
        int8 = tmp_path / f"m.{mode}.onnx"
        quantize_onnx(fp32, int8, mode=mode, calib_batches=batches if mode == "static" else None)
        ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
        assert marker in ops, (mode, ops)
        same, total = agreement(fp32, int8, batches)
        assert total == 8 and 0 <= same <= 8
        # The INT8 file approximates the fp32 one (measured: correlation 0.99 dynamic, 0.91 static).
        x = np.concatenate(batches)
        logits = [ort.InferenceSession(str(f)).run(None, {"input": x})[0].ravel() for f in (fp32, int8)]
        assert np.corrcoef(*logits)[0, 1] > 0.8, mode
    with pytest.raises(UsageError, match="calibration"):
        quantize_onnx(fp32, tmp_path / "x.onnx", mode="static")


def _cli(capsys, *args):
    """Run the CLI in-process (as the `mixa` entry point does): (exit code, stdout, stderr)."""
    from mixa.cli import main

    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    import mixa

    directory = tmp_path_factory.mktemp("models") / "tiny"
    mixa.save(tiny_model("vit", "stella"), directory)
    return directory


def test_cli_export_with_int8_on_images(tmp_path, capsys, tiny_dir):
    data = image_folder(tmp_path / "data")
    out = tmp_path / "tiny.onnx"
    code, stdout, stderr = _cli(capsys, "export", "--model", str(tiny_dir), "--output", str(out), "--int8",
                                "--calib-data", str(data), "--calib-images", "4", "--json", str(tmp_path / "r.json"))
    assert code == 0, stderr
    assert "max |onnx runtime - torch|" in stdout and "top-1 agreement INT8 vs fp32: " in stdout
    assert "/8 = " in stdout  # measured on the 8 images of the folder
    assert out.is_file() and (tmp_path / "tiny.fp32.onnx").is_file()
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["int8"] == "static" and report["agreement_total"] == 8 and report["fp32_nodes"] > 0
    # static INT8 has no quantised ONNX Runtime Attention: its fp32 file is in the plain form; dynamic keeps it
    assert _meta(tmp_path / "tiny.fp32.onnx")["mixa.softmax_form"] == "plain"
    code, stdout, stderr = _cli(capsys, "export", "--model", str(tiny_dir), "--output", str(tmp_path / "d.onnx"),
                                "--int8", "dynamic")
    assert code == 0 and "1 Attention (ONNX Runtime)" in stdout, stderr
    assert "1 softmax layers as QAttention" in stdout
    assert _meta(tmp_path / "d.fp32.onnx")["mixa.softmax_form"] == "ort"
    # an existing output is refused without --overwrite
    code, _, stderr = _cli(capsys, "export", "--model", str(tiny_dir), "--output", str(out))
    assert code == 2 and "--overwrite" in stderr


@pytest.mark.parametrize("args,code,message", [
    (["no/such/dir"], 1, "no such file or directory"),
    (["not_a_model_xyz", "--no-pretrained"], 2, "unknown model"),
    (["{tiny}", "--img-size", "36"], 2, "not a multiple"),
    (["{tiny}", "--int8", "static"], 2, "needs --calib-data"),
    (["{tiny}", "--calib-data", "x"], 2, "only with --int8"),
    (["{tiny}", "--int8", "--calib-data", "no/such/images"], 2, "directory not found"),
    (["{tiny}", "--softmax-form", "ort", "--exporter", "dynamo"], 2, "needs the torchscript exporter"),
    (["{tiny}", "--exporter", "dynamo", "--opset", "17"], 2, "writes opset 18 or later"),
])
def test_cli_export_bad_input(tmp_path, capsys, tiny_dir, args, code, message):
    args = [a.replace("{tiny}", str(tiny_dir)) for a in args]
    got, _, stderr = _cli(capsys, "export", "--model", *args, "--output", str(tmp_path / "x.onnx"))
    assert got == code, stderr
    assert message in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.onnx").exists()


def test_pte_without_executorch_is_one_line_naming_the_extra(tmp_path, capsys, tiny_dir, monkeypatch):
    """Issue 19, defect 6: executorch hidden (as on a machine without the edge extra)."""
    for name in [m for m in sys.modules if m == "executorch" or m.startswith("executorch.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "executorch", None)  # any import of it now raises ImportError
    out = tmp_path / "m.pte"
    got, _, stderr = _cli(capsys, "export", "--model", str(tiny_dir), "--output", str(out))
    assert got == 1 and "pip install 'mixa[edge]'" in stderr and len(stderr.strip().splitlines()) == 1
    assert "Traceback" not in stderr and not out.exists()
    out.write_bytes(b"not a program")
    got, _, stderr = _cli(capsys, "profile", str(out))
    assert got == 1 and "pip install 'mixa[edge]'" in stderr and len(stderr.strip().splitlines()) == 1


@pytest.mark.slow  # ~30-50 s per kind on a shared 2-core CPU (the dynamo exporter)
@pytest.mark.parametrize("kind", ["relu", "stella", "rala"])
def test_swin_with_linear_shifted_blocks_dynamo_dynamic_batch_passes_quant_pre_process(kind, tmp_path):
    from onnxruntime.quantization import quant_pre_process

    torch.manual_seed(0)
    model = create_model(TINY["swin"][0], pretrained=False, **TINY["swin"][1])
    model = mixa.convert(model, keep=0, attn=kind, progress=False).eval()  # shifted blocks linear too
    result = export_onnx(model, tmp_path / "s.onnx", (3, 56, 56), dynamic_batch=True, exporter="dynamo")
    assert result.max_abs_diff <= result.tolerance  # verified at batch 3
    quant_pre_process(str(tmp_path / "s.onnx"), str(tmp_path / "pre.onnx"))
    assert (tmp_path / "pre.onnx").is_file()


def test_cli_export_rejects_an_unknown_format(tmp_path, capsys, tiny_dir):
    got, _, stderr = _cli(capsys, "export", "--model", str(tiny_dir), "--output", str(tmp_path / "x.txt"))
    assert got == 2 and "must end in .onnx or .pte" in stderr
    got, _, stderr = _cli(capsys, "export", "--model", str(tiny_dir), "--onnx", str(tmp_path / "x.pte"))
    assert got == 2 and "must name an .onnx file" in stderr


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8_of_a_trained_model_agrees_with_fp32(mode, tmp_path):
    """The packaged teacher (trained weights) on unseen synthetic scenes: the default INT8 (weights chosen
    for this CPU, attention cores fp32) must keep >= 99% top-1 agreement. Signed int8 weights lost up to 43%
    on an AVX2 CPU without VNNI (ONNX Runtime's U8S8 saturation), which this test would catch there."""
    import mixa
    from mixa.data.synthetic import SyntheticShapes
    from mixa.quickstart import TEACHER_DIR

    teacher = mixa.load(TEACHER_DIR)
    images, _ = SyntheticShapes("val", length=300, seed=7).tensors()
    batches = [images[i:i + 50].numpy() for i in range(0, 300, 50)]
    fp32, int8 = tmp_path / "t.onnx", tmp_path / "t.int8.onnx"
    export_onnx(teacher, fp32, (3, 32, 32), dynamic_batch=True)
    quantize_onnx(fp32, int8, mode=mode, calib_batches=batches[:2] if mode == "static" else None)
    # softmax layers as ONNX Runtime's Attention: dynamic INT8 runs them as QAttention
    assert {"dynamic": "QAttention", "static": "Attention"}[mode] in {n.op_type for n in onnx.load(str(int8)).graph.node}
    same, total = agreement(fp32, int8, batches)
    assert total == 300 and same / total >= 0.99, (mode, same)


@pytest.mark.slow  # ~15 s on 2 cores
def test_static_int8_of_a_rala_student_agrees_with_fp32(tmp_path):
    """Static INT8 with rala layers (issue 20: their quantizers were reworked) keeps the tolerance of the
    teacher's test above: >= 99% top-1 agreement with the fp32 file. The student is the packaged teacher
    converted to rala keeping 2 softmax layers (its q/k/v/proj trained, the core the untrained-rala start:
    86% of the 300 scenes right, 8 classes predicted, so agreement is not trivial)."""
    import mixa
    from mixa.data.synthetic import SyntheticShapes
    from mixa.quickstart import TEACHER_DIR

    student = mixa.convert(mixa.load(TEACHER_DIR), keep=2, attn="rala", select="uniform", progress=False)
    images, _ = SyntheticShapes("val", length=300, seed=7).tensors()
    batches = [images[i:i + 50].numpy() for i in range(0, 300, 50)]
    with torch.no_grad():
        assert len(student(images).argmax(-1).unique()) > 4  # not a constant prediction
    fp32, int8 = tmp_path / "s.onnx", tmp_path / "s.int8.onnx"
    export_onnx(student, fp32, (3, 32, 32), dynamic_batch=True)
    quantize_onnx(fp32, int8, mode="static", calib_batches=batches[:2])
    same, total = agreement(fp32, int8, batches)
    assert total == 300 and same / total >= 0.99, same


def test_layer_norm_by_averaging_is_layer_norm():
    """The .pte form of LayerNorm against torch's F.layer_norm, on a residual stream with a large mean (where
    a one-pass E[x^2] - E[x]^2 would lose the variance), with and without the affine."""
    from mixa.layers.norm import averaging_row, layer_norm_by_averaging

    g = torch.Generator().manual_seed(0)
    x = 1000.0 + torch.randn(2, 17, 48, generator=g)
    weight, bias = torch.randn(48, generator=g), torch.randn(48, generator=g)
    averaging = averaging_row(48)
    for w, b in ((weight, bias), (None, None)):
        expected = torch.nn.functional.layer_norm(x, (48,), w, b, 1e-6)
        torch.testing.assert_close(layer_norm_by_averaging(x, averaging, w, b, 1e-6), expected,
                                   atol=5e-4, rtol=0)
    one_pass = (x * x).mean(-1, keepdim=True) - x.mean(-1, keepdim=True) ** 2  # what the form avoids
    assert (one_pass - x.var(-1, unbiased=False, keepdim=True)).abs().max() > 0.05


def test_layer_norm_forms_switch_last_axis_norms_only_and_restore_them():
    """ExecuTorch gets every last-axis LayerNorm averaged (outputs unchanged to float rounding); a LayerNorm2d
    (channels of NCHW) and ONNX are left alone; afterwards no forward override or buffer is left behind."""
    from timm.layers import LayerNorm2d

    from mixa.export.lowering import layer_norm_forms

    model = torch.nn.Sequential(tiny_model("vit"), torch.nn.Unflatten(1, (1, -1, 1)), LayerNorm2d(1))
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    keys = set(model.state_dict())
    with torch.no_grad():
        expected = model(x)
        with layer_norm_forms(model, "onnx") as switched:
            assert switched == []
        with layer_norm_forms(model, "executorch") as switched:
            assert len(switched) == 5 and not any(isinstance(m, LayerNorm2d) for m in switched)
            assert set(model.state_dict()) == keys  # the averaging row is not saved
            torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    assert not any("forward" in vars(m) or hasattr(m, "_mixa_averaging") for m in model.modules())


def test_split_projections_are_the_fused_projection_cut_into_heads():
    """q, k, v from ``split_qkv`` + ``project_heads`` against a fused qkv linear cut into heads as timm does
    (reshape, permute, unbind); q carries the scale; ``tokens_last`` is k^T; no bias stays no bias."""
    from mixa.layers.heads import project_heads, split_qkv

    g = torch.Generator().manual_seed(0)
    qkv = torch.nn.Linear(48, 3 * 48)
    x = torch.randn(2, 17, 48, generator=g)
    with torch.no_grad():
        q, k, v = qkv(x).reshape(2, 17, 3, 4, 12).permute(2, 0, 3, 1, 4).unbind(0)
        (wq, bq), (wk, bk), (wv, bv) = split_qkv(qkv.weight, qkv.bias, q_scale=12 ** -0.5)
        torch.testing.assert_close(project_heads(x, wq, bq, 4), q * 12 ** -0.5)
        torch.testing.assert_close(project_heads(x, wk, bk, 4, tokens_last=True), k.transpose(-2, -1))
        torch.testing.assert_close(project_heads(x, wv, bv, 4), v)
    assert [b for _, b in split_qkv(qkv.weight, None)] == [None, None, None]


def _linears(model, x) -> int:
    return len(linear_nodes(torch.export.export(model, (x,), strict=False).graph))


@pytest.mark.parametrize("kind", ["relu", "stella", "rala"])
def test_projection_forms_split_attention_projections_and_restore_them(kind):
    """ExecuTorch gets each attention layer's qkv as three linears (timm's kept layer and mixa's replaced one,
    which then runs its core's tokens-last form; two more linears per layer in the exported graph), outputs
    unchanged to float rounding in the plain softmax form and in the fused one (timm's own forward); timm
    layers with a q/k norm and ONNX are left alone; afterwards no override or buffer is left behind."""
    from mixa.attention import MixAttention
    from mixa.export.lowering import projection_forms, softmax_form

    model = tiny_model("vit", kind, keep=1)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    keys = set(model.state_dict())
    with torch.no_grad(), softmax_form(model, "plain"):
        expected, fused_linears = model(x), _linears(model, x)
        with projection_forms(model, "onnx") as switched:
            assert switched == []
        with projection_forms(model, "executorch") as switched:
            assert len(switched) == 2 and set(model.state_dict()) == keys
            assert all("forward" in vars(m) for m in switched)  # replaced layers: the tokens-last path
            assert sum(isinstance(m, MixAttention) for m in switched) == 1
            torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
            assert _linears(model, x) == fused_linears + 2 * 2
            with softmax_form(model, "fused"):
                torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    assert not any({"forward", "_heads"} & set(vars(m)) or hasattr(m, "_mixa_q_weight") for m in model.modules())
    normed = create_model("deit_tiny_patch16_224", pretrained=False, qk_norm=True, **TINY["vit"][1])
    with projection_forms(normed, "executorch") as switched:
        assert switched == []


@pytest.mark.parametrize("kind", ["relu", "rala"])
def test_projection_forms_keep_swin_shifted_windows_exact(kind):
    """Swin with linear layers on the shifted blocks (``select='first'``): the masked calls take the layer's
    own forward with the split heads, the unmasked ones the tokens-last path; outputs unchanged."""
    from mixa.export.lowering import projection_forms

    model = tiny_model("swin", kind, keep=0)
    x = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(x)
        with projection_forms(model, "executorch") as switched:
            assert len(switched) == 2
            torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
