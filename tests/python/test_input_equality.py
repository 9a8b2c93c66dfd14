"""The element's model input against the training loader's, for the same frames.

`examples/dump_input.rs` renders `videotestsrc` frames in each of the element's twelve formats
through real GStreamer pipelines, preprocesses them as the element does (`Preprocessor::run`)
and writes the tensors, the raw frames and the frames `videoconvert` made of them. Here the
training loader (`CocoInstances`, reading the frame as a PNG, resizing it with
`resize_bilinear` onto `_letterbox_geometry` or the whole input, then `InstSegNet.normalize`
as `train.py` applies it) computes its tensor from the RGB picture of the same frame, at frame
sizes under and over the input, odd, portrait and HD, letterboxed and stretched.

- The ten RGB formats: the RGB picture is the RGB frame after `videoconvert` (which leaves
  it as it is), the same picture `videotestsrc` draws in every byte order. The tensors are
  equal, bit for bit.
- I420 and NV12: the element converts each row to 8-bit RGB (chroma interpolated at MPEG-2
  sites, the caps' matrix and range, rounded to nearest) and resizes that. Against the loader
  fed the same decoding written out in NumPy (float64), the tensors are equal too (measured:
  0 levels; allowed: 1, for a value within float rounding of a half level). Against the
  loader fed `videoconvert`'s RGB (16-bit output, rounded to 8 bits) they differ by GStreamer's
  own fixed-point decoding: measured at most 4 levels, 99th percentile 3, mean 1.0 (over all
  cases, each statistic per tensor); the bounds below are 5, 3.5 and 1.5 levels.

A level is 1/255 of the value range of a channel (the normalisation undone).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from core_cases import example_binary
from instseg_train.coco import CocoInstances
from instseg_train.model import IMAGENET_MEAN, IMAGENET_STD, InstSegNet

RGB_FORMATS = ["RGB", "BGR", "RGBA", "BGRA", "RGBx", "BGRx", "xRGB", "xBGR", "ARGB", "ABGR"]
# With an explicit matrix and MPEG-2 chroma siting, so that videoconvert's 16-bit path decodes
# as the element does (see tests/preprocess.rs).
YUV_FORMATS = {"I420": "colorimetry=bt601,chroma-site=mpeg2",
               "NV12": "colorimetry=bt709,chroma-site=mpeg2"}
# width x height: enlarged (odd, a sliver), shrunk (odd, SD, HD, full HD, portrait).
FRAME_SIZES = [(97, 13), (64, 48), (199, 101), (321, 241), (640, 480), (1280, 720), (720, 1280),
               (1920, 1080)]
INPUTS = [(256, 256, "letterbox"), (200, 120, "stretch"), (255, 129, "letterbox")]
PATTERNS = {
    "smpte": "pattern=smpte",
    "ball": "pattern=ball foreground-color=0xffffd000 background-color=0xff2040c0",
    # One-pixel checkers: what two-tap sampling aliases worst when shrinking.
    "checkers": "pattern=checkers-1",
}
YUV_BOUND = 1.0
VIDEOCONVERT_BOUNDS = {"max": 5.0, "p99": 3.5, "mean": 1.5}


def _cases():
    """Every format at every size; all three patterns for RGB, I420 and NV12, SMPTE bars for
    the other byte orders (their pixels go through the same resampling)."""
    cases = []
    for fmt in RGB_FORMATS + list(YUV_FORMATS):
        extra = f",{YUV_FORMATS[fmt]}" if fmt in YUV_FORMATS else ""
        patterns = PATTERNS if fmt in ("RGB", *YUV_FORMATS) else {"smpte": PATTERNS["smpte"]}
        for width, height in FRAME_SIZES:
            for pattern, source in patterns.items():
                case = {
                    "name": f"{fmt}-{width}x{height}-{pattern}",
                    "source": source,
                    "caps": f"video/x-raw,format={fmt},width={width},height={height}{extra}",
                    "inputs": [list(i) for i in INPUTS],
                }
                if fmt in YUV_FORMATS:
                    case["converted_caps"] = "video/x-raw,format=RGBA64_LE"
                elif fmt in ("RGB", "BGRx"):
                    case["converted_caps"] = "video/x-raw,format=RGB"
                cases.append(case)
    return cases


def _planes(data: bytes, entry: dict) -> list[np.ndarray]:
    planes, offset = [], 0
    for row_bytes, rows in entry["planes"]:
        planes.append(np.frombuffer(data, np.uint8, row_bytes * rows, offset).reshape(rows, row_bytes))
        offset += row_bytes * rows
    return planes


def _decode_yuv(entry: dict, planes: list[np.ndarray]) -> np.ndarray:
    """A 4:2:0 frame decoded the textbook way in float64: chroma interpolated bilinearly at
    MPEG-2 sites (co-sited with even luma columns, midway between luma rows, edges repeated),
    the Y'CbCr matrix of the caps, clamped, rounded to nearest (ties to even)."""
    w, h = entry["width"], entry["height"]
    cw, ch = (w + 1) // 2, (h + 1) // 2
    luma = planes[0][:, :w].astype(np.float64)
    if entry["format"] == "I420":
        u, v = planes[1][:, :cw], planes[2][:, :cw]
    else:
        u, v = planes[1][:, 0:2 * cw:2], planes[1][:, 1:2 * cw:2]

    def taps(positions, n):
        positions = np.clip(positions, 0, n - 1)
        first = np.floor(positions).astype(np.int64)
        return first, np.minimum(first + 1, n - 1), positions - first

    x0, x1, wx = taps(np.arange(w) / 2.0, cw)
    y0, y1, wy = taps((np.arange(h) + 0.5) / 2.0 - 0.5, ch)

    def upsample(c):
        c = c.astype(np.float64)
        rows = c[y0] * (1 - wy)[:, None] + c[y1] * wy[:, None]
        return rows[:, x0] * (1 - wx) + rows[:, x1] * wx

    kr, kb = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722), "bt2020": (0.2627, 0.0593)}[entry["matrix"]]
    kg = 1 - kr - kb
    black, luma_range, chroma_range = (0.0, 255.0, 255.0) if entry["full_range"] else (16.0, 219.0, 224.0)
    y = (luma - black) * 255.0 / luma_range
    cb = (upsample(u) - 128.0) * 255.0 / chroma_range
    cr = (upsample(v) - 128.0) * 255.0 / chroma_range
    rgb = np.stack([y + 2 * (1 - kr) * cr,
                    y - 2 * kb * (1 - kb) / kg * cb - 2 * kr * (1 - kr) / kg * cr,
                    y + 2 * (1 - kb) * cb], axis=-1)
    return np.rint(np.clip(rgb, 0, 255)).astype(np.uint8)


