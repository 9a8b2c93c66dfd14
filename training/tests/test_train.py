"""Argument checks of the training loop that would otherwise hang or fail deep inside it."""

import pytest
import torch

from instseg_train.coco import generate_dataset
from instseg_train.export import read_metadata
from instseg_train.model import InstSegNet
from instseg_train import train as train_module
from instseg_train.train import load_matching, native_bf16, resolve_precision, train, training_outputs


@pytest.fixture
def tiny(tmp_path):
    generate_dataset(str(tmp_path), seed=1, train=2, val=0, test=0, clips=0, size=(32, 32), frames=3,
                     train_clips=1)
    return str(tmp_path)


def test_a_batch_larger_than_the_data_is_refused(tiny, tmp_path):
    with pytest.raises(ValueError, match="2 samples make no batch of 4"):
        train(tiny, str(tmp_path / "m.onnx"), steps=1, batch=4, size=(32, 32))


def test_pairs_must_leave_still_images_in_the_batch(tiny, tmp_path):
    with pytest.raises(ValueError, match="leaves no still image"):
        train(tiny, str(tmp_path / "m.onnx"), steps=1, batch=2, pairs=1, size=(32, 32))


def test_pairs_train_from_the_training_clips(tiny, tmp_path):
    model = train(tiny, str(tmp_path / "m.onnx"), steps=2, batch=4, pairs=1, size=(32, 32), log_every=1)
    assert (tmp_path / "m.onnx").stat().st_size > 0 and not model.training


def test_output_stride_1_trains_on_the_stride_2_grid_and_exports_the_upsampled_outputs():
    model = InstSegNet(output_stride=1)
    embedding, classes = training_outputs(model, torch.randn(2, 3, 32, 32))
    assert embedding.shape == (2, 8, 16, 16) and classes.shape == (2, 4, 5, 16, 16)
    exported, probabilities = model.eval()(torch.randn(1, 3, 32, 32))
    assert exported.shape == (1, 8, 32, 32) and probabilities.shape == (1, 4, 5, 32, 32)


def test_init_loads_the_weights_that_fit(tiny, tmp_path, capsys):
    first = train(tiny, str(tmp_path / "a.onnx"), steps=1, batch=2, size=(32, 32), output_stride=2)
    other = InstSegNet(num_classes=2, output_stride=2)
    load_matching(other, torch.load(str(tmp_path / "a.onnx.pt")))
    assert ("4 tensors keep their initialisation: class_fine.bias, class_fine.weight, class_head.bias, "
            "class_head.weight") in capsys.readouterr().out
    assert torch.equal(other.stage1[0][0].weight, first.stage1[0][0].weight)
    second = train(tiny, str(tmp_path / "b.onnx"), steps=1, batch=2, size=(32, 32), output_stride=1, lr=1e-9,
                   init=str(tmp_path / "a.onnx.pt"))
    assert torch.allclose(second.stage1[0][0].weight, first.stage1[0][0].weight, atol=1e-6)


def test_bf16_trains_the_network_under_autocast_and_exports_float32(tiny, tmp_path):
    model = train(tiny, str(tmp_path / "m.onnx"), steps=2, batch=4, pairs=1, size=(32, 32), output_stride=1,
                  precision="bf16")
    weight = model.stage1[0][0].weight
    assert weight.dtype == torch.float32 and weight.is_contiguous()
    embedding, classes = training_outputs(model, torch.randn(1, 3, 32, 32), bf16=True)
    assert embedding.dtype == classes.dtype == torch.float32
    assert (tmp_path / "m.onnx").stat().st_size > 0


def test_an_unknown_precision_is_refused(tiny, tmp_path):
    with pytest.raises(ValueError, match="neither fp32, bf16 nor auto"):
        train(tiny, str(tmp_path / "m.onnx"), steps=1, batch=2, size=(32, 32), precision="fp16")


@pytest.mark.parametrize("native, chosen", [(True, "bf16"), (False, "fp32")])
def test_auto_precision_takes_bf16_only_where_it_is_native(monkeypatch, capsys, native, chosen):
    monkeypatch.setattr(train_module, "native_bf16", lambda device: native)
    assert resolve_precision("auto", "cpu") == chosen
    assert f"precision: {chosen} ({'native' if native else 'no native'} bfloat16 on cpu)" in capsys.readouterr().out
    assert resolve_precision("fp32", "cpu") == "fp32" and capsys.readouterr().out == ""


def test_bf16_where_it_is_emulated_is_kept_with_a_warning(monkeypatch, capsys):
    monkeypatch.setattr(train_module, "native_bf16", lambda device: False)
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert "warning: cpu has no native bfloat16" in capsys.readouterr().out


def test_auto_precision_trains_with_what_it_picked(tiny, tmp_path, capsys):
    model = train(tiny, str(tmp_path / "m.onnx"), steps=1, batch=2, size=(32, 32), precision="auto")
    picked = "bf16" if native_bf16("cpu") else "fp32"
    assert f"precision: {picked}" in capsys.readouterr().out
    assert model.stage1[0][0].weight.dtype == torch.float32


def test_the_memory_cache_of_the_loader_workers_changes_nothing_but_speed(tiny, tmp_path):
    def weights(cache):
        model = train(tiny, str(tmp_path / f"{cache}.onnx"), steps=3, batch=4, pairs=1, size=(32, 32),
                      workers=1, cache=cache)  # one batch per epoch: later steps read the cache
        return model.state_dict()

    plain, cached = weights(False), weights(True)
    assert all(torch.equal(plain[name], cached[name]) for name in plain)


def test_min_area_defaults_to_four_stride_4_cells_and_can_be_given(tiny, tmp_path):
    train(tiny, str(tmp_path / "a.onnx"), steps=1, batch=2, size=(32, 32), output_stride=1)
    train(tiny, str(tmp_path / "b.onnx"), steps=1, batch=2, size=(32, 32), output_stride=1, min_area=16)
    assert read_metadata(str(tmp_path / "a.onnx"))["instseg.min-area"] == "64"
    assert read_metadata(str(tmp_path / "b.onnx"))["instseg.min-area"] == "16"
