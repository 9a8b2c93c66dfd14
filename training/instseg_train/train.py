"""Trains an instseg network (Fathi et al. 2017) on a COCO instance dataset and exports it to
the element's model contract.

    python -m instseg_train.train --data DIR --out model.onnx [--steps N --batch B --size H W]

With ``--generate N`` a procedural shapes dataset of N training images is rendered into DIR
first (``instseg_train.coco.generate_dataset``; ``--generate-clips M`` adds M training clips).
With ``--pairs P`` every batch holds P pairs of consecutive clip frames from DIR's
``train_clips`` split in place of 2P still images; their embedding loss spans both frames (see
``losses.total_loss``), which keeps instance identities stable in the element. Everything is
seeded (``--seed``), so the same command gives the same model on the same machine.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from .coco import ClipPairs, CocoInstances, generate_dataset
from .export import RECOMMENDED_SETTINGS, check_export, export_onnx, recommended_metadata
from .losses import downsample_ids, total_loss
from .model import InstSegNet

PRECISIONS = ("fp32", "bf16", "auto")  # of the network's arithmetic in training (see train)


def native_bf16(device: str) -> bool:
    """Whether `device` runs bfloat16 convolutions natively: a CUDA GPU that supports them, or a
    CPU with AVX-512 BF16 or AMX. Elsewhere oneDNN emulates bfloat16, which is far slower than
    float32: on a 2-core AMD EPYC with AVX2 only (Zen 3), forward, losses, backward and Adam of a
    batch of the default recipe took 3.8 s in bfloat16 against 0.46 s in float32."""
    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_precision(precision: str, device: str) -> str:
    """"auto" becomes "bf16" where `device` has native bfloat16, else "fp32" (said on stdout);
    an explicit "bf16" where it is emulated is kept, with a warning."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is neither fp32, bf16 nor auto")
    native = native_bf16(device)
    if precision == "auto":
        precision = "bf16" if native else "fp32"
        print(f"precision: {precision} ({'native' if native else 'no native'} bfloat16 on {device})", flush=True)
    elif precision == "bf16" and not native:
        print(f"warning: {device} has no native bfloat16: a step can take about 8x as long as with "
              "--precision fp32 (--precision auto picks fp32 here)", flush=True)
    return precision


def collate(batch):
    """Images [B, 3, H, W] in 0..1 and id maps [B, H, W] stack; per-image class tables (index
    = instance id, 0 = background) stay a list."""
    images, ids, classes = zip(*batch)
    tables = [torch.cat([torch.zeros(1, dtype=torch.long), c]) for c in classes]
    return torch.stack(images), torch.stack(ids), tables


def collate_pairs(batch):
    """Pairs (images [2, 3, H, W], ids [2, H, W], classes) flatten to frames [2P, ...], each
    pair's class table repeated for both of its frames."""
    images, ids, tables = collate(batch)
    return images.flatten(0, 1), ids.flatten(0, 1), [t for t in tables for _ in range(2)]


def forever(loader):
    """The loader's batches, epoch after epoch (refused when a batch does not fit the data,
    which would otherwise loop without a batch)."""
    if len(loader) == 0:
        raise ValueError(f"{len(loader.dataset)} samples make no batch of {loader.batch_size}")
    while True:
        yield from loader