def _loader_tensors(root, pictures: dict[str, np.ndarray]) -> dict[tuple, np.ndarray]:
    """{(picture key, input index): the loader's normalised tensor [3, H, W]} for pictures
    written as PNGs into one COCO file and read back by `CocoInstances`."""
    images_dir = root / "images"
    images_dir.mkdir()
    keys = sorted(pictures)
    images = []
    for image_id, key in enumerate(keys, 1):
        picture = pictures[key]
        Image.fromarray(picture).save(images_dir / f"{key}.png", compress_level=1)
        images.append({"id": image_id, "file_name": f"{key}.png", "height": picture.shape[0],
                       "width": picture.shape[1]})
    annotations = root / "instances.json"
    annotations.write_text(json.dumps({"images": images, "annotations": [],
                                       "categories": [{"id": 1, "name": "thing"}]}))
    model = InstSegNet()
    tensors = {}
    for k, (width, height, mode) in enumerate(INPUTS):
        dataset = CocoInstances(str(images_dir), str(annotations), size=(height, width), resize=mode)
        for index, key in enumerate(keys):
            image, _, _ = dataset[index]
            # As train.py feeds the network: the loader's 0..1 image, times 255, normalised.
            tensors[(key, k)] = model.normalize(image[None] * 255.0)[0].numpy()
    return tensors


def _levels(difference: np.ndarray) -> np.ndarray:
    """Tensor differences in 8-bit levels: the normalisation undone."""
    return np.abs(difference) * np.array(IMAGENET_STD, np.float64)[:, None, None] * 255.0


