"""Encoders that start from weights the user has: a torchvision ImageNet ResNet or a MedicalNet 3-D
ResNet, read from a local file (nothing is downloaded), its keys mapped explicitly onto ours.

``EncoderConfig.weights`` names the file (one path for every image and volume encoder, or
``{modality: path}``); ``training.build_model`` calls ``load_pretrained`` once the model is built
and before stage-1 encoders (``TrainConfig.init_encoders``) are loaded, so those win.

Layouts read
------------
torchvision (He et al., CVPR 2016; ``torchvision.models.resnet18/34``, ImageNet weights
``resnet18-f37072fd.pth``, ``resnet34-b627a593.pth``): a flat state dict ``conv1.weight``
``[64, 3, 7, 7]``, ``bn1.*``, ``layer{1-4}.{block}.{conv1,bn1,conv2,bn2}.*``,
``layer{2-4}.0.downsample.{0,1}.*`` (1x1 convolution and batch norm), ``fc.*`` (the 1000-class
classifier). Into ``ResNet2d`` (fundus, shared B-scan and stacked B-scan encoders), by
``TORCHVISION_KEYS``:

    conv1.weight                   -> stem.0.weight        (input channels adapted, below)
    bn1.<p>                        -> stem.1.<p>
    layer<i>.<j>.<conv|bn><k>.<p>  -> stages.<i-1>.<j>.<conv|bn><k>.<p>
    layer<i>.<j>.downsample.<m>.<p> -> stages.<i-1>.<j>.shortcut.<m>.<p>
    fc.*                           -> dropped (the classifier; our heads are the workbench's)

MedicalNet (Chen, Ma and Zheng, "Med3D: Transfer Learning for 3D Medical Image Analysis",
arXiv:1904.00625; Tencent/MedicalNet ``models/resnet.py``, read at 20f76aa): ``resnet_10.pth``,
``resnet_18.pth``, ``resnet_34.pth`` (and the ``_23dataset`` versions) hold ``{"state_dict": ...}``
saved through ``nn.DataParallel``, so every key starts with ``module.``: ``conv1.weight``
``[64, 1, 7, 7, 7]``, ``bn1.*``, ``layer{1-4}.{block}.{conv1,bn1,conv2,bn2}.*`` (3x3x3 kernels)
and, for the type-B shortcut of ResNet-10, ``layer{2-4}.0.downsample.{0,1}.*``. ResNet-18 and -34
were trained with the parameter-free type-A shortcut (the README's table; MONAI's
``get_medicalnet_pretrained_resnet_args`` agrees), so their files have no ``downsample`` keys.
A ``conv_seg.*`` segmentation decoder, where present, is dropped. Into:

- ``ResNet3d`` (``oct_encoder="3d"``, a ResNet-10 of one block per stage), by ``MEDICALNET_KEYS_3D``:
  ``conv1.weight -> stem.0.weight`` (depth folded, below), ``bn1.<p> -> stem.1.<p>``,
  ``layer<i>.0.<conv|bn><k>.<p> -> stages.<i-1>.<conv|bn><k>.<p>``,
  ``layer<i>.0.downsample.<m>.<p> -> stages.<i-1>.shortcut.<m>.<p>``; a second block
  (``layer<i>.1.*``, a ResNet-18 or -34 file) has no counterpart and is refused.
- the SF3D encoder (``oct_encoder="sf3d"``, MONAI's 3-D ResNet-18, type-B shortcuts), whose names
  are MedicalNet's (``MEDICALNET_KEYS_MONAI``: every key to itself, ``module.`` removed).

Adaptations, each stated
------------------------
- First convolution of a 2-D ResNet with other than 3 input channels (a B-scan: 1; B-scans stacked
  as channels: S): the ImageNet kernel is summed over its RGB input channels, and divided by the
  number of input channels (``adapt_input_channels``). For one channel this is the usual choice
  (timm's ``adapt_input_conv``): a grey image fed to the RGB network as three equal channels gives
  ``sum_c W_c * x``, exactly what the summed kernel gives the one-channel image, so the pretrained
  network's response to greyscale is kept. For S channels each gets the summed kernel / S, which
  keeps the response to an input equal across its S channels (timm instead repeats the RGB
  kernels cyclically and scales them by 3/S).
- First convolution of ``ResNet3d``: its kernel is 3 deep along the B-scan axis (that axis is short
  here), MedicalNet's 7. The 7 depth taps are folded onto 3 by nearest position when the kernel's
  extent is compressed (taps {0, 1} -> 0, {2, 3, 4} -> 1, {5, 6} -> 2) and summed
  (``fold_kernel_depth``): the response to a volume constant along the B-scan axis is kept, the
  same principle as the RGB sum. SF3D's stem is 7^3 as MedicalNet's and is copied as is.
- Type-A shortcuts (a file without any ``downsample`` key) into a model with type-B (convolution
  and batch norm) shortcuts: type A subsamples the input with the block's stride and pads the new
  channels with zeros; a strided 1x1x1 convolution whose weight is the identity on the input
  channels and zero elsewhere computes exactly that, and its batch norm is set to the identity
  (weight 1, bias 0, running mean 0, running variance 1 - eps) (``type_a_shortcut``). In evaluation
  mode the loaded network then computes MedicalNet's function; in training mode that batch norm
  normalises with batch statistics as every other does.
- Not adapted: strides and dilations. MedicalNet's layers 3 and 4 use stride 1 with dilation 2 and 4
  (a segmentation network); ours (and MONAI's, which loads the same files) stride by 2. The weights'
  shapes do not depend on it. ImageNet's input normalisation (mean and SD per RGB channel) is not
  applied: the workbench's images are in [0, 1].

Refusals: the model's width multiplier must be 1.0 (the published channel counts), a 2-D ResNet's
stem must be ``imagenet`` (torchvision's 7x7 stem), and the file must fit: one ``ValueError`` lists
every file key with no counterpart ("unexpected"), every key of ours the file does not fill
("missing"; batch-norm ``num_batches_tracked`` counters are optional) and every shape that differs
after the adaptations ("mis-shaped"). Files are read with ``torch.load(weights_only=True)``: a file
that carries a pickled object is refused, never executed.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
from torch import nn

from ..files import UntrustedFileError

TORCHVISION = "torchvision"
MEDICALNET = "medicalnet"

# (file key pattern, our key template); {stage} is the file's layer number minus 1
TORCHVISION_KEYS = (
    (r"conv1\.weight", "stem.0.weight"),
    (r"bn1\.(?P<p>\w+)", "stem.1.{p}"),
    (r"layer(?P<layer>[1-4])\.(?P<block>\d+)\.(?P<m>conv1|bn1|conv2|bn2)\.(?P<p>\w+)",
     "stages.{stage}.{block}.{m}.{p}"),
    (r"layer(?P<layer>[1-4])\.(?P<block>\d+)\.downsample\.(?P<i>[01])\.(?P<p>\w+)",
     "stages.{stage}.{block}.shortcut.{i}.{p}"),
)
TORCHVISION_DROPPED = (r"fc\.(weight|bias)",)

MEDICALNET_KEYS_3D = (
    (r"conv1\.weight", "stem.0.weight"),
    (r"bn1\.(?P<p>\w+)", "stem.1.{p}"),
    (r"layer(?P<layer>[1-4])\.0\.(?P<m>conv1|bn1|conv2|bn2)\.(?P<p>\w+)", "stages.{stage}.{m}.{p}"),
    (r"layer(?P<layer>[1-4])\.0\.downsample\.(?P<i>[01])\.(?P<p>\w+)", "stages.{stage}.shortcut.{i}.{p}"),
)
MEDICALNET_KEYS_MONAI = (
    (r"(?P<k>(conv1|bn1|layer[1-4]\.\d+\.(conv1|bn1|conv2|bn2|downsample\.[01]))\.\w+)", "{k}"),
)
MEDICALNET_DROPPED = (r"conv_seg\..+",)

OPTIONAL = "num_batches_tracked"
"""Batch-norm step counters: older files (PyTorch before 0.4.1) have none; ours are kept then."""


# ----------------------------------------------------------------------------------------------
# Pure adaptations


def adapt_input_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """An RGB first-convolution kernel ``[O, 3, ...]`` for ``in_channels`` inputs: as is for 3;
    otherwise ``sum over RGB / in_channels`` for each input channel (one channel: the plain sum).
    See the module docstring for why."""
    if weight.shape[1] == in_channels:
        return weight
    if weight.shape[1] != 3:
        raise ValueError(f"can adapt an RGB kernel (3 input channels) only, got {tuple(weight.shape)}")
    summed = weight.sum(dim=1, keepdim=True)
    return (summed / in_channels).repeat(1, in_channels, *([1] * (weight.ndim - 2)))


def depth_bins(source: int, target: int) -> list[int]:
    """For each of ``source`` kernel taps, the tap of a ``target``-tap kernel nearest to it when the
    kernel's extent is compressed: tap ``k`` at offset ``k - (source - 1) / 2`` lands at offset
    ``(k - (source - 1) / 2) * (target - 1) / (source - 1)``, rounded half away from the centre.
    ``depth_bins(7, 3) == [0, 0, 1, 1, 1, 2, 2]``."""
    if not 1 <= target <= source:
        raise ValueError(f"can fold {source} taps onto 1 to {source}, not {target}")
    if target == 1 or source == 1:
        return [0] * source
    out = []
    for k in range(source):
        x = (k - (source - 1) / 2) * (target - 1) / (source - 1)
        nearest = int(abs(x) + 0.5) * (1 if x >= 0 else -1)
        out.append(nearest + (target - 1) // 2)
    return out


def fold_kernel_depth(weight: torch.Tensor, depth: int) -> torch.Tensor:
    """A 3-D kernel ``[O, I, D, H, W]`` folded to ``depth`` taps along D: each tap summed into its
    ``depth_bins`` tap, so the response to an input constant along D is kept."""
    bins = depth_bins(weight.shape[2], depth)
    out = weight.new_zeros(weight.shape[0], weight.shape[1], depth, *weight.shape[3:])
    for k, b in enumerate(bins):
        out[:, :, b] += weight[:, :, k]
    return out


def type_a_shortcut(conv_shape: tuple[int, ...], eps: float) -> dict[str, torch.Tensor]:
    """A type-B shortcut (``0.weight``: 1x1 convolution ``[out, in, 1, ...]``; ``1.*``: batch norm)
    that computes MedicalNet's type-A shortcut (subsample, then zero-pad the new channels) in
    evaluation mode: the identity on the ``in`` input channels, zero for the others; the batch norm
    the identity (running variance ``1 - eps``, so ``sqrt(var + eps) == 1``)."""
    out_ch, in_ch = conv_shape[:2]
    weight = torch.zeros(conv_shape)
    for c in range(min(in_ch, out_ch)):
        weight[(c, c) + (0,) * (len(conv_shape) - 2)] = 1.0
    return {"0.weight": weight, "1.weight": torch.ones(out_ch), "1.bias": torch.zeros(out_ch),
            "1.running_mean": torch.zeros(out_ch), "1.running_var": torch.full((out_ch,), 1.0 - eps)}


def map_keys(keys, table, dropped=()) -> tuple[dict[str, str], list[str], list[str]]:
    """``{file key: our key}`` by ``table`` (pattern, template: ``{stage}`` is ``layer - 1``), the
    keys ``dropped`` on purpose, and the keys no entry matches."""
    mapped, drop, unmatched = {}, [], []
    for key in keys:
        if any(re.fullmatch(p, key) for p in dropped):
            drop.append(key)
            continue
        for pattern, template in table:
            m = re.fullmatch(pattern, key)
            if m:
                groups = m.groupdict()
                if "layer" in groups:
                    groups["stage"] = int(groups["layer"]) - 1
                mapped[key] = template.format(**groups)
                break
        else:
            unmatched.append(key)
    return mapped, drop, unmatched


def blocks_per_stage(keys) -> tuple[int, ...]:
    """Residual blocks per stage of a state dict, in either naming (``layer<i>.<j>.`` or
    ``stages.<i-1>.<j>.``; ``ResNet3d``'s ``stages.<i>.conv1``: one block per stage)."""
    blocks: dict[int, set] = {}
    for key in keys:
        m = re.match(r"layer(\d)\.(\d+)\.", key)
        if m:
            blocks.setdefault(int(m.group(1)) - 1, set()).add(int(m.group(2)))
            continue
        m = re.match(r"stages\.(\d+)\.(\d+)\.", key) or re.match(r"stages\.(\d+)\.()conv1\.", key)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2) or 0))
    return tuple(len(blocks[s]) for s in sorted(blocks))


