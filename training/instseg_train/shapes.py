"""Procedural shape scenes and clips for training and testing instance segmentation.

Four classes (1 circle, 2 square, 3 triangle, 4 star) in vivid, sometimes textured colours on
cluttered backgrounds in muted colours. Everything is drawn from the given
``numpy.random.Generator``, so the same seed gives identical arrays.

Rasterisation uses numpy coordinate grids at ``ss`` x supersampling (default 2): shapes are
painted with hard edges on the fine grid (in paint order, later shapes occlude earlier ones),
the image is block-averaged down (anti-aliased edges) and every output pixel is owned by the
instance (or background) covering most of its sub-samples, so the masks are disjoint.

On purpose, some scenes hold two touching instances with the same class and the same
appearance (colour and texture), which only an embedding can tell apart;
``touching_pairs`` finds them and ``render_scene(..., return_info=True)`` reports them.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np

CLASS_NAMES = ("circle", "square", "triangle", "star")
CIRCLE, SQUARE, TRIANGLE, STAR = 1, 2, 3, 4
# radius of the inscribed circle as a fraction of the circumradius (stars use inner=0.45)
_INRADIUS = {CIRCLE: 1.0, SQUARE: math.sqrt(0.5), TRIANGLE: 0.5, STAR: 0.45 * math.cos(math.pi / 5)}


# ----------------------------------------------------------------------------- colours


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v)) * 255.0


def _vivid(rng) -> np.ndarray:
    return _hsv(rng.random(), rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))


def _muted(rng) -> np.ndarray:
    return _hsv(rng.random(), rng.uniform(0.0, 0.35), rng.uniform(0.25, 0.75))


def random_appearance(rng) -> dict:
    """Fill of an object: flat colour, or stripes / checks / noise around a vivid colour."""
    kind = rng.choice(["flat", "stripes", "checks", "noise"], p=[0.55, 0.15, 0.15, 0.15])
    return {
        "kind": str(kind),
        "color": _vivid(rng),
        "color2": _vivid(rng),
        "period": rng.uniform(3.0, 10.0),  # output pixels
        "angle": rng.uniform(0, math.pi),
        "noise": rng.uniform(15.0, 40.0),
    }


def _fill(app: dict, ys: np.ndarray, xs: np.ndarray, rng) -> np.ndarray:
    """Colour [h, w, 3] of an appearance on the grid ys [h,1], xs [1,w] (global coordinates,
    so two instances sharing an appearance have a seamless texture)."""
    shape = (ys.shape[0], xs.shape[1])
    kind, c1 = app["kind"], app["color"]
    if kind == "flat":
        return np.broadcast_to(c1, shape + (3,))
    if kind == "noise":
        return np.clip(c1 + rng.normal(0.0, app["noise"], shape + (1,)), 0, 255)
    p, a = app["period"], app["angle"]
    u = xs * math.cos(a) + ys * math.sin(a)
    if kind == "stripes":
        sel = (np.floor(u / p) % 2).astype(bool)
    else:  # checks
        v = -xs * math.sin(a) + ys * math.cos(a)
        sel = ((np.floor(u / p) + np.floor(v / p)) % 2).astype(bool)
    return np.where(sel[..., None], app["color2"], c1)


# ----------------------------------------------------------------------------- geometry


def _in_polygon(ys: np.ndarray, xs: np.ndarray, vy: np.ndarray, vx: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over the grid, looping over the edges."""
    inside = np.zeros((ys.shape[0], xs.shape[1]), bool)
    for i in range(len(vy)):
        y0, x0, y1, x1 = vy[i - 1], vx[i - 1], vy[i], vx[i]
        if y0 == y1:
            continue
        crosses = (y0 > ys) != (y1 > ys)
        x_cut = x0 + (ys - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (xs < x_cut)
    return inside


def _shape_mask(obj: dict, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    cls, (cy, cx), r, a = obj["cls"], obj["center"], obj["radius"], obj["angle"]
    if cls == CIRCLE:
        return (ys - cy) ** 2 + (xs - cx) ** 2 <= r * r
    if cls == SQUARE:
        t = a + math.pi / 4 + np.arange(4) * math.pi / 2
        rad = np.full(4, r)
    elif cls == TRIANGLE:
        t = a + np.arange(3) * 2 * math.pi / 3
        rad = np.full(3, r)
    else:  # star
        t = a + np.arange(10) * math.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
    return _in_polygon(ys, xs, cy + rad * np.sin(t), cx + rad * np.cos(t))


def _grid(y0: int, y1: int, x0: int, x1: int, ss: int) -> tuple[np.ndarray, np.ndarray]:
    """Sub-sample centres of fine rows y0:y1 and columns x0:x1, in output-pixel units."""
    ys = (np.arange(y0, y1, dtype=np.float64)[:, None] + 0.5) / ss
    xs = (np.arange(x0, x1, dtype=np.float64)[None, :] + 0.5) / ss
    return ys, xs


def _box(cy: float, cx: float, r: float, fine_h: int, fine_w: int, ss: int):
    y0, y1 = max(int((cy - r) * ss) - 1, 0), min(int((cy + r) * ss) + 2, fine_h)
    x0, x1 = max(int((cx - r) * ss) - 1, 0), min(int((cx + r) * ss) + 2, fine_w)
    return y0, y1, x0, x1


# ----------------------------------------------------------------------------- composition


def render_background(rng, size: tuple[int, int], ss: int = 2) -> np.ndarray:
    """Cluttered muted background on the fine grid, float [H*ss, W*ss, 3]."""
    h, w = size[0] * ss, size[1] * ss
    ys, xs = _grid(0, h, 0, w, ss)
    a = rng.uniform(0, 2 * math.pi)
    t = (ys * math.sin(a) + xs * math.cos(a)) / math.hypot(*size)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
    img = _muted(rng) * (1 - t[..., None]) + _muted(rng) * t[..., None]
    # low-frequency blotches: coarse noise upsampled by repetition
    cell = int(rng.integers(4, 17)) * ss
    coarse = rng.normal(0, rng.uniform(3, 15), (h // cell + 1, w // cell + 1, 3))
    img += np.repeat(np.repeat(coarse, cell, 0), cell, 1)[:h, :w]
    for _ in range(rng.integers(2, 9)):  # blobs (ellipses), translucent
        cy, cx = rng.uniform(0, size[0]), rng.uniform(0, size[1])
        ry, rx = rng.uniform(0.03, 0.25, 2) * min(size)
        y0, y1, x0, x1 = _box(cy, cx, max(ry, rx), h, w, ss)
        gy, gx = _grid(y0, y1, x0, x1, ss)
        m = ((gy - cy) / ry) ** 2 + ((gx - cx) / rx) ** 2 <= 1
        alpha = rng.uniform(0.3, 0.8)
        sub = img[y0:y1, x0:x1]
        sub[m] = (1 - alpha) * sub[m] + alpha * _muted(rng)
    for _ in range(rng.integers(2, 12)):  # line segments, evaluated in their bounding box
        p, q = rng.uniform(0, 1, 2) * size, rng.uniform(0, 1, 2) * size
        d, half = q - p, rng.uniform(0.4, 2.0)
        lo, hi = np.minimum(p, q) - half, np.maximum(p, q) + half
        y0, x0 = max(int(lo[0] * ss), 0), max(int(lo[1] * ss), 0)
        y1, x1 = min(int(hi[0] * ss) + 2, h), min(int(hi[1] * ss) + 2, w)
        gy, gx = _grid(y0, y1, x0, x1, ss)
        s = np.clip(((gy - p[0]) * d[0] + (gx - p[1]) * d[1]) / max(d @ d, 1e-9), 0, 1)
        dist2 = (gy - p[0] - s * d[0]) ** 2 + (gx - p[1] - s * d[1]) ** 2
        img[y0:y1, x0:x1][dist2 <= half ** 2] = _muted(rng)
    return img


def compose(objects: list[dict], background: np.ndarray, rng, ss: int = 2,
            noise: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Paints objects in order over a fine background. Returns (image uint8 [H,W,3],
    owner [H,W] int with 0 = background and k+1 = objects[k])."""
    fh, fw = background.shape[:2]
    h, w = fh // ss, fw // ss
    img = background.copy()
    owner = np.zeros((fh, fw), np.int32)
    for k, obj in enumerate(objects):
        y0, y1, x0, x1 = _box(*obj["center"], obj["radius"], fh, fw, ss)
        if y0 >= y1 or x0 >= x1:
            continue
        ys, xs = _grid(y0, y1, x0, x1, ss)
        m = _shape_mask(obj, ys, xs)
        img[y0:y1, x0:x1][m] = _fill(obj["app"], ys, xs, rng)[m]
        owner[y0:y1, x0:x1][m] = k + 1
    img = img.reshape(h, ss, w, ss, 3).mean(axis=(1, 3))
    img = np.clip(img + rng.normal(0, noise, img.shape), 0, 255).round().astype(np.uint8)
    # majority vote over the ss x ss sub-samples (ties go to the first sub-sample in raster order)
    sub = owner.reshape(h, ss, w, ss).transpose(0, 2, 1, 3).reshape(h, w, ss * ss)
    votes = (sub[..., :, None] == sub[..., None, :]).sum(-1)
    return img, np.take_along_axis(sub, votes.argmax(-1)[..., None], -1)[..., 0]


def grow(mask: np.ndarray, steps: int = 1) -> np.ndarray:
    """Boolean masks [..., H, W] dilated by ``steps`` 4-neighbour steps."""
    for _ in range(steps):
        grown = mask.copy()
        grown[..., 1:, :] |= mask[..., :-1, :]
        grown[..., :-1, :] |= mask[..., 1:, :]
        grown[..., :, 1:] |= mask[..., :, :-1]
        grown[..., :, :-1] |= mask[..., :, 1:]
        mask = grown
    return mask


def touching_pairs(masks: np.ndarray, classes: np.ndarray, appearance: np.ndarray) -> list:
    """Pairs (i, j), i < j, of 4-adjacent instances with equal class and appearance id."""
    grown = grow(masks)
    return [(i, j) for i in range(len(masks)) for j in range(i + 1, len(masks))
            if classes[i] == classes[j] and appearance[i] == appearance[j]
            and (grown[i] & masks[j]).any()]


def _random_object(rng, size, app_id: int, apps: list) -> dict:
    side = min(size)
    apps.append(random_appearance(rng))
    return {
        "cls": int(rng.integers(1, 5)),
        "radius": 0.5 * side * math.exp(rng.uniform(math.log(0.05), math.log(0.5))),
        "center": (rng.uniform(0, size[0]), rng.uniform(0, size[1])),
        "angle": rng.uniform(0, 2 * math.pi),
        "app": apps[-1],
        "app_id": app_id,
    }


def _twin(rng, obj: dict) -> dict:
    """Same class and appearance, similar size, placed so that it overlaps (hence touches)."""
    r = obj["radius"] * rng.uniform(0.8, 1.2)
    d = (_INRADIUS[obj["cls"]] * (obj["radius"] + r)) * rng.uniform(0.85, 1.0)
    a = rng.uniform(0, 2 * math.pi)
    cy, cx = obj["center"]
    return dict(obj, radius=r, center=(cy + d * math.sin(a), cx + d * math.cos(a)),
                angle=rng.uniform(0, 2 * math.pi))


def render_scene(rng, size: tuple[int, int] = (256, 256), n_instances: tuple[int, int] = (1, 15),
                 touch_prob: float = 0.5, ss: int = 2, return_info: bool = False):
    """One scene: (image uint8 [H,W,3], masks bool [N,H,W] (visible parts, disjoint, non-empty,
    in paint order), classes int64 [N] in 1..4). With ``return_info`` a 4th element, a dict
    with ``appearance`` (int [N], equal = same colour and texture) and ``touching_pairs``."""
    n = int(rng.integers(n_instances[0], n_instances[1] + 1))
    apps: list = []
    objects = [_random_object(rng, size, k, apps) for k in range(n)]
    if n >= 2 and rng.random() < touch_prob:  # replace the next object by a twin of k
        k = int(rng.integers(0, n - 1))
        objects[k + 1] = _twin(rng, objects[k])
    background = render_background(rng, size, ss)
    image, owner = compose(objects, background, rng, ss)
    ids = np.arange(1, n + 1)
    present = ids[np.isin(ids, owner)]
    masks = owner[None] == present[:, None, None]
    classes = np.array([objects[k - 1]["cls"] for k in present], np.int64)
    if not return_info:
        return image, masks, classes
    appearance = np.array([objects[k - 1]["app_id"] for k in present], np.int64)
    return image, masks, classes, {
        "appearance": appearance,
        "touching_pairs": touching_pairs(masks, classes, appearance),
    }


# ----------------------------------------------------------------------------- clips


def _border_point(rng, size):
    """A point on the image border and the inward unit normal there."""
    h, w = size
    side = int(rng.integers(0, 4))
    t = rng.uniform(0.15, 0.85)
    return [((0.0, t * w), (1.0, 0.0)), ((h, t * w), (-1.0, 0.0)),
            ((t * h, 0.0), (0.0, 1.0)), ((t * h, w), (0.0, -1.0))][side]


def render_clip(rng, frames: int = 16, size: tuple[int, int] = (256, 256),
                n_instances: tuple[int, int] = (4, 8), jitter: float = 0.4, ss: int = 2,
                return_info: bool = False):
    """A clip of moving objects: list over frames of (image, masks, classes, track_ids).

    Roles: at least one object enters through a border, one leaves through a border, two
    cross each other (meeting mid-clip), the others drift inside; with probability 1/2 two
    touching twins (same class and appearance) travel together. Motion is linear plus a small
    random walk; paint order (depth) is fixed per object. Track ids are 1..M, consistent across
    frames; an object hidden or outside the frame is absent from that frame."""
    h, w = size
    side = min(size)
    m = max(int(rng.integers(n_instances[0], n_instances[1] + 1)), 4)
    apps: list = []
    objs = [_random_object(rng, size, k, apps) for k in range(m)]
    for o in objs:
        o["radius"] = min(o["radius"], 0.18 * side)
    t_all = np.arange(frames, dtype=np.float64)[:, None]
    paths = []  # per object: positions [frames, 2]
    roles = ["enter", "leave", "cross", "cross"] + ["drift"] * (m - 4)
    meet = np.array([rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w])
    t_meet = rng.uniform(0.35, 0.65) * (frames - 1)
    cross_dir = rng.uniform(0, 2 * math.pi)
    for k, (o, role) in enumerate(zip(objs, roles)):
        speed = rng.uniform(0.6, 1.2) * side / max(frames, 1)
        if role in ("enter", "leave"):
            p, n = _border_point(rng, size)
            n = np.array(n)
            if role == "enter":  # fully outside until t_in, then moves inward
                t_in = rng.uniform(min(1, frames / 2), frames / 2)
                p0 = np.array(p) - n * (o["radius"] + speed * t_in)
                v = n * speed
            else:  # fully outside from t_out on
                t_out = rng.uniform(frames / 2, max(frames - 2, frames / 2))
                p0 = np.array(p) + n * (speed * t_out - o["radius"])
                v = -n * speed
            path = p0 + v * t_all
        elif role == "cross":
            a = cross_dir + (0 if k == 2 else rng.uniform(0.6, 1.4) * math.pi)
            v = speed * np.array([math.sin(a), math.cos(a)])
            path = meet + v * (t_all - t_meet)
        else:
            p0 = np.array(o["center"])
            a = rng.uniform(0, 2 * math.pi)
            path = p0 + 0.3 * speed * np.array([math.sin(a), math.cos(a)]) * t_all
        path = path + np.cumsum(rng.normal(0, jitter, (frames, 2)), axis=0)
        paths.append(path)
    spin = rng.normal(0, 0.05, m)
    if rng.random() < 0.5:  # a drifting or crossing object gets a touching twin
        k = int(rng.integers(2, m))
        twin = _twin(rng, objs[k])
        objs.append(twin)
        paths.append(paths[k] + (np.array(twin["center"]) - np.array(objs[k]["center"])))
        spin = np.append(spin, spin[k])
    order = rng.permutation(len(objs))  # depth: paint order
    background = render_background(rng, size, ss)
    clip, info = [], {"roles": roles + ["twin"] * (len(objs) - m),
                      "appearance": np.array([o["app_id"] for o in objs])}
    for f in range(frames):
        objects = [dict(objs[k], center=tuple(paths[k][f]), angle=objs[k]["angle"] + spin[k] * f)
                   for k in order]
        image, owner = compose(objects, background, rng, ss)
        ids = np.arange(1, len(objects) + 1)
        present = ids[np.isin(ids, owner)]
        masks = owner[None] == present[:, None, None]
        track_ids = order[present - 1] + 1
        classes = np.array([objs[t - 1]["cls"] for t in track_ids], np.int64)
        clip.append((image, masks, classes, track_ids.astype(np.int64)))
    return (clip, info) if return_info else clip
