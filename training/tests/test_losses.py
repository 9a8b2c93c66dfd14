"""Hand-computed cases of the Fathi et al. losses."""

import math

import pytest
import torch

from instseg_train.losses import (
    PixelSample,
    classification_loss,
    classification_targets,
    classification_weight,
    embedding_loss,
    pair_losses,
    pair_weights,
    sample_pixels,
    total_loss,
    with_hard_background,
)
from instseg_train.model import InstSegNet


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def sigma(d):
    return 2 / (1 + math.exp(d))


def test_same_segment_at_distance_zero_costs_nothing():
    embedding = torch.zeros(3, 1, 2)  # D=3, two pixels, identical embeddings
    ids = torch.tensor([[5, 5]])
    loss = embedding_loss(embedding, ids, k=2, generator=gen())
    assert -math.log(sigma(0)) == 0
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_two_segments_exact_weighted_value():
    # D=1. Background (id 0): 3 pixels at e=0. Instance 1: 2 pixels at e=1 and e=2. K=2.
    # Sampled: two background pixels (both e=0, whichever they are) and both instance pixels.
    embedding = torch.tensor([[[0.0, 0.0, 0.0, 1.0, 2.0]]])
    ids = torch.tensor([[0, 0, 0, 1, 1]])
    # Ordered pairs p != q of the 4 samples (12), each of weight 1/12:
    #   bg-bg  : 2 pairs, d=0, y=1, loss -log sigma(0) = 0
    #   b1-b2  : 2 pairs, d=1, y=1, loss -log sigma(1)
    #   bg-b1  : 4 pairs, d=1, y=0, loss -log(1 - sigma(1))
    #   bg-b2  : 4 pairs, d=4, y=0, loss -log(1 - sigma(4))
    expected = (2 * -math.log(sigma(1)) + 4 * -math.log(1 - sigma(1)) + 4 * -math.log(1 - sigma(4))) / 12
    # = (2 * 0.620115 + 4 * 0.771936 + 4 * 0.036635) / 12
    assert expected == pytest.approx(0.372876, abs=1e-6)
    for seed in range(5):
        loss = embedding_loss(embedding, ids, k=2, generator=gen(seed))
        assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_pair_weights_are_uniform_and_sum_to_one():
    ids = torch.tensor([0] * 3 + [1] * 5 + [2] * 10).reshape(3, 6)
    sample = sample_pixels(ids, k=4, generator=gen())
    assert sample.sizes.tolist() == [3, 5, 10]
    w = pair_weights(sample)
    assert w.sum().item() == pytest.approx(1.0)
    assert torch.all(w.diagonal() == 0)
    off = w[~torch.eye(len(sample.segment), dtype=torch.bool)]
    assert torch.allclose(off, torch.full_like(off, 1.0 / (12 * 11)))
    # with replacement for the 3-pixel segment: still K=4 samples each, all from their segment
    assert torch.bincount(sample.segment).tolist() == [4, 4, 4]
    assert torch.equal(ids.reshape(-1)[sample.index], sample.ids[sample.segment])


def test_sample_pixels_of_sparse_ids_come_from_their_segment_without_repeats():
    # ids need not be consecutive (nearest downsampling to the loss grid can drop a small
    # instance); segments of at least K pixels are sampled without replacement.
    ids = torch.zeros(6, 8, dtype=torch.long)
    ids[1:4, 1:5] = 4
    ids[4:, 5:] = 9
    sample = sample_pixels(ids, k=5, generator=gen())
    assert sample.ids.tolist() == [0, 4, 9] and sample.sizes.tolist() == [30, 12, 6]
    assert sample.segment.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert torch.equal(ids.reshape(-1)[sample.index], sample.ids[sample.segment])
    assert len(set(sample.index.tolist())) == 15