# ----------------------------------------------------------------------------------------------
# Files


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a torchvision or MedicalNet weights file, read with ``weights_only=True``:
    a flat state dict, or the ``"state_dict"`` entry of a dict (MedicalNet), with any ``module.``
    prefix (``nn.DataParallel``) removed."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights {path} do not exist (EncoderConfig.weights; nothing is "
                                "downloaded)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UntrustedFileError(f"{path} holds objects that weights-only loading refuses (it could run code when "
                                 f"unpickled); not loaded: {str(err).splitlines()[0]}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} holds no state dict (a dict of tensors, or a dict with one under 'state_dict')")
    return {k.removeprefix("module."): v for k, v in obj.items()}


# ----------------------------------------------------------------------------------------------
# Into our encoders


def target_of(encoder: nn.Module) -> tuple[str, nn.Module, tuple, tuple] | None:
    """``(layout, module, key table, dropped)`` for an encoder that takes pretrained weights, else None."""
    from .oct3d import SF3DEncoder
    from .resnet import ResNet2d
    from .resnet3d import ResNet3d

    backbone = getattr(encoder, "backbone", None)
    if isinstance(backbone, ResNet2d):
        return TORCHVISION, backbone, TORCHVISION_KEYS, TORCHVISION_DROPPED
    if isinstance(backbone, ResNet3d):
        return MEDICALNET, backbone, MEDICALNET_KEYS_3D, MEDICALNET_DROPPED
    if isinstance(encoder, SF3DEncoder):
        return MEDICALNET, backbone, MEDICALNET_KEYS_MONAI, MEDICALNET_DROPPED
    return None


