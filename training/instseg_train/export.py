"""Export of an InstSegNet to one ONNX file following "instseg contract 1" (docs/contract.md)."""

from __future__ import annotations

import inspect
import os

import numpy as np
import onnx
import torch

MAX_FILE_BYTES = 4 * 1024 * 1024


def _floats(values) -> str:
    return ",".join(f"{float(v):g}" for v in values)


# The element settings an ONNX file can recommend beside min-area, as instseg.* keys: (key, its type
# or its choices, what it sets). Python keyword arguments spell the keys with underscores.
RECOMMENDED_SETTINGS = (
    ("seed-threshold", float, "the seediness a seed needs"),
    ("alpha", float, "greedy seed spread"),
    ("track-seed-threshold", float, "the seediness a tracked object's new seed needs"),
    ("overlaps", ("nearest", "confident"), "which instance a pixel inside several masks belongs to"),
    ("max-overlap", float, "an instance is dropped when more than this share of its mask stays with earlier ones"),
)


def recommended_metadata(**recommended) -> dict[str, str]:
    """The instseg.* keys of the settings of ``RECOMMENDED_SETTINGS`` given as keyword arguments
    (``seed_threshold``, ``overlaps``...; None leaves a key out), checked against their choices."""
    keys = {key.replace("-", "_"): (key, kind) for key, kind, _ in RECOMMENDED_SETTINGS}
    unknown = sorted(set(recommended) - set(keys))
    if unknown:
        raise TypeError(f"unknown recommended settings: {unknown}")
    meta = {}
    for name, value in recommended.items():
        key, kind = keys[name]
        if value is None:
            continue
        if isinstance(kind, tuple) and value not in kind:
            raise ValueError(f"{name} must be one of {kind}, got {value!r}")
        if name == "max_overlap" and not 0.0 <= value <= 1.0:
            raise ValueError(f"max_overlap must be in [0, 1], got {value!r}")
        meta[f"instseg.{key}"] = f"{value:g}" if isinstance(value, float) else str(value)
    return meta


def contract_metadata(model, input_size, labels=None, thresholds=None, min_area=None, extra_metadata=None,
                      **recommended) -> dict[str, str]:
    """The instseg.* metadata_props of docs/contract.md (input_size is (height, width)), plus
    the recommended element settings (see `recommended_metadata`), those beyond the paper's being
    the element's extensions."""
    extensions = recommended_metadata(**recommended)
    thresholds = tuple(thresholds if thresholds is not None else model.thresholds)
    labels = list(labels if labels is not None else [f"class{i}" for i in range(1, model.num_classes + 1)])
    if len(thresholds) != len(model.thresholds) or list(thresholds) != sorted(thresholds):
        raise ValueError(f"need {len(model.thresholds)} ascending thresholds, got {thresholds}")
    if len(labels) != model.num_classes or any("," in label for label in labels):
        raise ValueError(f"need {model.num_classes} labels without commas, got {labels}")
    height, width = input_size
    meta = {
        "instseg.contract": "1",
        "instseg.thresholds": _floats(thresholds),
        "instseg.labels": ",".join(labels),
        "instseg.mean": _floats(model.mean),
        "instseg.std": _floats(model.std),
        "instseg.input-size": f"{width}x{height}",
        "instseg.resize": "letterbox",
    }
    if min_area is not None:
        meta["instseg.min-area"] = str(min_area)
    meta.update(extensions)
    meta.update({k: str(v) for k, v in (extra_metadata or {}).items()})
    return meta


