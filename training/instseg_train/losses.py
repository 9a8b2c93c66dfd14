"""The losses of Fathi et al. 2017 ("Semantic Instance Segmentation via Deep Metric Learning").

All functions work on the output grid: `instance_ids` [h, w] (or [N, h, w]) holds integer
instance ids at the resolution of the network outputs (see `downsample_ids`), 0 being the
background, which counts as one more segment. `instance_classes` maps an instance id to its
class in 1..C: a 1-D integer tensor/sequence indexed by id, or a dict {id: class}; for a batch,
a list of those, one per image.

Notation: sigma(p, q) = 2 / (1 + exp(d)), d = ||e_p - e_q||^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from .postprocess import distance_limit

LOG2 = math.log(2.0)
MIN_DISTANCE = 1e-6  # d is clamped to this in the different-segment term (see pair_losses)
MIN_PROBABILITY = 1e-8  # probabilities are clamped to this before the log


@dataclass
class PixelSample:
    """K sampled pixels per segment of one image."""

    index: torch.Tensor  # [M] flat (row-major) pixel indices, M = K * S
    segment: torch.Tensor  # [M] index into `ids` of each sampled pixel's segment
    ids: torch.Tensor  # [S] the segment (instance) ids present, ascending (0 = background)
    sizes: torch.Tensor  # [S] pixel count of each segment


def downsample_ids(instance_ids: torch.Tensor, stride: int) -> torch.Tensor:
    """Nearest-neighbour [.., H, W] -> [.., H/stride, W/stride] (centre pixel of each cell), on a
    tensor or a NumPy array."""
    return instance_ids[..., stride // 2 :: stride, stride // 2 :: stride]


def sample_pixels(instance_ids: torch.Tensor, k: int = 10, generator=None) -> PixelSample:
    """Samples K pixels per segment: without replacement, or with replacement when the segment
    has fewer than K pixels. Uses `generator` (a CPU torch.Generator) for reproducibility.
    Instance ids are small non-negative integers, so counting them is cheaper than sorting."""
    flat = instance_ids.reshape(-1)
    counts = torch.bincount(flat)
    ids = torch.nonzero(counts).squeeze(1)
    sizes = counts[ids]
    # Each segment's pixels in ascending order, one segment after another.
    members = torch.nonzero(flat[None, :] == ids[:, None])[:, 1]
    starts = (torch.cumsum(sizes, 0) - sizes).tolist()
    picks = []
    for start, n in zip(starts, sizes.tolist()):
        pick = torch.randperm(n, generator=generator)[:k] if n >= k else torch.randint(n, (k,), generator=generator)
        picks.append(pick.to(flat.device) + start)
    segment = torch.arange(len(starts), device=flat.device).repeat_interleave(k)
    return PixelSample(members[torch.cat(picks)], segment, ids, sizes)


def with_hard_background(sample: PixelSample, classes: torch.Tensor, instance_ids: torch.Tensor,
                         count: int) -> PixelSample:
    """`sample` plus the `count` background pixels of highest seediness (max over t and over
    c in 1..C of `classes` [T, C+1, h, w]), for the classification loss only. The element
    seeds on any pixel whose seediness reaches the threshold, so one confident background
    pixel among thousands makes a false instance; K random background samples rarely meet it."""
    background = instance_ids.reshape(-1) == 0
    if count <= 0 or not bool(background.any()):
        return sample
    seediness = classes[:, 1:].detach().flatten(0, 1).amax(0).reshape(-1)  # amax over (0, 1) is 10x slower
    hardest = torch.where(background, seediness, torch.full_like(seediness, -1.0))
    index = hardest.topk(min(count, int(background.sum()))).indices
    segment = torch.zeros_like(index)  # ids are ascending, so the background is segment 0
    return PixelSample(torch.cat([sample.index, index]), torch.cat([sample.segment, segment]),
                       sample.ids, sample.sizes)


def pair_weights(sample: PixelSample) -> torch.Tensor:
    """[M, M] weights of the sampled pairs; zero on the diagonal (no self-pairs); sum 1.

    The paper weights the pair (p, q) of *all* pixels by 1 / (|S(p)| * |S(q)|), the sizes of
    their instances, so that every pair of segments counts the same whatever their sizes. With
    K pixels sampled per segment, each sample stands for |S| / K pixels of its segment, so the
    sampled estimate of that sum gives every sampled pair the same weight
    1 / (|S(p)| |S(q)|) * (|S(p)| / K) * (|S(q)| / K) = 1 / K^2. (Weighting the samples by
    1 / (|S(p)| |S(q)|) again would count the sizes twice: large segments, the background
    first, would then get almost no weight and their embeddings would spread.)"""
    m = sample.segment.shape[0]
    w = torch.ones(m, m, dtype=torch.float64, device=sample.segment.device)
    w.fill_diagonal_(0.0)
    return w / w.sum()


def pair_losses(d: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """Logistic loss -[y log sigma + (1 - y) log(1 - sigma)] with sigma = 2 / (1 + e^d), stably:
    y = 1: -log sigma       = softplus(d) - log 2
    y = 0: -log(1 - sigma)  = softplus(-d) - log(-expm1(-d))   (1 - sigma = tanh(d / 2))
    The y = 0 term is +inf at d = 0, so d is clamped to >= MIN_DISTANCE there (loss ~14.5,
    gradient 0 below the clamp)."""
    positive = F.softplus(d) - LOG2
    dc = d.clamp_min(MIN_DISTANCE)
    negative = F.softplus(-dc) - torch.log(-torch.expm1(-dc))
    return torch.where(same, positive, negative)


def _embedding_loss_one(embedding: torch.Tensor, sample: PixelSample) -> torch.Tensor:
    e = embedding.reshape(embedding.shape[0], -1)[:, sample.index].t()  # [M, D]
    d = ((e[:, None, :] - e[None, :, :]) ** 2).sum(-1)  # [M, M]
    same = sample.segment[:, None] == sample.segment[None, :]
    weights = pair_weights(sample).to(d.dtype)
    return (weights * pair_losses(d, same)).sum()


def _class_table(instance_classes, device) -> torch.Tensor:
    if isinstance(instance_classes, dict):
        table = torch.zeros(max(instance_classes, default=0) + 1, dtype=torch.long)
        for key, value in instance_classes.items():
            table[key] = value
        instance_classes = table
    return torch.as_tensor(instance_classes, dtype=torch.long).to(device)


@torch.no_grad()
def classification_targets(
    embedding: torch.Tensor, instance_ids: torch.Tensor, instance_classes, thresholds, sample: PixelSample
) -> torch.Tensor:
    """[T, M] target class of each sampled pixel p at each threshold tau_t: the class of p's
    instance if IoU(m(p, tau_t), ground-truth mask of p's instance) >= 0.5, else 0, with
    m(p, tau) = {q : d(p, q) <= ln(2 / tau - 1)}. Background pixels always get 0, so only the
    instances' sampled pixels grow masks.

    This runs on every sampled pixel against every output pixel, so d is dense float
    arithmetic: d = |e_q|^2 + |e_p|^2 - 2 e_p.e_q (float32: it can differ from postprocess.py's
    channel-by-channel sum by ~1e-6 relative, which moves only pixels at the mask's edge within
    rounding). Once the embedding has spread, a mask holds a few hundred of the grid's pixels,
    so the pairs inside the widest mask are listed once and counted per threshold: about 0.6x
    the time of counting each threshold over the whole grid (more while the embedding is still
    collapsed, in the first steps of a training run)."""
    seed_ids = sample.ids[sample.segment]  # [M]
    target = torch.zeros(len(thresholds), seed_ids.shape[0], dtype=torch.long, device=seed_ids.device)
    rows = torch.nonzero(seed_ids != 0).squeeze(1)  # the instances' sampled pixels
    e = embedding.detach().reshape(embedding.shape[0], -1).float().t()  # [P, D]
    seeds = e[sample.index[rows]]  # [R, D]
    d = (e * e).sum(1)[None, :] + (seeds * seeds).sum(1)[:, None] - 2.0 * seeds @ e.t()  # [R, P]
    own_id = seed_ids[rows]  # [R]
    own_size = sample.sizes[sample.segment[rows]]  # [R]
    wanted = _class_table(instance_classes, e.device)[own_id]  # [R]
    limits = [distance_limit(t) for t in thresholds]
    row, col = torch.nonzero(d <= max(limits), as_tuple=True)  # the pairs inside the widest mask
    near = d[row, col]
    own = instance_ids.reshape(-1)[col] == own_id[row]
    for t, r in enumerate(limits):
        inside = near <= r
        size = torch.bincount(row[inside], minlength=rows.shape[0])
        inter = torch.bincount(row[inside & own], minlength=rows.shape[0])
        good = 2 * inter >= size + own_size - inter  # IoU >= 0.5, exactly
        target[t, rows] = torch.where(good, wanted, torch.zeros_like(wanted))
    return target


def _classification_loss_one(embedding, classes, instance_ids, instance_classes, thresholds, sample):
    target = classification_targets(embedding, instance_ids, instance_classes, thresholds, sample)  # [T, M]
    t, c1 = classes.shape[:2]
    probs = classes.reshape(t, c1, -1)[:, :, sample.index]  # [T, C+1, M]
    log_probs = torch.log(probs.clamp_min(MIN_PROBABILITY))
    return -log_probs.gather(1, target[:, None, :]).mean()


def _batched(fn, embedding, *per_image):
    """Applies fn per image when embedding is [N, D, h, w] and averages; else calls it once."""
    if embedding.dim() == 3:
        return fn(embedding, *per_image)
    losses = [fn(embedding[i], *(arg[i] for arg in per_image)) for i in range(embedding.shape[0])]
    return torch.stack(losses).mean()


def embedding_loss(embedding, instance_ids, k: int = 10, generator=None) -> torch.Tensor:
    """L_e: embedding [D, h, w] (or [N, D, h, w]), instance_ids [h, w] (or [N, h, w]).
    L_e = sum over sampled pairs p != q of w_pq * -[y log sigma + (1 - y) log(1 - sigma)]."""

    def one(emb, ids):
        return _embedding_loss_one(emb, sample_pixels(ids, k, generator))

    return _batched(one, embedding, instance_ids)


def classification_loss(
    embedding, classes, instance_ids, instance_classes, thresholds, k: int = 10, generator=None,
    hard_background: int = 0,
) -> torch.Tensor:
    """L_cls: mean over thresholds t and sampled pixels p of -log C^t_{p, target(t, p)};
    classes [T, C+1, h, w] (or [N, T, C+1, h, w]), already softmaxed over C+1. The sample is
    K pixels per segment plus the `hard_background` most seed-like background pixels."""

    def one(emb, cls, ids, table):
        sample = with_hard_background(sample_pixels(ids, k, generator), cls, ids, hard_background)
        return _classification_loss_one(emb, cls, ids, table, thresholds, sample)

    return _batched(one, embedding, classes, instance_ids, instance_classes)


def classification_weight(step: int, ramp_steps: int, final: float = 0.2) -> float:
    """lambda: linear ramp from 0 at step 0 to `final` at `ramp_steps`, constant after."""
    if ramp_steps <= 0:
        return final
    return final * min(max(step, 0) / ramp_steps, 1.0)


def total_loss(
    embedding, classes, instance_ids, instance_classes, thresholds, step: int, ramp_steps: int,
    k: int = 10, generator=None, final_weight: float = 0.2, hard_background: int = 0, pairs: int = 0,
):
    """L = L_e + lambda(step) * L_cls, both on the same pixel sample of each image (L_cls also on
    the `hard_background` most seed-like background pixels, see `with_hard_background`), averaged
    over the images.

    The last 2 * `pairs` images of the batch are pairs of consecutive video frames (2j, 2j + 1
    of that tail) whose ids name the same object in both. Their L_e is taken over the two frames
    as one image, so an object is one segment across the pair: its embedding must stay put from
    frame to frame, which is what the element's tracks match their stored embedding against.
    L_cls stays per frame (masks are grown within a frame).
    Returns (L, {"embedding": L_e, "classification": L_cls, "lambda": lambda}) (parts detached)."""
    if embedding.dim() == 3:
        embedding, classes, instance_ids = embedding[None], classes[None], instance_ids[None]
        instance_classes = [instance_classes]
    n = embedding.shape[0]
    if pairs < 0 or 2 * pairs > n:
        raise ValueError(f"{pairs} frame pairs do not fit in a batch of {n}")
    lam = classification_weight(step, ramp_steps, final_weight)
    losses, parts = [], []
    # One view per image: indexing a tensor that needs a gradient once per image would make
    # its backward fill and add a zero gradient of the whole batch for every image.
    embedding, classes = embedding.unbind(0), classes.unbind(0)

    def add(le, i, sample):
        hard = with_hard_background(sample, classes[i], instance_ids[i], hard_background)
        lc = _classification_loss_one(embedding[i], classes[i], instance_ids[i], instance_classes[i],
                                      thresholds, hard)
        losses.append(le + lam * lc)
        parts.append((le.detach(), lc.detach()))

    stills = n - 2 * pairs
    for i in range(stills):
        sample = sample_pixels(instance_ids[i], k, generator)
        add(_embedding_loss_one(embedding[i], sample), i, sample)
    for i in range(stills, n, 2):
        joint = sample_pixels(torch.cat([instance_ids[i], instance_ids[i + 1]], -1), k, generator)
        le = _embedding_loss_one(torch.cat([embedding[i], embedding[i + 1]], -1), joint)
        for frame in (i, i + 1):
            add(le, frame, sample_pixels(instance_ids[frame], k, generator))
    le, lc = (torch.stack(p).mean() for p in zip(*parts))
    return torch.stack(losses).mean(), {"embedding": le, "classification": lc, "lambda": lam}