def _fmt(shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def load_into(encoder: nn.Module, state: dict[str, torch.Tensor], where: str = "encoder") -> list[str]:
    """Load file tensors ``state`` (``read_state_dict``) into ``encoder``'s backbone; returns the
    notes of the adaptations made. A ``ValueError`` naming every unexpected, missing and mis-shaped
    key when the file does not fit (nothing is loaded then)."""
    target = target_of(encoder)
    if target is None:
        raise ValueError(f"{where}: a {type(encoder).__name__} has no published pretrained layout; pretrained "
                         "weights load into the 2-D ResNets (torchvision) and the '3d' and 'sf3d' OCT encoders "
                         "(MedicalNet)")
    layout, module, table, dropped = target
    ours = module.state_dict()
    file_ndim = state["conv1.weight"].ndim if "conv1.weight" in state else None
    our_ndim = 4 if layout == TORCHVISION else 5
    if file_ndim is not None and file_ndim != our_ndim:
        kind = {4: "a 2-D (torchvision)", 5: "a 3-D (MedicalNet)"}.get(file_ndim, f"a {file_ndim - 2}-D")
        raise ValueError(f"{where}: the file holds {kind} ResNet (conv1.weight {_fmt(state['conv1.weight'].shape)}), "
                         f"but this encoder is a {type(module).__name__} that takes {layout}'s layout; name one file "
                         f"per modality: weights={{fundus: <imagenet>.pth, oct: <medicalnet>.pth}}")
    mapped, _, unexpected = map_keys(state, table, dropped)
    unexpected += [k for k, ours_key in mapped.items() if ours_key not in ours]
    mapped = {k: v for k, v in mapped.items() if v in ours}
    values, notes = {mapped[k]: state[k] for k in mapped}, []

    stem = "stem.0.weight" if "stem.0.weight" in ours else "conv1.weight"
    if stem in values:
        w, want = values[stem], ours[stem].shape
        if layout == TORCHVISION and w.shape[1] != want[1] and w.shape[1] == 3:
            values[stem] = adapt_input_channels(w, want[1])
            notes.append(f"conv1 summed over RGB{' / ' + str(want[1]) if want[1] > 1 else ''} for {want[1]} input "
                         f"channel{'s' if want[1] > 1 else ''}")
        elif layout == MEDICALNET and w.ndim == 5 and w.shape[2] > want[2] and w.shape[0:2] == want[0:2] \
                and w.shape[3:] == want[3:]:
            values[stem] = fold_kernel_depth(w, want[2])
            notes.append(f"conv1 depth {w.shape[2]} folded to {want[2]} ({depth_bins(w.shape[2], want[2])})")

    shortcut = re.compile(r"(.*\.)(shortcut|downsample)\.[01]\.\w+")
    if layout == MEDICALNET and not any(".downsample." in k for k in state):  # type A: fill ours
        for prefix in sorted({m.group(1) + m.group(2) for k in ours if (m := shortcut.fullmatch(k))}):
            conv = ours[f"{prefix}.0.weight"]
            eps = module.get_submodule(f"{prefix}.1").eps
            for name, value in type_a_shortcut(tuple(conv.shape), eps).items():
                values.setdefault(f"{prefix}.{name}", value)
            notes.append(f"{prefix}: type-A shortcut as an identity convolution")

    missing = [k for k in ours if k not in values and not k.endswith(OPTIONAL)]
    misshaped = [f"{k} {_fmt(values[k].shape)} (ours {_fmt(ours[k].shape)})" for k in values
                 if values[k].shape != ours[k].shape]
    if unexpected or missing or misshaped:
        parts = [f"{len(unexpected)} unexpected (no counterpart here): {', '.join(unexpected)}" if unexpected else "",
                 f"{len(missing)} missing (ours, not in the file): {', '.join(missing)}" if missing else "",
                 f"{len(misshaped)} mis-shaped: {', '.join(misshaped)}" if misshaped else ""]
        theirs, here = blocks_per_stage(state), blocks_per_stage(ours)
        depth = f" (blocks per stage: the file's {theirs}, ours {here})" if theirs != here else ""
        raise ValueError(f"{where}: the weights do not fit this {type(module).__name__} ({layout} layout){depth}; "
                         + "; ".join(p for p in parts if p))
    module.load_state_dict({**ours, **values}, strict=True)
    return notes


def load_pretrained(model: nn.Module, config, modalities=None) -> dict[str, list[str]]:
    """Load ``config.weights`` (an ``EncoderConfig``) into ``model.encoders``: one path into every
    encoder that takes pretrained weights (vector encoders, MLPs, are left alone), or
    ``{modality: path}`` into the named ones (a name among the data set's ``modalities`` that this
    model does not use, a unimodal model's other modality, is skipped; any other name is an error).
    Returns each loaded modality's adaptation notes."""
    weights = getattr(config, "weights", None)
    if not weights:
        return {}
    encoders = model.encoders
    if isinstance(weights, dict):
        unknown = sorted(set(weights) - set(modalities or ()) - set(encoders))
        if unknown:
            raise ValueError(f"EncoderConfig.weights names {unknown}, but the data's modalities are "
                             f"{list(modalities or encoders)}")
        chosen = {m: path for m, path in weights.items() if m in encoders}
    else:
        chosen = {m: weights for m, e in encoders.items() if type(e).__name__ != "VectorEncoder"}
        if not chosen:
            raise ValueError(f"EncoderConfig.weights is set, but no encoder of {list(encoders)} takes pretrained "
                             "weights")
    if config.width != 1.0:
        raise ValueError(f"pretrained weights need width=1.0 (the published channel counts), got width={config.width}")
    notes, files = {}, {}
    for modality, path in chosen.items():
        encoder = encoders[modality]
        target = target_of(encoder)
        if target is not None and target[0] == TORCHVISION and config.stem != "imagenet":
            raise ValueError(f"{modality} encoder: torchvision's ResNets have the 7x7 ImageNet stem; set stem=imagenet "
                             f"(got stem={config.stem!r})")
        if str(path) not in files:
            files[str(path)] = read_state_dict(path)
        notes[modality] = load_into(encoder, files[str(path)], where=f"{modality} encoder ({path})")
    return notes
