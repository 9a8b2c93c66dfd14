"""Argument checks of the training loop that would otherwise hang or fail deep inside it."""

import pytest

from instseg_train.coco import generate_dataset
from instseg_train.train import train


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
