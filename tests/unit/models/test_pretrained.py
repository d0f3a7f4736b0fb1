"""Pretrained encoders from a local file (remd_core.models.pretrained): files built here with the
published key names and shapes of torchvision's ImageNet ResNets and of MedicalNet's 3-D ResNets
(nothing is downloaded), loaded, checked tensor by tensor, trained from; wrong files refused naming
every key."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from remd_core.config import parse_settings
from remd_core.data import load
from remd_core.files import UntrustedFileError
from remd_core.models import EncoderConfig
from remd_core.models.encoders import ImageEncoder, SharedBscanEncoder, StackedBscanEncoder, VolumeEncoder
from remd_core.models.pretrained import (adapt_input_channels, depth_bins, fold_kernel_depth, load_into,
                                         read_state_dict, type_a_shortcut)
from remd_core.training import TrainConfig, build_model, fit, save_encoders

TORCHVISION_DEPTHS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
MEDICALNET_DEPTHS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
MEDICALNET_SHORTCUT = {10: "B", 18: "A", 34: "A"}  # MedicalNet's README; MONAI's get_medicalnet_pretrained_resnet_args
WIDTHS = (64, 128, 256, 512)
SMALL = dict(n_eyes=40, image_size=32, oct_size=32, n_bscans=2, test=8, val=8, cache=False)


def _conv(generator, *shape):
    fan_in = math.prod(shape[1:])
    return torch.randn(*shape, generator=generator) * math.sqrt(2.0 / fan_in)


def _bn(state, prefix, channels, generator, counter=True):
    state[f"{prefix}.weight"] = 1 + 0.1 * torch.randn(channels, generator=generator)
    state[f"{prefix}.bias"] = 0.1 * torch.randn(channels, generator=generator)
    state[f"{prefix}.running_mean"] = 0.1 * torch.randn(channels, generator=generator)
    state[f"{prefix}.running_var"] = 1 + 0.1 * torch.rand(channels, generator=generator)
    if counter:
        state[f"{prefix}.num_batches_tracked"] = torch.tensor(1000)


def torchvision_state(arch: str = "resnet18", seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with torchvision's ResNet key names and shapes (``torchvision/models/resnet.py``):
    conv1 [64, 3, 7, 7], bn1, layer1-4 of basic blocks, downsample at layer2-4 block 0, fc 1000 classes."""
    g = torch.Generator().manual_seed(seed)
    state = {"conv1.weight": _conv(g, 64, 3, 7, 7)}
    _bn(state, "bn1", 64, g)
    in_ch = 64
    for layer, (blocks, ch) in enumerate(zip(TORCHVISION_DEPTHS[arch], WIDTHS), start=1):
        for j in range(blocks):
            cin = in_ch if j == 0 else ch
            state[f"layer{layer}.{j}.conv1.weight"] = _conv(g, ch, cin, 3, 3)
            _bn(state, f"layer{layer}.{j}.bn1", ch, g)
            state[f"layer{layer}.{j}.conv2.weight"] = _conv(g, ch, ch, 3, 3)
            _bn(state, f"layer{layer}.{j}.bn2", ch, g)
            if j == 0 and layer > 1:
                state[f"layer{layer}.0.downsample.0.weight"] = _conv(g, ch, cin, 1, 1)
                _bn(state, f"layer{layer}.0.downsample.1", ch, g)
        in_ch = ch
    state["fc.weight"] = 0.01 * torch.randn(1000, 512, generator=g)
    state["fc.bias"] = torch.zeros(1000)
    return state


def medicalnet_file(depth: int = 10, seed: int = 0) -> dict:
    """What MedicalNet's ``resnet_<depth>.pth`` holds (``models/resnet.py`` saved through
    ``nn.DataParallel``): ``{"state_dict": {"module.conv1.weight": [64, 1, 7, 7, 7], ...}}``, the
    type-B shortcut's ``downsample`` for ResNet-10 only, no batch-norm counters (PyTorch 0.4)."""
    g = torch.Generator().manual_seed(seed)
    state = {"conv1.weight": _conv(g, 64, 1, 7, 7, 7)}
    _bn(state, "bn1", 64, g, counter=False)
    in_ch = 64
    for layer, (blocks, ch) in enumerate(zip(MEDICALNET_DEPTHS[depth], WIDTHS), start=1):
        for j in range(blocks):
            cin = in_ch if j == 0 else ch
            state[f"layer{layer}.{j}.conv1.weight"] = _conv(g, ch, cin, 3, 3, 3)
            _bn(state, f"layer{layer}.{j}.bn1", ch, g, counter=False)
            state[f"layer{layer}.{j}.conv2.weight"] = _conv(g, ch, ch, 3, 3, 3)
            _bn(state, f"layer{layer}.{j}.bn2", ch, g, counter=False)
            if j == 0 and cin != ch and MEDICALNET_SHORTCUT[depth] == "B":
                state[f"layer{layer}.0.downsample.0.weight"] = _conv(g, ch, cin, 1, 1, 1)
                _bn(state, f"layer{layer}.0.downsample.1", ch, g, counter=False)
        in_ch = ch
    return {"state_dict": {f"module.{k}": v for k, v in state.items()}}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    paths = {"resnet18": folder / "resnet18-f37072fd.pth", "resnet34": folder / "resnet34-b627a593.pth",
             10: folder / "resnet_10.pth", 18: folder / "resnet_18.pth"}
    for arch in TORCHVISION_DEPTHS:
        torch.save(torchvision_state(arch), paths[arch])
    for depth in (10, 18):
        torch.save(medicalnet_file(depth), paths[depth])
    return paths


