"""Model budget, ONNX export and contract metadata."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from instseg_train.export import check_export, contract_metadata, export_onnx
from instseg_train.model import InstSegNet, count_flops, parameter_bytes
from instseg_train.postprocess import postprocess

LABELS = ["circle", "square", "triangle", "star"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = InstSegNet()
    net.train()  # give the batch norms non-trivial statistics, so folding them is exercised
    with torch.no_grad():
        net(torch.randn(4, 3, 64, 64) * 2 + 0.5)
    return net.eval()


def test_model_shapes_and_budget(model):
    emb, cls = model(torch.randn(2, 3, 256, 192))
    assert emb.shape == (2, 8, 64, 48)
    assert cls.shape == (2, 4, 5, 64, 48)
    assert torch.allclose(cls.sum(2), torch.ones(2, 4, 64, 48), atol=1e-5)
    flops = count_flops(model, (256, 256))
    assert 0.3e9 < flops <= 1.5e9
    assert parameter_bytes(model) <= 4 * 1024 * 1024
    assert model.mean == (0.485, 0.456, 0.406) and model.std == (0.229, 0.224, 0.225)


def test_finer_output_strides_refine_the_embedding_at_stride_2():
    torch.manual_seed(0)
    fine = InstSegNet(output_stride=2).eval()
    assert count_flops(fine, (256, 256)) <= 1.5e9 and parameter_bytes(fine) <= 4 * 1024 * 1024
    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        emb2, cls2 = fine(image)
        fine.output_stride = 1  # same weights: stride 1 upsamples the stride-2 outputs bilinearly
        emb1, cls1 = fine(image)
    assert emb2.shape == (1, 8, 32, 48) and cls2.shape == (1, 4, 5, 32, 48)
    assert emb1.shape == (1, 8, 64, 96) and cls1.shape == (1, 4, 5, 64, 96)
    assert torch.allclose(cls2.sum(2), torch.ones(1, 4, 32, 48), atol=1e-5)
    # Bilinear upsampling keeps the mean of each output map and only interpolates between values.
    assert torch.allclose(emb1.mean((2, 3)), emb2.mean((2, 3)), atol=0.05)
    assert emb1.max() <= emb2.max() + 1e-5 and emb1.min() >= emb2.min() - 1e-5
    # The refinement sees the first stage's features: the stride-2 map is not an upsampled stride-4 one.
    assert not torch.allclose(emb2[..., 0::2, 0::2], emb2[..., 1::2, 1::2], atol=1e-3)
    with pytest.raises(ValueError, match="output_stride"):
        InstSegNet(output_stride=3)


def test_count_flops_by_hand():
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2, padding=1))
    assert count_flops(conv, (8, 8)) == 2 * (4 * 4 * 4) * 3 * 9


def metadata(path):
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


@pytest.mark.parametrize("option", [{"overlaps": "nearer"}, {"max_overlap": 1.5}])
def test_recommendations_outside_their_values_are_refused(model, option):
    with pytest.raises(ValueError, match=next(iter(option))):
        contract_metadata(model, (256, 256), **option)


def test_export_fixed_size(model, tmp_path):
    path = tmp_path / "model.onnx"
    export_onnx(model, path, input_size=(192, 256), labels=LABELS, alpha=0.3, seed_threshold=0.5, min_area=4,
                track_seed_threshold=0.3, overlaps="confident", max_overlap=0.5,
                extra_metadata={"instseg.note": "untrained"})
    assert path.stat().st_size <= 4 * 1024 * 1024
    assert not list(tmp_path.glob("*.data")) and len(list(tmp_path.iterdir())) == 1  # no external data
    # The class softmax is spelt out (see softmax_over_classes): no slow middle-axis Softmax node.
    assert "Softmax" not in {node.op_type for node in onnx.load(str(path)).graph.node}
    assert metadata(path) == {
        "instseg.contract": "1",
        "instseg.thresholds": "0.25,0.5,0.75,0.9",
        "instseg.labels": "circle,square,triangle,star",
        "instseg.mean": "0.485,0.456,0.406",
        "instseg.std": "0.229,0.224,0.225",
        "instseg.input-size": "256x192",
        "instseg.resize": "letterbox",
        "instseg.alpha": "0.3",
        "instseg.seed-threshold": "0.5",
        "instseg.min-area": "4",
        "instseg.track-seed-threshold": "0.3",
        "instseg.overlaps": "confident",
        "instseg.max-overlap": "0.5",
        "instseg.note": "untrained",
    }
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "image" and inp.shape == ["N", 3, 192, 256]
    assert [(o.name, o.shape) for o in session.get_outputs()] == [
        ("embedding", ["N", 8, 48, 64]),
        ("classes", ["N", 4, 5, 48, 64]),
    ]
    check_export(model, path)
    assert model.training is False

    # the NumPy reference post-processing runs on the exported model's outputs
    image = np.random.default_rng(1).standard_normal((1, 3, 192, 256)).astype(np.float32)
    emb, cls = session.run(["embedding", "classes"], {"image": image})
    thresholds = [float(t) for t in metadata(path)["instseg.thresholds"].split(",")]
    for seed_threshold in (0.5, 0.0):  # untrained: maybe no seed at 0.5; 0.0 forces masks
        instances, labels = postprocess(emb[0], cls[0], thresholds, seed_threshold=seed_threshold)
        assert labels.shape == (48, 64) and labels.dtype == np.uint8
        assert int(labels.max()) == len(instances)
    assert instances  # seed threshold 0 always seeds


def test_export_dynamic_size(model, tmp_path):
    path = tmp_path / "dynamic.onnx"
    export_onnx(model, path, dynamic=True)
    meta = metadata(path)
    assert meta["instseg.labels"] == "class1,class2,class3,class4"
    assert meta["instseg.input-size"] == "256x256" and "instseg.alpha" not in meta
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[:2] == ["N", 3]
    emb, cls = session.run(None, {"image": np.zeros((1, 3, 128, 320), np.float32)})
    assert emb.shape == (1, 8, 32, 80) and cls.shape == (1, 4, 5, 32, 80)
    check_export(model, path)


def test_export_rejects_bad_contract(model, tmp_path):
    with pytest.raises(ValueError):
        export_onnx(model, tmp_path / "x.onnx", labels=["a", "b"])
    with pytest.raises(ValueError):
        export_onnx(model, tmp_path / "x.onnx", thresholds=(0.9, 0.75, 0.5, 0.25))