def training_outputs(model: InstSegNet, image: torch.Tensor, bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(embedding, classes) for the losses, on the grid the network computes the embedding on:
    the output grid at output stride 4 or 2; at stride 1 the stride-2 grid that the exported
    model upsamples bilinearly. There the classification targets, a mask grown over every
    output pixel for each sampled pixel, cost a quarter, and the weights are those of the same
    run at stride 2 (a 400-step fine-tune with the embedding loss on the upsampled grid scored
    lower). With ``bf16`` the network runs under bfloat16 autocast; its outputs come back to
    float32 before the softmax and the losses, whose log-probabilities and distance thresholds
    need more than bfloat16's 8 bits."""
    with torch.autocast(image.device.type, dtype=torch.bfloat16, enabled=bf16):
        embedding, logits = model.native_outputs(image)
    embedding, logits = embedding.float(), logits.float()
    return embedding, model.class_probabilities(logits)


def load_matching(model: InstSegNet, weights: dict) -> None:
    """Loads the tensors of `weights` whose name and shape match the model's; says which not."""
    own = model.state_dict()
    kept = {name: t for name, t in weights.items() if name in own and own[name].shape == t.shape}
    skipped = sorted(set(own) - set(kept))
    if skipped:
        print(f"init: {len(skipped)} tensors keep their initialisation: {', '.join(skipped)}", flush=True)
    model.load_state_dict(kept, strict=False)


def train(data: str, out: str, steps: int = 2000, batch: int = 8, lr: float = 2e-3,
          size=(256, 256), embedding_dim: int = 8, seed: int = 0, ramp_steps: int | None = None,
          k: int = 10, workers: int = 0, log_every: int = 50, checkpoint_every: int = 500,
          hard_background: int = 10, output_stride: int = 4, width: int = 16, device: str = "auto",
          pairs: int = 0, init: str | None = None, precision: str = "fp32", cache: bool = False,
          min_area: int | None = None, **recommended) -> InstSegNet:
    """Trains, writes the weights to ``out + ".pt"`` every ``checkpoint_every`` steps and at the
    end, and exports the ONNX model to ``out``. lambda ramps from 0 to 0.2 over ``ramp_steps``
    (default: the first quarter), while the embedding learns enough for the classification
    targets, which come from masks grown with it, to mean something. ``recommended`` settings
    (``seed_threshold``, ``overlaps``... see ``export.RECOMMENDED_SETTINGS``) are written to the
    ONNX file as the element's recommended post-processing. The classification
    loss also sees the ``hard_background`` most seed-like background pixels of each image.
    ``device`` is a torch device ("cpu", "cuda", "auto" = cuda when available); pixel sampling
    stays on seeded CPU generators, but GPU kernels are not bit-reproducible. ``pairs`` of the
    ``batch`` images per step are pairs of consecutive frames from ``data/train_clips``.
    ``init`` starts from the weights of an earlier run (its ``.pt`` file), for example the
    default model's to fine-tune on other data; tensors whose shape differs (a class head for
    another number of classes) keep their fresh initialisation.
    ``precision`` "bf16" runs the network under bfloat16 autocast with channels-last tensors
    (weights, optimiser and losses stay float32): on a CPU with AVX-512 BF16 (AMD Zen 4, Intel
    Sapphire Rapids) the network takes about 0.6x the time (a whole step with data loading about
    0.75x); elsewhere it is emulated and far slower (see ``native_bf16``). "auto" picks "bf16"
    where it is native, else "fp32". ``cache`` keeps the decoded training images and masks in
    memory (``CocoInstances``), in the loader's worker processes when ``workers`` > 0, which
    live as long as the run. ``min_area`` is the recommended min-area in output pixels (default:
    the frame area of the element's default, 4 output pixels, at stride 4)."""
    recommended_metadata(**recommended)  # a bad setting fails now, not after the training
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    bf16 = resolve_precision(precision, device) == "bf16"
    layout = torch.channels_last if bf16 else torch.contiguous_format
    torch.manual_seed(seed)
    np.random.seed(seed)
    dataset = CocoInstances(os.path.join(data, "train"),
                            os.path.join(data, "annotations", "instances_train.json"),
                            size=tuple(size), hflip=True, cache=cache)
    model = InstSegNet(embedding_dim=embedding_dim, num_classes=len(dataset.category_names),
                       output_stride=output_stride, width=width).to(device, memory_format=layout)
    if init:
        load_matching(model, torch.load(init, map_location=device))
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps)
    shuffle = torch.Generator().manual_seed(seed)
    sampling = torch.Generator().manual_seed(seed + 1)
    if not 0 <= 2 * pairs < batch:
        raise ValueError(f"--pairs {pairs} leaves no still image in a batch of {batch}")
    # Persistent workers keep their samples cache (``cache``) from one epoch to the next.
    loading = {"num_workers": workers, "persistent_workers": workers > 0}
    batches = forever(DataLoader(dataset, batch_size=batch - 2 * pairs, shuffle=True, generator=shuffle,
                                 drop_last=True, collate_fn=collate, **loading))
    if pairs:
        clips = ClipPairs(CocoInstances(os.path.join(data, "train_clips"),
                                        os.path.join(data, "annotations", "instances_train_clips.json"),
                                        size=tuple(size), hflip=True, cache=cache))
        pair_batches = forever(DataLoader(clips, batch_size=pairs, shuffle=True, drop_last=True,
                                          generator=torch.Generator().manual_seed(seed + 2),
                                          collate_fn=collate_pairs, **loading))
    ramp = ramp_steps if ramp_steps is not None else max(1, steps // 4)
    started = time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        images, ids, tables = next(batches)
        if pairs:
            frames, frame_ids, frame_tables = next(pair_batches)
            images, ids, tables = torch.cat([images, frames]), torch.cat([ids, frame_ids]), tables + frame_tables
        images, ids = images.to(device), ids.to(device)
        inputs = model.normalize(images * 255.0).contiguous(memory_format=layout)
        embedding, classes = training_outputs(model, inputs, bf16)
        loss_stride = ids.shape[-1] // embedding.shape[-1]
        loss, parts = total_loss(embedding, classes, downsample_ids(ids, loss_stride), tables,
                                 model.thresholds, step - 1, ramp, k=k, generator=sampling,
                                 hard_background=hard_background, pairs=pairs)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % log_every == 0 or step == steps:
            print(f"step {step}/{steps} loss {loss.item():.4f} (embedding "
                  f"{parts['embedding'].item():.4f}, classes {parts['classification'].item():.4f}, "
                  f"lambda {parts['lambda']:.2f}) {time.perf_counter() - started:.1f} s", flush=True)
        if step % checkpoint_every == 0 or step == steps:
            torch.save(model.state_dict(), out + ".pt")
    model.to("cpu", memory_format=torch.contiguous_format).eval()
    if min_area is None and output_stride != 4:
        min_area = 4 * (4 // output_stride) ** 2  # the element's default is meant for stride 4
    export_onnx(model, out, input_size=tuple(size), labels=dataset.category_names, min_area=min_area,
                **recommended)
    check_export(model, out)
    return model


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="COCO dataset directory (train split used)")
    parser.add_argument("--out", required=True, help="ONNX file to write")
    parser.add_argument("--generate", type=int, default=0, help="render N shapes images into --data first")
    parser.add_argument("--generate-clips", type=int, default=0, help="and M training clips of 16 frames")
    parser.add_argument("--pairs", type=int, default=0,
                        help="pairs of consecutive clip frames (train_clips split) per batch, in place of stills")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"))
    parser.add_argument("--embedding-dim", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-stride", type=int, default=4, choices=(1, 2, 4),
                        help="stride of the outputs: 2 refines the embedding at stride 2, 1 exports it "
                             "upsampled bilinearly (the losses work at stride 2 for both)")
    parser.add_argument("--width", type=int, default=16, help="channels of the first stage")
    parser.add_argument("--k", type=int, default=10, help="pixels sampled per segment in the losses")
    parser.add_argument("--device", default="auto", help='torch device: "cpu", "cuda" or "auto"')
    parser.add_argument("--workers", type=int, default=0)
    for name, kind, meaning in RECOMMENDED_SETTINGS:
        values = {"choices": kind} if isinstance(kind, tuple) else {"type": kind}
        parser.add_argument(f"--{name}", default=None, **values,
                            help=f"the element's recommended {name} ({meaning}), stored in the ONNX file")
    parser.add_argument("--init", default=None,
                        help="start from these weights (the .pt file a run writes next to its ONNX file)")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="bf16: bfloat16 autocast for the network (faster on CPUs with AVX-512 BF16 or AMX, "
                             "far slower elsewhere); auto: bf16 where it is native, else fp32")
    parser.add_argument("--cache", action="store_true",
                        help="keep decoded images and masks in memory after their first epoch "
                             "(about 4 bytes per pixel per image)")
    parser.add_argument("--min-area", type=int, default=None,
                        help="the element's recommended min-area in output pixels, stored in the ONNX file "
                             "(default: 4 stride-4 cells)")
    parser.add_argument("--hard-background", type=int, default=10,
                        help="most seed-like background pixels added to the classification loss")
    args = parser.parse_args(argv)
    if args.generate or args.generate_clips:
        generate_dataset(args.data, seed=args.seed, train=args.generate, val=0, test=0, clips=0,
                         size=tuple(args.size), workers=os.cpu_count() or 1, train_clips=args.generate_clips)
    recommended = {name.replace("-", "_"): getattr(args, name.replace("-", "_"))
                   for name, _, _ in RECOMMENDED_SETTINGS}
    train(args.data, args.out, steps=args.steps, batch=args.batch, lr=args.lr, size=args.size,
          embedding_dim=args.embedding_dim, seed=args.seed, workers=args.workers,
          hard_background=args.hard_background, output_stride=args.output_stride, width=args.width, k=args.k,
          device=args.device, pairs=args.pairs, init=args.init, precision=args.precision, cache=args.cache,
          min_area=args.min_area, **recommended)


if __name__ == "__main__":
    main()