def test_numerically_stable_at_zero_and_huge_distances():
    d = torch.tensor([0.0, 1e4, 0.0, 1e4])
    same = torch.tensor([False, False, True, True])
    losses = pair_losses(d, same)
    assert torch.isfinite(losses).all()
    assert losses[1].item() == pytest.approx(0.0, abs=1e-6)  # far apart, different: free
    assert losses[2].item() == pytest.approx(0.0, abs=1e-6)  # together, same: free
    assert losses[3].item() == pytest.approx(1e4 - math.log(2), rel=1e-6)
    assert losses[0].item() == pytest.approx(-math.log(1 - sigma(1e-6)), rel=1e-4)  # clamped, ~14.5
    # gradients through the embedding: two segments on the same point, a third 100 away (d = 1e4)
    embedding = torch.tensor([[[0.0, 0.0, 0.0, 0.0, 100.0, 100.0]]], requires_grad=True)
    ids = torch.tensor([[0, 0, 1, 1, 2, 2]])
    loss = embedding_loss(embedding, ids, k=2, generator=gen())
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(embedding.grad).all()


def test_classification_target_is_the_class_when_clustered():
    # background at e=0, instance 1 (class 3) at e=10, instance 2 (class 1) at e=20: IoU = 1
    ids = torch.tensor([[0, 0, 1, 1, 1, 2, 2, 2]])
    embedding = (ids.float() * 10)[None]
    table = {1: 3, 2: 1}
    thresholds = (0.25, 0.5, 0.75, 0.9)
    sample = sample_pixels(ids, k=5, generator=gen())
    target = classification_targets(embedding, ids, table, thresholds, sample)
    want = torch.tensor([0, 3, 1])[sample.segment]
    assert target.shape == (4, 15) and torch.equal(target, want.expand(4, -1))
    classes = torch.full((4, 4, 1, 8), 0.25)  # uniform over C+1 = 4 classes
    loss = classification_loss(embedding, classes, ids, table, thresholds, k=5, generator=gen())
    assert loss.item() == pytest.approx(math.log(4), rel=1e-6)
    classes = torch.zeros(4, 4, 1, 8)
    classes[:, 0, :, :2] = classes[:, 3, :, 2:5] = classes[:, 1, :, 5:] = 1  # perfect
    loss = classification_loss(embedding, classes, ids, table, thresholds, k=5, generator=gen())
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_classification_target_is_background_when_merged():
    # instance 1 (2 px) and instance 2 (6 px) share one embedding: every mask is their union
    # (8 px). IoU for instance 1 = 2/8 < 0.5 -> background; for instance 2 = 6/8 -> its class.
    ids = torch.tensor([[0, 0, 1, 1, 2, 2, 2, 2, 2, 2]])
    embedding = (ids > 0).float()[None] * 10
    sample = sample_pixels(ids, k=3, generator=gen())
    target = classification_targets(embedding, ids, torch.tensor([0, 4, 2]), (0.5, 0.9), sample)
    assert torch.equal(target, torch.tensor([0, 0, 2])[sample.segment].expand(2, -1))


def test_classification_target_depends_on_threshold():
    # instance 1: 3 pixels at e = 0, 1, 2; background at e = 50. tau = 0.25: limit ln 7 = 1.95,
    # masks {0, 1}, {0, 1, 2}, {1, 2}: IoU 2/3, 1, 2/3 -> class. tau = 0.9: limit ln(11/9) = 0.2,
    # each mask is its own pixel: IoU 1/3 -> background.
    ids = torch.tensor([[0, 1, 1, 1]])
    embedding = torch.tensor([[[50.0, 0.0, 1.0, 2.0]]])
    sample = sample_pixels(ids, k=3, generator=gen())
    target = classification_targets(embedding, ids, [0, 7], (0.25, 0.9), sample)
    inst = sample.segment == 1
    # tau=0.25: mask of e=1 covers all 3 (IoU 1); of e=0 or 2 covers 2 of 3 (IoU 2/3): class
    assert torch.equal(target[0, inst], torch.full((3,), 7))
    assert torch.equal(target[1, inst], torch.zeros(3, dtype=torch.long))
    assert torch.all(target[:, ~inst] == 0)


