"""COCO writing, dataset generation and the CocoInstances loader."""

import filecmp
import json
import os

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from instseg_train.coco import (ClipPairs, CocoInstances, _letterbox_geometry, generate_dataset, main,
                                resize_bilinear, write_coco)
from instseg_train.shapes import render_clip, render_scene

SIZE = (48, 64)


def test_write_and_load_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    scenes = [render_scene(rng, size=SIZE) for _ in range(3)]
    clip = render_clip(rng, frames=4, size=SIZE)
    path = write_coco(str(tmp_path), "mix", scenes + [clip])
    coco = COCO(path)
    frames = scenes + [f[:3] for f in clip]
    assert len(coco.imgs) == 7
    ds = CocoInstances(str(tmp_path / "mix"), path)
    for idx, (image, masks, classes) in enumerate(frames):
        info = coco.imgs[idx + 1]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=info["id"]))
        decoded = np.stack([coco.annToMask(a).astype(bool) for a in anns])
        np.testing.assert_array_equal(decoded, masks)
        assert [a["category_id"] for a in anns] == classes.tolist()
        for a, m in zip(anns, masks):
            assert a["area"] == m.sum() and a["iscrowd"] == 0
            x, y, w, h = a["bbox"]
            ys, xs = np.nonzero(m)
            assert (x, y, w, h) == (xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1)
        img, ids, cls = ds[idx]
        assert img.shape == (3,) + SIZE and img.dtype.is_floating_point
        assert float(img.min()) >= 0 and float(img.max()) <= 1
        np.testing.assert_array_equal((img.numpy() * 255).round().astype(np.uint8).transpose(1, 2, 0), image)
        expected = (masks * np.arange(1, len(masks) + 1)[:, None, None]).sum(0)
        np.testing.assert_array_equal(ids.numpy(), expected)
        np.testing.assert_array_equal(cls.numpy(), classes)
    # clip fields
    for f, (_, _, _, tracks) in enumerate(clip):
        info = coco.imgs[4 + f]
        assert info["video_id"] == 1 and info["frame_index"] == f
        anns = coco.loadAnns(coco.getAnnIds(imgIds=info["id"]))
        assert [a["track_id"] for a in anns] == tracks.tolist()
    assert all("track_id" not in a for a in coco.loadAnns(coco.getAnnIds(imgIds=[1, 2, 3])))


def test_generate_dataset_reproducible(tmp_path):
    kw = dict(train=3, val=2, test=1, clips=1, size=SIZE, frames=3)
    a = generate_dataset(str(tmp_path / "a"), seed=7, **kw)
    b = generate_dataset(str(tmp_path / "b"), seed=7, workers=2, **kw)
    c = generate_dataset(str(tmp_path / "c"), seed=8, **kw)
    assert set(a) == {"train", "val", "test", "clips"}
    for split in a:
        assert filecmp.cmp(a[split], b[split], shallow=False)
        names = sorted(os.listdir(tmp_path / "a" / split))
        assert names == sorted(os.listdir(tmp_path / "b" / split))
        for n in names:
            assert filecmp.cmp(tmp_path / "a" / split / n, tmp_path / "b" / split / n, shallow=False)
    assert not filecmp.cmp(a["train"], c["train"], shallow=False)
    # splits come from different seeds
    assert not filecmp.cmp(tmp_path / "a/train/000001.png", tmp_path / "a/val/000001.png", shallow=False)
    assert len(json.load(open(a["clips"]))["images"]) == 3
    # training clips have their own seeds and leave the other splits as they were
    d = generate_dataset(str(tmp_path / "d"), seed=7, train_clips=2, **kw)
    assert set(d) == set(a) | {"train_clips"}
    for split in a:
        assert filecmp.cmp(a[split], d[split], shallow=False)
    assert not filecmp.cmp(tmp_path / "d/clips/v0001_f000.png", tmp_path / "d/train_clips/v0001_f000.png",
                           shallow=False)