FULL = EncoderConfig(width=1.0)


class Payload:
    """An arbitrary object: unpickling it could run code, so weights-only loading refuses it."""


# ------------------------------------------------------------------------------------------------
# The pure adaptations


def test_rgb_sum_keeps_the_response_to_a_grey_image():
    w = torch.randn(64, 3, 7, 7, dtype=torch.float64)
    one = adapt_input_channels(w, 1)
    assert torch.equal(one, w.sum(1, keepdim=True))
    grey = torch.rand(2, 1, 20, 20, dtype=torch.float64)
    as_rgb = torch.nn.functional.conv2d(grey.expand(-1, 3, -1, -1), w)
    torch.testing.assert_close(torch.nn.functional.conv2d(grey, one), as_rgb)
    four = adapt_input_channels(w, 4)  # stacked B-scans: the same image in each channel gives the same response
    torch.testing.assert_close(torch.nn.functional.conv2d(grey.expand(-1, 4, -1, -1), four), as_rgb)
    assert adapt_input_channels(w, 3) is w


def test_depth_folding_bins_taps_by_position_and_keeps_the_sum():
    assert depth_bins(7, 3) == [0, 0, 1, 1, 1, 2, 2]
    assert depth_bins(7, 7) == list(range(7)) and depth_bins(7, 1) == [0] * 7
    w = torch.randn(8, 1, 7, 7, 7)
    folded = fold_kernel_depth(w, 3)
    torch.testing.assert_close(folded[:, :, 0], w[:, :, 0] + w[:, :, 1])
    torch.testing.assert_close(folded[:, :, 1], w[:, :, 2] + w[:, :, 3] + w[:, :, 4])
    torch.testing.assert_close(folded.sum(2), w.sum(2))