def test_lambda_ramp():
    assert classification_weight(0, 1000) == 0.0
    assert classification_weight(500, 1000) == pytest.approx(0.1)
    assert classification_weight(1000, 1000) == pytest.approx(0.2)
    assert classification_weight(5000, 1000) == pytest.approx(0.2)


def test_total_loss_on_model_outputs_has_finite_gradients():
    torch.manual_seed(0)
    model = InstSegNet()
    images = torch.randn(2, 3, 64, 64)
    ids = torch.zeros(2, 16, 16, dtype=torch.long)
    ids[0, 2:8, 2:8] = 1
    ids[0, 10:14, 3:15] = 2
    ids[1, 5:6, 5:7] = 1  # 2 px: sampled with replacement
    tables = [torch.tensor([0, 1, 4]), {1: 2}]
    embedding, classes = model(images)
    loss, parts = total_loss(embedding, classes, ids, tables, model.thresholds, step=50, ramp_steps=100,
                             generator=gen())
    assert parts["lambda"] == pytest.approx(0.1)
    assert loss.item() == pytest.approx(parts["embedding"].item() + 0.1 * parts["classification"].item(), rel=1e-5)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_frame_pairs_take_the_embedding_loss_over_both_frames():
    # D = 1, two 1 x 4 frames, K = 4: background (id 0) at e = 0 in both, object 1 at e = 3 in
    # the first frame and at e = 0.3 in the second. Per frame the object is far from the
    # background; over the pair its two halves are 2.7 apart and its second half sits next to
    # the background, so only the joint loss asks it to stay put.
    ids = torch.tensor([[[0, 0, 1, 1]], [[0, 0, 1, 1]]])
    embedding = torch.tensor([[[[0.0, 0.0, 3.0, 3.0]]], [[[0.0, 0.0, 0.3, 0.3]]]])
    classes = torch.full((2, 1, 2, 1, 4), 0.5)  # T = 1, C = 1
    tables = [torch.tensor([0, 1])] * 2
    kw = dict(step=0, ramp_steps=10, k=4)  # lambda 0: L_e only
    per_frame, _ = total_loss(embedding, classes, ids, tables, [0.5], generator=gen(), **kw)
    joint, parts = total_loss(embedding, classes, ids, tables, [0.5], generator=gen(), pairs=1, **kw)
    # Joint: 4 background samples at 0, object samples 3, 3, 0.3, 0.3 (8 samples, 56 ordered
    # pairs of weight 1/56): bg-bg 12 x 0; obj-obj 4 x (d=0) + 8 x -log sigma(2.7^2);
    # bg-obj 16 x -log(1 - sigma(9)) + 16 x -log(1 - sigma(0.09)).
    expected = (8 * -math.log(sigma(2.7 ** 2)) + 16 * -math.log(1 - sigma(9))
                + 16 * -math.log(1 - sigma(0.09))) / 56
    assert joint.item() == pytest.approx(expected, rel=1e-5)
    assert parts["embedding"].item() == pytest.approx(expected, rel=1e-5)
    # Per frame: 4 samples of each segment (with replacement, all at the same value), 32 of the
    # 56 ordered pairs are bg-obj.
    frame_one = 32 * -math.log(1 - sigma(9)) / 56
    frame_two = 32 * -math.log(1 - sigma(0.09)) / 56
    assert per_frame.item() == pytest.approx((frame_one + frame_two) / 2, rel=1e-5)
    # the same object at the same place in both frames: joint equals per frame
    still = embedding[:1].expand(2, -1, -1, -1)
    a, _ = total_loss(still, classes, ids, tables, [0.5], generator=gen(), pairs=1, **kw)
    b, _ = total_loss(still, classes, ids, tables, [0.5], generator=gen(), **kw)
    assert a.item() == pytest.approx(b.item(), rel=1e-5)
    with pytest.raises(ValueError, match="do not fit"):
        total_loss(embedding, classes, ids, tables, [0.5], pairs=2, **kw)


