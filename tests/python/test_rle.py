"""The COCO RLE masks of the results file against pycocotools.

Random label maps and geometries (identity, upscale, downscale, letterbox offsets, odd sizes)
are written to a temporary directory and encoded by `examples/encode_rle.rs`; every string is
decoded with pycocotools and compared pixel for pixel with the label map upsampled in NumPy by
the mapping of `src/results.rs`, and must equal pycocotools' own encoding of that mask.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from core_cases import example_binary

mask_api = pytest.importorskip("pycocotools.mask")

# pycocotools 2.0 predates NumPy 2's `copy` keyword of `__array__`.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

RANDOM_CASES = 120
OUTSIDE = 255  # upsampled value of the pixels outside the rectangle: no test region has it


def upsample(labels, geometry):
    """Frame-resolution label map: nearest neighbour with the edges aligned, offset o in the
    rectangle sampling grid index o * grid // rect on each axis; OUTSIDE elsewhere."""
    grid_width, grid_height, x, y, width, height, frame_width, frame_height = geometry
    columns = np.arange(width) * grid_width // width
    rows = np.arange(height) * grid_height // height
    frame = np.full((frame_height, frame_width), OUTSIDE, np.uint8)
    frame[y:y + height, x:x + width] = labels[np.ix_(rows, columns)]
    return frame


def random_labels(rng, grid_height, grid_width):
    kind = rng.integers(4)
    if kind == 0:  # noise: runs break at almost every cell
        return rng.integers(0, 4, (grid_height, grid_width), dtype=np.uint8)
    if kind == 1:  # one region everywhere: runs cross every column boundary
        return np.ones((grid_height, grid_width), np.uint8)
    labels = np.zeros((grid_height, grid_width), np.uint8)
    for region in range(1, int(rng.integers(1, 6)) + 1):  # overlapping boxes, some at edges
        x0, x1 = np.sort(rng.integers(0, grid_width + 1, 2))
        y0, y1 = np.sort(rng.integers(0, grid_height + 1, 2))
        labels[y0:y1 + 1, x0:x1 + 1] = region
    return labels


def random_geometry(rng):
    """Frame, rectangle inside it (letterbox-like centred padding or any offset) and a grid
    coarser, finer or equal to the rectangle, with odd sizes."""
    frame_width, frame_height = (int(v) for v in rng.integers(1, 160, 2))
    kind = rng.integers(3)
    if kind == 0:  # the whole frame
        x, y, width, height = 0, 0, frame_width, frame_height
    else:
        width, height = (int(rng.integers(1, size + 1)) for size in (frame_width, frame_height))
        if kind == 1:  # centred, as letterbox padding leaves it
            x, y = (frame_width - width) // 2, (frame_height - height) // 2
        else:
            x = int(rng.integers(0, frame_width - width + 1))
            y = int(rng.integers(0, frame_height - height + 1))
    scale = rng.choice([0.1, 0.25, 0.5, 1.0, 1.5, 3.0])
    grid_width, grid_height = (max(1, int(round(size * scale)) + int(rng.integers(-1, 2)))
                               for size in (width, height))
    return grid_width, grid_height, x, y, width, height, frame_width, frame_height


def fixed_cases():
    """Real frame sizes: a 1280 x 720 frame letterboxed into a square input (the padding rows
    cropped from the 64 x 64 grid), and a 64 x 64 grid on an offset rectangle of 1080p."""
    rng = np.random.default_rng(1000)
    return [(random_labels(rng, 36, 64), (64, 36, 0, 0, 1280, 720, 1280, 720)),
            (random_labels(rng, 64, 64), (64, 64, 320, 180, 1280, 720, 1920, 1080)),
            (random_labels(rng, 64, 64), (64, 64, 0, 0, 1280, 720, 1280, 720))]


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """(labels, geometry, regions, counts) for every case, encoded once by the Rust example."""
    root = tmp_path_factory.mktemp("rle")
    cases = fixed_cases()
    for number in range(RANDOM_CASES):
        rng = np.random.default_rng([7, number])
        geometry = random_geometry(rng)
        cases.append((random_labels(rng, geometry[1], geometry[0]), geometry))
    jobs = []
    for number, (labels, geometry) in enumerate(cases):
        path = root / f"labels-{number}.u8"
        labels.tofile(path)
        # Background, every region, and one that is absent.
        regions = list(range(int(labels.max()) + 2))
        jobs.append({"labels": str(path), "geometry": list(geometry), "regions": regions})
    (root / "jobs.json").write_text(json.dumps(jobs))
    done = subprocess.run([str(example_binary("encode_rle")), str(root / "jobs.json")],
                          check=True, capture_output=True, text=True)
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(lines) == len(cases)
    return [(labels, geometry, job["regions"], line["counts"])
            for (labels, geometry), job, line in zip(cases, jobs, lines)]


def test_cases_cover_the_geometries(encoded):
    assert len(encoded) >= 50
    geometries = [geometry for _, geometry, _, _ in encoded]
    assert any(g[0] < g[4] and g[1] < g[5] for g in geometries)  # upscale
    assert any(g[0] > g[4] and g[1] > g[5] for g in geometries)  # downscale
    assert any(g[2] > 0 and g[3] > 0 for g in geometries)  # offsets on both axes
    assert any(g[4] % 2 and g[5] % 2 and g[6] % 2 for g in geometries)  # odd sizes


def test_rle_decodes_to_the_upsampled_label_map(encoded):
    for labels, geometry, regions, counts in encoded:
        frame = upsample(labels, geometry)
        size = [geometry[7], geometry[6]]
        for region, text in zip(regions, counts):
            expected = (frame == region).astype(np.uint8)
            decoded = mask_api.decode({"size": size, "counts": text.encode()})
            np.testing.assert_array_equal(decoded, expected, err_msg=f"{geometry} {region}")
            reference = mask_api.encode(np.asfortranarray(expected))["counts"].decode()
            assert text == reference, f"{geometry} region {region}"