def export_onnx(model, path, input_size=(256, 256), labels=None, thresholds=None, extra_metadata=None,
                dynamic: bool = False, min_area=None, dynamic_batch: bool = True, **recommended) -> dict[str, str]:
    """Writes `model` (in eval mode, batch norms folded) to `path`: opset 17, input `image`
    [N, 3, H, W] (N dynamic, named "N", or 1 with dynamic_batch=False; H, W fixed to input_size =
    (height, width), or dynamic), outputs `embedding` and `classes` (batch N too), instseg.*
    metadata_props (see `contract_metadata`), one self-contained file of at most 4 MB. Returns the
    metadata written."""
    meta = contract_metadata(model, input_size, labels, thresholds, min_area, extra_metadata, **recommended)
    was_training = model.training
    model.eval()
    kwargs = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # the TorchScript exporter: stable names, folds batch norms
    axes = {"image": {}, "embedding": {}, "classes": {}}
    if dynamic_batch:  # a batch of frames in one run, as a Triton server forms them (instseg_train.triton)
        for name in axes:
            axes[name][0] = "N"
    if dynamic:
        axes["image"].update({2: "height", 3: "width"})
        axes["embedding"].update({2: "out_height", 3: "out_width"})
        axes["classes"].update({3: "out_height", 4: "out_width"})
    if dynamic or dynamic_batch:
        kwargs["dynamic_axes"] = axes
    try:
        torch.onnx.export(
            model, (torch.zeros(1, 3, *input_size),), str(path), opset_version=17,
            input_names=["image"], output_names=["embedding", "classes"], do_constant_folding=True, **kwargs,
        )
    finally:
        model.train(was_training)
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path), save_as_external_data=False)
    size = os.path.getsize(path)
    if size > MAX_FILE_BYTES:
        raise ValueError(f"{path}: {size} bytes, over the {MAX_FILE_BYTES} byte budget")
    return meta


def read_metadata(path) -> dict[str, str]:
    """The metadata_props of an ONNX file as a dict."""
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def input_size(session, metadata: dict[str, str]) -> tuple[int, int]:
    """(height, width) the element feeds the file: its input's fixed H and W, or
    ``instseg.input-size`` (default 256x256) when they are dynamic (docs/contract.md)."""
    shape = session.get_inputs()[0].shape[2:]
    if all(isinstance(s, int) for s in shape):
        return tuple(shape)
    width, height = map(int, metadata.get("instseg.input-size", "256x256").split("x"))
    return height, width


def check_export(model, path, trials: int = 3, atol: float = 1e-4, seed: int = 0) -> None:
    """Runs the ONNX file with onnxruntime (CPU) on random normal inputs and asserts both
    outputs match the PyTorch model (eval mode) within atol. Dynamic H/W files are also tried
    at a second size; files with a dynamic batch also run a batch of 3, each image of which must
    give what it gives alone."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape
    names = [o.name for o in session.get_outputs()]
    assert names == ["embedding", "classes"], names
    height, width = input_size(session, read_metadata(path))
    sizes = [(height, width)]
    if not all(isinstance(s, int) for s in shape[2:]):
        sizes.append((max(16, height // 32 * 16), width + 32))  # multiples of 16
    rng = np.random.default_rng(seed)
    was_training = model.training
    model.eval()
    try:
        for size in sizes:
            for _ in range(trials):
                image = rng.standard_normal((1, 3, *size)).astype(np.float32)
                got = session.run(names, {session.get_inputs()[0].name: image})
                with torch.no_grad():
                    want = [t.numpy() for t in model(torch.from_numpy(image))]
                for name, g, w in zip(names, got, want):
                    assert g.shape == w.shape, f"{name}: onnx {g.shape} vs torch {w.shape}"
                    err = float(np.abs(g - w).max())
                    assert err <= atol, f"{name}: max |onnx - torch| = {err:g} > {atol:g} at {size}"
        if not isinstance(shape[0], int):
            images = rng.standard_normal((3, 3, height, width)).astype(np.float32)
            batched = session.run(names, {session.get_inputs()[0].name: images})
            for i in range(len(images)):
                alone = session.run(names, {session.get_inputs()[0].name: images[i:i + 1]})
                for name, b, a in zip(names, batched, alone):
                    assert b.shape[0] == len(images), f"{name}: batch of {len(images)} gave {b.shape}"
                    err = float(np.abs(b[i] - a[0]).max())
                    assert err <= atol, f"{name}: image {i} of a batch of 3 differs from it alone by {err:g}"
    finally:
        model.train(was_training)