def test_hard_background_adds_the_most_seed_like_background_pixels_with_target_background():
    # 1 x 4 grid: pixels 0, 1, 3 are background, pixel 2 is instance 1 (class 2). T = 1, C = 2.
    ids = torch.tensor([[0, 0, 1, 0]])
    classes = torch.tensor([[[0.9, 0.2, 0.1, 0.5],   # background
                             [0.05, 0.7, 0.1, 0.2],  # class 1
                             [0.05, 0.1, 0.8, 0.3]]])  # class 2 -> seediness .05 .7 .8 .3
    sample = sample_pixels(ids, k=2, generator=gen())
    hard = with_hard_background(sample, classes, ids, count=2)
    assert hard.index[len(sample.index):].tolist() == [1, 3]  # pixel 2 is not background
    embedding = torch.tensor([[[0.0, 0.0, 5.0, 0.0]]])
    targets = classification_targets(embedding, ids, [0, 2], [0.5], hard)
    assert targets[0, len(sample.index):].tolist() == [0, 0]
    assert with_hard_background(sample, classes, torch.ones_like(ids), count=2) is sample


def test_classification_targets_match_masks_grown_pixel_by_pixel():
    # Random embeddings around four segments: the dense float targets equal the IoU >= 0.5
    # rule evaluated directly on float64 distances, seed by seed and threshold by threshold.
    torch.manual_seed(3)
    ids = torch.randint(0, 4, (12, 12))
    embedding = ids.float()[None].repeat(3, 1, 1) + 0.6 * torch.randn(3, 12, 12)
    thresholds = (0.25, 0.5, 0.75, 0.9)
    sample = sample_pixels(ids, k=6, generator=gen())
    target = classification_targets(embedding, ids, [0, 5, 6, 7], thresholds, sample)
    e = embedding.reshape(3, -1).double()
    flat = ids.reshape(-1)
    for m, (index, segment) in enumerate(zip(sample.index.tolist(), sample.segment.tolist())):
        seed_id = int(sample.ids[segment])
        truth = flat == seed_id
        d = ((e - e[:, index : index + 1]) ** 2).sum(0)
        for t, tau in enumerate(thresholds):
            mask = d <= math.log(2 / tau - 1)
            iou = (mask & truth).sum() / (mask | truth).sum()
            want = [0, 5, 6, 7][seed_id] if seed_id and iou >= 0.5 else 0
            assert target[t, m] == want
    assert (target > 0).any() and (target == 0).any()


def test_classification_target_mask_includes_pixels_exactly_at_the_distance_limit():
    # Instance 1: the seed at e = 0 and two pixels at e = 0.5, so d = 0.25 exactly (float32);
    # tau is chosen so that ln(2 / tau - 1) = 0.25. At that tau the mask holds all three pixels
    # (IoU 1: the class); a hair above it, only the seed (IoU 1/3: background).
    embedding = torch.tensor([[[0.0, 0.5, 0.5, 5.0]]])
    ids = torch.tensor([[1, 1, 1, 0]])
    sample = PixelSample(torch.tensor([0]), torch.tensor([1]), torch.tensor([0, 1]), torch.tensor([1, 3]))
    at_limit = 2 / (1 + math.exp(0.25))
    target = classification_targets(embedding, ids, [0, 3], (at_limit, at_limit + 1e-6), sample)
    assert target[:, 0].tolist() == [3, 0]


def test_classification_targets_of_an_image_without_instances_are_background():
    ids = torch.zeros(4, 4, dtype=torch.long)
    sample = sample_pixels(ids, k=3, generator=gen())
    target = classification_targets(torch.randn(2, 4, 4), ids, [0], (0.25, 0.9), sample)
    assert target.shape == (2, 3) and not target.any()