def test_clip_pairs_give_one_id_per_track_across_both_frames(tmp_path):
    rng = np.random.default_rng(4)
    clips = [render_clip(rng, frames=3, size=SIZE) for _ in range(2)]
    path = write_coco(str(tmp_path), "clips", [render_scene(rng, size=SIZE)] + clips)
    pairs = ClipPairs(CocoInstances(str(tmp_path / "clips"), path))
    assert len(pairs) == 4  # 2 per clip; the still image is no clip
    for index, (clip, f) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        images, ids, classes = pairs[index]
        assert images.shape == (2, 3) + SIZE and ids.shape == (2,) + SIZE
        frames = clips[clip][f:f + 2]
        tracks = sorted(set().union(*(set(t.tolist()) for _, _, _, t in frames)))
        assert classes.shape == (len(tracks),)
        for k, (image, masks, cls, track_ids) in enumerate(frames):
            np.testing.assert_array_equal((images[k].numpy() * 255).round().astype(np.uint8).transpose(1, 2, 0),
                                          image)
            for mask, c, t in zip(masks, cls, track_ids):
                wanted = tracks.index(t) + 1  # the same id in both frames
                assert set(np.unique(ids[k].numpy()[mask])) == {wanted}
                assert classes[wanted - 1] == c
            assert (ids[k].numpy()[~masks.any(0)] == 0).all()
    flipped = ClipPairs(CocoInstances(str(tmp_path / "clips"), path, hflip=True))
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    for index in range(len(flipped)):  # both frames flip together
        images, ids, _ = flipped[index]
        plain, plain_ids, _ = pairs[index]
        same = [torch.equal(ids[k], plain_ids[k]) for k in range(2)]
        mirrored = [torch.equal(ids[k], plain_ids[k].flip(-1)) for k in range(2)]
        assert all(same) or all(mirrored)
    with pytest.raises(ValueError, match="no consecutive clip frames"):
        scenes = write_coco(str(tmp_path), "stills", [render_scene(rng, size=SIZE)])
        ClipPairs(CocoInstances(str(tmp_path / "stills"), scenes))


def test_cached_loader_serves_the_same_samples_from_memory(tmp_path):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    path = write_coco(str(tmp_path), "mix", [render_scene(rng, size=SIZE), render_clip(rng, frames=2, size=SIZE)])
    plain = CocoInstances(str(tmp_path / "mix"), path)
    cached = CocoInstances(str(tmp_path / "mix"), path, cache=True)
    for _ in range(2):  # the second round reads from memory
        for index in range(len(plain)):
            for got, wanted in zip(cached[index], plain[index]):
                np.testing.assert_array_equal(got.numpy(), wanted.numpy())
        for got, wanted in zip(ClipPairs(cached)[0], ClipPairs(plain)[0]):
            np.testing.assert_array_equal(got.numpy(), wanted.numpy())
    for name in os.listdir(tmp_path / "mix"):
        os.remove(tmp_path / "mix" / name)
    assert cached[2][1].dtype == torch.int64  # though kept as uint8
    with pytest.raises(FileNotFoundError):
        plain[0]


def test_cli(tmp_path, capsys):
    main(["--out", str(tmp_path), "--seed", "1", "--train", "2", "--val", "1", "--test", "0",
          "--clips", "0", "--size", "32", "32"])
    assert "images/s" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "annotations")) == ["instances_train.json", "instances_val.json"]