@pytest.fixture(scope="module")
def dumped(tmp_path_factory):
    root = tmp_path_factory.mktemp("input_equality")
    cases_file = root / "cases.json"
    cases_file.write_text(json.dumps({"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "cases": _cases()}))
    out = root / "out"
    subprocess.run([str(example_binary("dump_input")), str(cases_file), str(out)], check=True)
    manifest = json.loads((out / "manifest.json").read_text())
    pictures, keys = {}, {}
    for entry in manifest:
        name = entry["name"]
        candidates = {}
        if (out / f"{name}.rgb").exists():
            rgb = np.fromfile(out / f"{name}.rgb", np.uint8)
            candidates["converted"] = rgb.reshape(entry["height"], entry["width"], 3)
        if entry["format"] in YUV_FORMATS:
            planes = _planes((out / f"{name}.planes").read_bytes(), entry)
            candidates["decoded"] = _decode_yuv(entry, planes)
        for kind, picture in candidates.items():
            key = hashlib.sha1(picture.tobytes() + str(picture.shape).encode()).hexdigest()[:16]
            pictures[key] = picture
            keys[(name, kind)] = key
    tensors = _loader_tensors(root, pictures)
    return out, manifest, keys, tensors


def _element(out, entry, k):
    width, height = entry["inputs"][k]["size"]
    return np.fromfile(out / f"{entry['name']}.{k}.f32", "<f4").reshape(3, height, width)


def _rgb_picture(keys, entry):
    """The key of the RGB picture of an RGB-format case: the one `videoconvert` made of the RGB
    frame of that size and pattern."""
    return keys[(entry["name"].replace(entry["format"], "RGB", 1), "converted")]


def test_every_case_was_dumped(dumped):
    _, manifest, keys, _ = dumped
    assert [entry["name"] for entry in manifest] == [case["name"] for case in _cases()]
    assert {entry["format"] for entry in manifest} == set(RGB_FORMATS) | set(YUV_FORMATS)
    # videotestsrc draws the same picture in RGB and BGRx.
    for width, height in FRAME_SIZES:
        assert keys[(f"RGB-{width}x{height}-smpte", "converted")] == \
            keys[(f"BGRx-{width}x{height}-smpte", "converted")]


def test_rgb_formats_give_the_loaders_tensor_exactly(dumped):
    out, manifest, keys, tensors = dumped
    failures = []
    for entry in manifest:
        if entry["format"] not in RGB_FORMATS:
            continue
        for k in range(len(INPUTS)):
            element = _element(out, entry, k)
            loader = tensors[(_rgb_picture(keys, entry), k)]
            if not np.array_equal(element, loader):
                levels = _levels(element.astype(np.float64) - loader)
                failures.append(f"{entry['name']} to {INPUTS[k]}: max {levels.max():.3f} levels, "
                                f"{(levels > 0.5).mean():.2%} of the values")
    assert not failures, "\n".join(failures)


def test_yuv_formats_give_the_loaders_tensor_of_the_same_decoding(dumped):
    out, manifest, keys, tensors = dumped
    worst = 0.0
    for entry in manifest:
        if entry["format"] not in YUV_FORMATS:
            continue
        for k in range(len(INPUTS)):
            levels = _levels(_element(out, entry, k).astype(np.float64)
                             - tensors[(keys[(entry["name"], "decoded")], k)])
            worst = max(worst, float(levels.max()))
            assert levels.max() <= YUV_BOUND + 1e-3, (entry["name"], INPUTS[k], float(levels.max()))
    print(f"I420/NV12 against the loader on the NumPy decoding: max {worst:.3f} levels")


def test_yuv_formats_against_the_loader_on_videoconverts_rgb(dumped):
    out, manifest, keys, tensors = dumped
    measured = SimpleNamespace(max=0.0, p99=0.0, mean=0.0)
    for entry in manifest:
        if entry["format"] not in YUV_FORMATS:
            continue
        for k in range(len(INPUTS)):
            levels = _levels(_element(out, entry, k).astype(np.float64)
                             - tensors[(keys[(entry["name"], "converted")], k)])
            stats = {"max": float(levels.max()), "p99": float(np.percentile(levels, 99)),
                     "mean": float(levels.mean())}
            for key, value in stats.items():
                setattr(measured, key, max(getattr(measured, key), value))
                assert value <= VIDEOCONVERT_BOUNDS[key] + 1e-3, (entry["name"], INPUTS[k], stats)
    print(f"I420/NV12 against the loader on videoconvert's RGB: {measured}")
