"""Batch image transforms, written here instead of torchvision (which does not run with our CPU
torch). They act on float batches ``[B, C, H, W]`` (C may be B-scans) and draw their randomness
from a ``torch.Generator`` so runs are reproducible.

No flips: mirroring a fundus photograph turns a right eye into a left eye, and the workbench keeps
laterality meaningful (it is in the tabular data).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PRESENT = "present"
"""The key of the per-sample modality mask, in a sample-format batch and in a model's inputs."""
LABELS = "labels"
"""The key of the batch's labels (MD in dB) in a model's inputs, for models that read them in training (FDS)."""
DRAW_SEED = "draw_seed"
"""The key of a per-batch seed (an int) for models whose loss draws random numbers (SimMLM's pairs)."""
SECOND_VIEW = "second_view"
"""The key of a second augmented view of the batch in a model's inputs (two-view contrastive terms)."""
IMAGE_MEAN = 0.4
IMAGE_STD = 0.25


def normalize(x: torch.Tensor, mean: float = IMAGE_MEAN, std: float = IMAGE_STD) -> torch.Tensor:
    """Fixed affine normalisation of [0, 1] images (statistics close to both synthetic modalities)."""
    return (x - mean) / std


def random_translate(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` px in each axis, filling with edge values."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    shifts = torch.randint(0, 2 * max_shift + 1, (b, 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(shifts)])


def random_intensity(x: torch.Tensor, brightness: float, contrast: float,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image contrast ``1 +/- contrast`` about the image mean and brightness ``+/- brightness``."""
    b = x.shape[0]
    shape = (b,) + (1,) * (x.dim() - 1)
    c = to_device(1 + contrast * (2 * torch.rand(shape, generator=generator) - 1), x.device)
    o = to_device(brightness * (2 * torch.rand(shape, generator=generator) - 1), x.device)
    mean = x.mean(dim=tuple(range(1, x.dim())), keepdim=True)
    return ((x - mean) * c + mean + o).clamp_(0.0, 1.0)


def prepare_inputs(batch: dict, modalities, kinds: dict[str, str], augment: bool,
                   generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> dict:
    """Model inputs from a sample-format batch: move everything to ``device`` as ``dtype``, then
    augment (training only) and normalise the image modalities there; vector modalities pass through.
    ``dtype`` is the model's (float64 for the CPU regression checks: the augmentation's means are
    reductions, whose float32 rounding depends on the processor's vector kernels).

    On CUDA each tensor is first copied into pinned (page-locked) host memory, so the copy to the
    device is truly asynchronous (``non_blocking``), and the augmentation runs on the GPU (its
    random draws still come from ``generator`` on the host, so they do not depend on the device).
    At the paper's scale (8 eyes of 32 B-scans at 224 px) the augmentation took about 230 ms per
    batch on one core of our CPU machine: on the host it would bound a GPU step. On CPU nothing is
    copied and the result is what it was when the augmentation ran before the move.

    When the batch carries its ``present`` mask (``[B, K]`` in the order of ``kinds``, the data set's
    modalities), ``inputs[PRESENT]`` holds its columns for ``modalities``, in that order: models that
    fuse only the acquired modalities (the evidential head, RIMA, SimMLM) read it, and every model
    sees an absent modality as zeros after normalisation and augmentation (zero-filling: the input a
    network sees for "no image", whatever the augmentation would have made of a black one). With
    every modality present the multiplication by the mask leaves each value exactly as it was."""
    inputs, present = {}, None
    if PRESENT in batch:
        names = list(kinds)
        columns = [names.index(m) for m in modalities]
        present = to_device(torch.as_tensor(batch[PRESENT])[:, columns].bool(), device)
        inputs[PRESENT] = present
    for j, m in enumerate(modalities):
        x = to_device(batch[m], device).to(dtype)
        if kinds[m] in ("image", "volume"):
            if augment:
                x = random_intensity(random_translate(x, max(1, x.shape[-1] // 16), generator), 0.05, 0.1, generator)
            x = normalize(x)
        if present is not None:
            x = x * present[:, j].reshape(-1, *([1] * (x.dim() - 1))).to(dtype)
        inputs[m] = x
    return inputs


def drop_modalities(present: torch.Tensor, rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Modality dropout (a training-time baseline for missing modalities): each present modality of
    each sample is dropped with probability ``rate``, drawn from ``generator``; a sample whose draw
    would drop every present modality keeps them all (it is never left without input). Returns the
    new bool ``[B, K]`` mask; an absent modality stays absent."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"modality dropout rate must be in [0, 1), got {rate}")
    present = torch.as_tensor(present).bool()
    keep = torch.rand(present.shape, generator=generator) >= rate
    dropped = present & keep
    emptied = ~dropped.any(dim=1, keepdim=True)
    return torch.where(emptied, present, dropped)


def to_device(x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``x`` on ``device``: through pinned memory and a non-blocking copy for CUDA, unchanged on CPU."""
    device = torch.device(device)
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)