def test_type_a_shortcut_as_a_convolution_is_subsampling_and_zero_padding():
    parts = type_a_shortcut((8, 3, 1, 1, 1), eps=1e-5)
    conv = torch.nn.Conv3d(3, 8, 1, stride=2, bias=False)
    bn = torch.nn.BatchNorm3d(8).eval()
    conv.weight.data.copy_(parts["0.weight"])
    bn.load_state_dict({k[2:]: v for k, v in parts.items() if k.startswith("1.")}, strict=False)
    x = torch.randn(2, 3, 4, 6, 6)
    expected = torch.cat([x[:, :, ::2, ::2, ::2], torch.zeros(2, 5, 2, 3, 3)], dim=1)  # MedicalNet's type A
    torch.testing.assert_close(bn(conv(x)), expected, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# torchvision into the 2-D ResNets


def test_torchvision_weights_land_where_they_should(files):
    state = read_state_dict(files["resnet18"])
    encoder = SharedBscanEncoder(FULL)  # one B-scan channel
    notes = load_into(encoder, state)
    ours = encoder.backbone.state_dict()
    torch.testing.assert_close(ours["stem.0.weight"], state["conv1.weight"].sum(1, keepdim=True))
    assert notes == ["conv1 summed over RGB for 1 input channel"]
    for theirs, mine in (("bn1.running_var", "stem.1.running_var"), ("layer1.0.conv1.weight", "stages.0.0.conv1.weight"),
                         ("layer3.1.conv2.weight", "stages.2.1.conv2.weight"), ("layer4.1.bn2.bias", "stages.3.1.bn2.bias"),
                         ("layer2.0.downsample.0.weight", "stages.1.0.shortcut.0.weight"),
                         ("layer4.0.downsample.1.running_mean", "stages.3.0.shortcut.1.running_mean")):
        assert torch.equal(ours[mine], state[theirs]), (theirs, mine)
    assert not any("fc" in k for k in ours)
    colour = ImageEncoder(3, FULL)  # a colour fundus: conv1 as is
    assert load_into(colour, state) == []
    assert torch.equal(colour.backbone.state_dict()["stem.0.weight"], state["conv1.weight"])
    stacked = StackedBscanEncoder(4, FULL)
    load_into(stacked, state)
    torch.testing.assert_close(stacked.backbone.state_dict()["stem.0.weight"],
                               (state["conv1.weight"].sum(1, keepdim=True) / 4).repeat(1, 4, 1, 1))


def test_resnet34_file_into_resnet34(files):
    encoder = ImageEncoder(3, EncoderConfig(width=1.0, arch="resnet34"))
    state = read_state_dict(files["resnet34"])
    load_into(encoder, state)
    assert torch.equal(encoder.backbone.state_dict()["stages.2.5.conv2.weight"], state["layer3.5.conv2.weight"])


# ------------------------------------------------------------------------------------------------
# MedicalNet into the 3-D encoders


def test_medicalnet_resnet10_into_the_3d_encoder(files):
    saved = torch.load(files[10], weights_only=True)
    assert all(k.startswith("module.") for k in saved["state_dict"])  # as MedicalNet's files are
    state = read_state_dict(files[10])
    encoder = VolumeEncoder(FULL)
    notes = load_into(encoder, state)
    ours = encoder.backbone.state_dict()
    assert ours["stem.0.weight"].shape == (64, 1, 3, 7, 7)
    torch.testing.assert_close(ours["stem.0.weight"], fold_kernel_depth(state["conv1.weight"], 3))
    assert notes == ["conv1 depth 7 folded to 3 ([0, 0, 1, 1, 1, 2, 2])"]
    for theirs, mine in (("bn1.weight", "stem.1.weight"), ("layer1.0.conv2.weight", "stages.0.conv2.weight"),
                         ("layer4.0.downsample.0.weight", "stages.3.shortcut.0.weight"),
                         ("layer3.0.bn1.running_var", "stages.2.bn1.running_var")):
        assert torch.equal(ours[mine], state[theirs]), (theirs, mine)


@pytest.mark.slow
def test_medicalnet_resnet18_type_a_into_sf3d_computes_medicalnets_function(files):
    from monai.networks.nets import ResNet

    from remd_core.models.oct3d import SF3DEncoder

    state = read_state_dict(files[18])
    assert not any("downsample" in k for k in state)
    encoder = SF3DEncoder(width=1.0)
    notes = load_into(encoder, state)
    assert notes == [f"layer{i}.0.downsample: type-A shortcut as an identity convolution" for i in (2, 3, 4)]
    assert torch.equal(encoder.backbone.state_dict()["layer3.1.conv1.weight"], state["layer3.1.conv1.weight"])
    # MONAI's ResNet-18 with MedicalNet's own type-A shortcut, loaded strictly with the same file
    reference = ResNet("basic", [2, 2, 2, 2], list(WIDTHS), spatial_dims=3, n_input_channels=1, conv1_t_size=7,
                       conv1_t_stride=2, shortcut_type="A", feed_forward=False)
    reference.load_state_dict(state, strict=True)
    x = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(encoder.eval()(x), reference.eval()(x.unsqueeze(1)), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Refusals


def test_a_wrong_file_is_refused_naming_every_bad_key(files, tmp_path):
    state = torchvision_state()
    del state["layer2.0.bn1.running_mean"], state["layer4.1.conv1.weight"]          # missing
    state["layer5.0.conv1.weight"] = torch.zeros(512, 512, 3, 3)                     # unexpected
    state["extra.scale"] = torch.ones(1)                                             # unexpected
    state["layer3.1.conv2.weight"] = torch.zeros(256, 256, 5, 5)                     # mis-shaped
    state["layer1.0.bn2.weight"] = torch.zeros(32)                                   # mis-shaped
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    before = {k: v.clone() for k, v in ImageEncoder(3, FULL).state_dict().items()}
    encoder = ImageEncoder(3, FULL)
    encoder.load_state_dict(before)
    with pytest.raises(ValueError) as err:
        load_into(encoder, read_state_dict(path), where="fundus encoder (broken.pth)")
    text = str(err.value)
    for name in ("2 unexpected", "layer5.0.conv1.weight", "extra.scale",
                 "2 missing", "stages.1.0.bn1.running_mean", "stages.3.1.conv1.weight",
                 "2 mis-shaped", "stages.2.1.conv2.weight [256, 256, 5, 5] (ours [256, 256, 3, 3])",
                 "stages.0.0.bn2.weight [32] (ours [64])", "fundus encoder (broken.pth)"):
        assert name in text, name
    assert all(torch.equal(encoder.state_dict()[k], before[k]) for k in before)  # nothing loaded


def test_refusals_width_stem_kind_and_pickles(files, tmp_path):
    with pytest.raises(ValueError, match=r"need width=1\.0.*got width=0\.25"):
        EncoderConfig(weights=str(files["resnet18"]))
    dataset = load("synthetic-stage2", **SMALL)
    small_stem = TrainConfig(encoder=EncoderConfig(width=1.0, stem="small", weights=str(files["resnet18"])))
    with pytest.raises(ValueError, match="7x7 ImageNet stem; set stem=imagenet"):
        build_model(dataset, small_stem)
    wrong_kind = TrainConfig(encoder=EncoderConfig(width=1.0, oct_encoder="3d", weights=str(files["resnet18"])))
    with pytest.raises(ValueError, match=r"oct encoder .*holds a 2-D \(torchvision\) ResNet .*one file per modality"):
        build_model(dataset, wrong_kind)
    egvfi = TrainConfig(encoder=EncoderConfig(width=1.0, oct_encoder="egvfi", weights={"oct": str(files[10])}))
    with pytest.raises(ValueError, match="EGVFIEncoder has no published pretrained layout"):
        build_model(dataset, egvfi)
    with pytest.raises(ValueError, match=r"weights names \['fundsu'\], but the data's modalities are \['fundus', 'oct'\]"):
        build_model(dataset, TrainConfig(encoder=EncoderConfig(width=1.0, weights={"fundsu": str(files["resnet18"])})))
    # a unimodal model skips the other modality's file
    oct_only = build_model(dataset, TrainConfig(modalities=("oct",), encoder=EncoderConfig(
        width=1.0, weights={"fundus": str(files["resnet18"]), "oct": str(files["resnet18"])})))
    assert list(oct_only.encoders) == ["oct"]
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        read_state_dict(tmp_path / "absent.pth")
    pickled = tmp_path / "pickled.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "extra": Payload()}, pickled)  # a pickled object
    with pytest.raises(UntrustedFileError, match="weights-only loading refuses"):
        read_state_dict(pickled)


def test_weights_from_the_command_line_syntax():
    assert parse_settings(EncoderConfig, ["weights=/w/resnet18.pth"]) == {"weights": "/w/resnet18.pth"}
    assert parse_settings(EncoderConfig, ["weights={fundus: a.pth, oct: b.pth}"]) == {
        "weights": {"fundus": "a.pth", "oct": "b.pth"}}
    assert parse_settings(EncoderConfig, ["weights=none"]) == {"weights": None}


# ------------------------------------------------------------------------------------------------
# In model building and training


def test_build_model_loads_the_file_and_stage1_encoders_win(files, tmp_path):
    dataset = load("synthetic-stage2", **SMALL)
    config = TrainConfig(encoder=EncoderConfig(width=1.0, weights=str(files["resnet18"])), precision="float64")
    model = build_model(dataset, config)
    conv1 = read_state_dict(files["resnet18"])["conv1.weight"]
    assert torch.equal(model.encoders["fundus"].backbone.stem[0].weight, conv1.double())  # 3-channel fundus
    torch.testing.assert_close(model.encoders["oct"].backbone.stem[0].weight, conv1.double().sum(1, keepdim=True))
    # a stage-1 encoder (init_encoders) is loaded after the pretrained file and replaces it
    torch.manual_seed(1)
    other = build_model(dataset, TrainConfig(encoder=EncoderConfig(width=1.0), precision="float64"))
    paths = save_encoders(other, tmp_path / "stage1")
    both = build_model(dataset, TrainConfig(encoder=EncoderConfig(width=1.0, weights=str(files["resnet18"])),
                                            init_encoders={"oct": paths["oct"]}, precision="float64"))
    assert torch.equal(both.encoders["oct"].backbone.stem[0].weight, other.encoders["oct"].backbone.stem[0].weight)
    assert torch.equal(both.encoders["fundus"].backbone.stem[0].weight, conv1.double())


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["torchvision", "medicalnet"])
def test_a_fit_starting_from_each_layout_trains(files, weights):
    dataset = load("synthetic-stage2", **SMALL)
    encoder = (EncoderConfig(width=1.0, weights=str(files["resnet18"])) if weights == "torchvision" else
               EncoderConfig(width=1.0, oct_encoder="3d", weights={"fundus": str(files["resnet18"]), "oct": str(files[10])}))
    config = TrainConfig(epochs=1, batch_size=8, encoder=encoder, precision="float32", augment=False, lr=1e-4)
    start = build_model(dataset, config)
    result = fit(dataset, config, progress=False)
    losses = result.history["loss_fused"].to_numpy()
    assert len(losses) == len(dataset.train) // 8 and np.isfinite(losses).all()
    assert np.isfinite(result.metrics["test"]["mse"])
    trained = result.model.encoders["oct"].backbone.stem[0].weight.detach()
    initial = start.encoders["oct"].backbone.stem[0].weight.detach()
    assert not torch.equal(trained, initial)                       # it trained from there ...
    assert (trained - initial).abs().max() < 0.05                  # ... a few small steps away