@pytest.fixture
def hand_written(tmp_path):
    """A 10x12 image with a polygon, an uncompressed RLE, a compressed RLE and a crowd region."""
    from PIL import Image

    h, w = 10, 12
    Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(tmp_path / "a.png")
    rle_mask = np.zeros((h, w), np.uint8)
    rle_mask[6:9, 7:11] = 1
    # uncompressed RLE: column-major run lengths starting with zeros
    flat = rle_mask.flatten(order="F")
    runs, cur, n = [], 0, 0
    for v in flat:
        if v != cur:
            runs.append(n)
            cur, n = v, 0
        n += 1
    runs.append(n)
    comp_mask = np.zeros((h, w), np.uint8)
    comp_mask[0:2, 9:12] = 1
    comp = mask_utils.encode(np.asfortranarray(comp_mask))
    crowd = mask_utils.encode(np.asfortranarray(np.ones((h, w), np.uint8)))
    data = {
        "images": [{"id": 5, "file_name": "a.png", "height": h, "width": w}],
        "categories": [{"id": 3, "name": "cat"}, {"id": 10, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 10, "iscrowd": 0,
             "segmentation": [[1, 1, 5, 1, 5, 4, 1, 4]], "area": 12, "bbox": [1, 1, 4, 3]},
            {"id": 2, "image_id": 5, "category_id": 3, "iscrowd": 0,
             "segmentation": {"size": [h, w], "counts": runs}, "area": 12, "bbox": [7, 6, 4, 3]},
            {"id": 3, "image_id": 5, "category_id": 3, "iscrowd": 1,
             "segmentation": {"size": [h, w], "counts": crowd["counts"].decode()}, "area": 120,
             "bbox": [0, 0, 12, 10]},
            {"id": 4, "image_id": 5, "category_id": 10, "iscrowd": 0,
             "segmentation": {"size": [h, w], "counts": comp["counts"].decode()}, "area": 6,
             "bbox": [9, 0, 3, 2]},
        ],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return tmp_path, path, rle_mask.astype(bool), comp_mask.astype(bool)


def test_loader_reads_polygon_and_rle(hand_written):
    root, path, rle_mask, comp_mask = hand_written
    ds = CocoInstances(str(root), str(path))
    assert len(ds) == 1 and ds.category_names == ["cat", "dog"]
    img, ids, cls = ds[0]
    ids = ids.numpy()
    assert img.shape == (3, 10, 12) and abs(float(img[0, 0, 0]) - 100 / 255) < 1e-6
    assert cls.tolist() == [2, 1, 2]  # dog, cat, dog; the crowd region is ignored
    poly = ids == 1
    assert poly[2:4, 2:5].all() and not poly[6:].any() and poly.sum() >= 12
    np.testing.assert_array_equal(ids == 2, rle_mask)
    np.testing.assert_array_equal(ids == 3, comp_mask)
    assert ((ids == 0) == ~(poly | rle_mask | comp_mask)).all()


def test_loader_resize_and_flip(hand_written):
    root, path, rle_mask, _ = hand_written
    ds = CocoInstances(str(root), str(path), size=(20, 40), resize="letterbox")
    img, ids, cls = ds[0]
    assert img.shape == (3, 20, 40) and ids.shape == (20, 40)
    # 10x12 -> 20x24 centred in 40 columns: 8 padding columns each side
    assert float(img[:, :, :8].abs().max()) == 0 and float(img[:, :, 32:].abs().max()) == 0
    assert int(ids[:, :8].max()) == 0 and set(np.unique(ids.numpy())) == {0, 1, 2, 3}
    np.testing.assert_array_equal(ids.numpy()[:, 8:32] == 2, np.kron(rle_mask, np.ones((2, 2), bool)))
    st = CocoInstances(str(root), str(path), size=(5, 24), resize="stretch")
    _, ids_s, _ = st[0]
    np.testing.assert_array_equal(ids_s.numpy() == 2, np.kron(rle_mask[1::2], np.ones((1, 2), bool)))
    fl = CocoInstances(str(root), str(path), hflip=True)
    plain = ds.load(0)[1]
    seen = set()
    for _ in range(30):
        ids_f = fl[0][1].numpy()
        seen.add("flip" if np.array_equal(ids_f, plain[:, ::-1]) else "same")
        assert np.array_equal(ids_f, plain) or np.array_equal(ids_f, plain[:, ::-1])
    assert seen == {"flip", "same"}


def test_loader_keeps_every_instance_of_an_image_without_background(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "full.png")
    left = np.zeros((4, 6), np.uint8)
    left[:, :3] = 1

    def rle(mask):
        return {"size": [4, 6], "counts": mask_utils.encode(np.asfortranarray(mask))["counts"].decode()}

    data = {
        "images": [{"id": 1, "file_name": "full.png", "height": 4, "width": 6}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [
            {"id": 7, "image_id": 1, "category_id": 2, "iscrowd": 0, "area": 12, "bbox": [3, 0, 3, 4],
             "segmentation": rle(1 - left)},
            {"id": 8, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 12, "bbox": [0, 0, 3, 4],
             "segmentation": rle(left)},
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    _, ids, classes = CocoInstances(str(tmp_path), str(tmp_path / "ann.json"))[0]
    assert classes.tolist() == [2, 1]
    np.testing.assert_array_equal(ids.numpy(), np.where(left, 2, 1))


def test_letterbox_geometry_is_the_elements_placement():
    """The cases of `letterbox_keeps_the_aspect_ratio_and_centres` in src/preprocess.rs, as
    (height, width, top, left)."""
    cases = {
        (720, 1280, 256, 256): (144, 256, 56, 0),
        (1280, 720, 256, 256): (256, 144, 0, 56),
        (241, 321, 256, 256): (192, 256, 32, 0),  # 192.2
        (241, 321, 255, 256): (192, 256, 31, 0),  # an odd margin: the extra row at the bottom
        (64, 64, 256, 255): (255, 255, 0, 0),
        (1, 10000, 256, 256): (1, 256, 127, 0),  # a sliver keeps one row
        (48, 64, 48, 64): (48, 64, 0, 0),
        (5, 4, 10, 2): (3, 2, 3, 0),  # 2.5 rounds up, as Rust's f64::round (Python's round: 2)
        (13, 97, 256, 256): (34, 256, 111, 0),  # 34.3
    }
    for (h, w, out_h, out_w), expected in cases.items():
        assert _letterbox_geometry(h, w, out_h, out_w) == expected, (h, w, out_h, out_w)


def _pillow_bilinear_axis(image: np.ndarray, size: int, axis: int) -> np.ndarray:
    """One pass of Pillow's bilinear resampling (libImaging/Resample.c, `precompute_coeffs` and
    `normalize_coeffs_8bpc`) along ``axis``, written out in NumPy."""
    source = np.moveaxis(image, axis, 0).astype(np.int64)
    scale = source.shape[0] / size
    support = max(scale, 1.0)
    rows = []
    for i in range(size):
        centre = (i + 0.5) * scale
        first = max(int(centre - support + 0.5), 0)
        end = min(int(centre + support + 0.5), source.shape[0])
        weights = [max(0.0, 1.0 - abs((x - centre + 0.5) * (1.0 / support))) for x in range(first, end)]
        total = sum(weights)
        fixed = [int(0.5 + w / total * (1 << 22)) for w in weights]
        acc = np.full(source.shape[1:], 1 << 21, np.int64)
        for k, w in enumerate(fixed):
            acc += source[first + k] * w
        rows.append(np.clip(acc >> 22, 0, 255))
    return np.moveaxis(np.stack(rows).astype(np.uint8), 0, axis)


def test_resize_is_pillow_bilinear_horizontal_pass_first():
    rng = np.random.default_rng(0)
    # Up, down, mixed, odd; (60, 40) -> (5, 20) is one where Pillow 13 alone runs the vertical
    # pass first (the height shrinks more than twice as much as the width).
    for (h, w), (out_h, out_w) in [((13, 97), (34, 256)), ((48, 64), (96, 128)), ((60, 40), (5, 20)),
                                   ((241, 321), (192, 256)), ((7, 5), (20, 3)), ((9, 9), (9, 4))]:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        expected = image
        if out_w != w:
            expected = _pillow_bilinear_axis(expected, out_w, 1)
        if out_h != h:
            expected = _pillow_bilinear_axis(expected, out_h, 0)
        np.testing.assert_array_equal(resize_bilinear(image, out_w, out_h), expected, err_msg=f"{h}x{w}")
    # The row of the issue: 16 pixels 255, 0, 0, 0 repeated, shrunk to 4 (antialiased).
    row = np.zeros((1, 16, 3), np.uint8)
    row[0, ::4] = 255
    assert resize_bilinear(row, 4, 1)[0, :, 0].tolist() == [73, 64, 64, 46]
