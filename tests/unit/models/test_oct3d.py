"""The 3-D OCT encoders built for MD prediction (remd_core.models.oct3d): EGVFI (Yu et al. 2021,
from its official code) and SF3D (our stand-in for Koyama et al. 2025; layout chosen, see the
module docstring)."""

import math

import numpy as np
import pytest
import torch

from remd_core.data.format import DatasetSpec, ModalitySpec
from remd_core.models import EncoderConfig, MultimodalRegressor, build_encoder
from remd_core.models.oct3d import EGVFIEncoder, SF3DEncoder, published_input_size, scaled_channels

ENCODERS = {"egvfi": EGVFIEncoder, "sf3d": SF3DEncoder}


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def conv(cin, cout, k, bias):
    return k ** 3 * cin * cout + (cout if bias else 0)


def bn(c):
    return 2 * c  # weight and bias; running statistics are buffers


def egvfi_count(c):
    """EGVFI's layer list (official config): five 3-D convolutions of c filters with bias, kernels
    7, 5, 5, 3, 3, each followed by batch norm; input one channel."""
    layers = [(1, 7), (c, 5), (c, 5), (c, 3), (c, 3)]
    return sum(conv(cin, c, k, bias=True) + bn(c) for cin, k in layers)


def test_egvfi_parameter_count_at_full_width_is_the_official_layer_list():
    # by hand: 7^3*1*32+32+64 = 11072; 5^3*32*32+32+64 = 128096 (twice); 3^3*32*32+32+64 = 27744 (twice)
    assert egvfi_count(32) == 11072 + 2 * 128096 + 2 * 27744 == 322752
    enc = EGVFIEncoder(width=1.0)
    assert n_params(enc) == 322752
    assert enc.out_features == 32
    convs = [m for m in enc.modules() if isinstance(m, torch.nn.Conv3d)]
    assert [m.kernel_size[0] for m in convs] == [7, 5, 5, 3, 3]
    assert [m.stride[0] for m in convs] == [2, 1, 1, 1, 1]
    assert [m.padding[0] for m in convs] == [3, 2, 2, 1, 1]
    assert sum(isinstance(m, torch.nn.Dropout3d) and m.p == 0.2 for m in enc.modules()) == 5
    with torch.no_grad():  # the full model on its published cube (64 B-scans x 128 x 64): well under a second
        assert enc.eval()(torch.randn(1, *published_input_size("egvfi"))).shape == (1, 32)


def test_sf3d_parameter_count_at_full_width_is_a_3d_resnet18():
    # stem 7^3 conv 1->64 + BN; stages of 2 basic blocks (two 3^3 convs + BN each, no conv bias);
    # the first block of stages 2-4 has a 1^3 stride-2 shortcut conv (no bias) + BN
    stem = conv(1, 64, 7, False) + bn(64)                                            # 22,080
    stages, cin = 0, 64
    for c in (64, 128, 256, 512):
        first = conv(cin, c, 3, False) + bn(c) + conv(c, c, 3, False) + bn(c)
        if cin != c:
            first += conv(cin, c, 1, False) + bn(c)
        second = 2 * (conv(c, c, 3, False) + bn(c))
        stages += first + second
        cin = c
    assert stages == 442_880 + 1_557_760 + 6_228_480 + 24_908_800
    assert stem + stages == 33_160_000
    enc = SF3DEncoder(width=1.0)
    assert n_params(enc) == 33_160_000
    assert enc.out_features == 512
    with torch.no_grad():  # no published size: EGVFI's cube stands in for the full-width forward
        assert enc.eval()(torch.randn(1, 64, 128, 64)).shape == (1, 512)


def test_parameter_counts_scale_with_width():
    for name, cls in ENCODERS.items():
        counts = [n_params(cls(width=w)) for w in (0.25, 0.5, 1.0)]
        assert counts[0] < counts[1] < counts[2], name
        assert [cls(width=w).out_features for w in (0.25, 0.5, 1.0)] == (
            [8, 16, 32] if name == "egvfi" else [128, 256, 512])
    # EGVFI: every width follows the layer list with c = round(32 * width) (at least 8) filters
    for w in (0.25, 0.5, 1.0, 2.0):
        assert n_params(EGVFIEncoder(width=w)) == egvfi_count(scaled_channels(32, w))
    # convolution weights dominate: doubling the width roughly quadruples the count
    ratio = n_params(SF3DEncoder(width=1.0)) / n_params(SF3DEncoder(width=0.5))
    assert 3.9 < ratio < 4.1
    with pytest.raises(ValueError, match="width"):
        EGVFIEncoder(width=0)


def test_published_input_sizes():
    assert published_input_size("egvfi") == (64, 128, 64)
    assert published_input_size("sf3d") is None  # the paper could not be read here: not invented
    with pytest.raises(ValueError, match="unknown"):
        published_input_size("rnflnet")


# (S, H, W): EGVFI's published cube; the gpu profile (32 B-scans, 224 px); the cpu profile (8 x 64);
# the smoke profile (2 x 32); a single B-scan
SIZES = [(64, 128, 64), (32, 224, 224), (8, 64, 64), (2, 32, 32), (1, 16, 16)]


@pytest.mark.parametrize("name", sorted(ENCODERS))
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_output_shape_for_every_input_size_including_small_depth(name, size):
    torch.manual_seed(0)
    enc = ENCODERS[name](width=0.125).eval()
    batch = 1 if size[1] > 64 else 3
    with torch.no_grad():
        out = enc(torch.randn(batch, *size))
    assert out.shape == (batch, enc.out_features)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    enc = EGVFIEncoder(width=0.25, dropout=0.0) if name == "egvfi" else SF3DEncoder(width=0.25)
    enc.train()
    out = enc(torch.randn(4, 8, 32, 32))
    (out ** 2).sum().backward()  # squared: under train-mode batch norm a plain sum can have zero gradient
    for pname, p in enc.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def test_inputs_must_be_bscan_stacks_and_settings_are_checked():
    with pytest.raises(ValueError, match=r"\[B, S, H, W\]"):
        EGVFIEncoder(width=0.125)(torch.randn(2, 1, 4, 16, 16))
    with pytest.raises(ValueError, match="depth"):
        SF3DEncoder(depth=20)
    with pytest.raises(ValueError, match="one entry per layer"):
        EGVFIEncoder(filters=(32, 32), kernels=(7,), strides=(2,))
    with pytest.raises(ValueError, match="dropout"):
        EGVFIEncoder(dropout=1.0)


def test_sf3d_layout_parameters_change_the_model():
    assert n_params(SF3DEncoder(width=0.25, depth=34)) > n_params(SF3DEncoder(width=0.25, depth=18))
    assert SF3DEncoder(width=0.25, depth=50).out_features == 4 * 128
    keep_depth = SF3DEncoder(width=0.125, stem_kernel=(3, 7, 7), stem_stride=(1, 2, 2), max_pool=False)
    stem = keep_depth.backbone.conv1
    assert stem.kernel_size == (3, 7, 7) and stem.stride == (1, 2, 2)
    assert keep_depth(torch.randn(2, 2, 32, 32)).shape == (2, 64)


def test_egvfi_starts_from_keras_initialisation():
    torch.manual_seed(0)
    enc = EGVFIEncoder(width=1.0)
    first = next(m for m in enc.modules() if isinstance(m, torch.nn.Conv3d))
    assert torch.all(first.bias == 0)
    bound = math.sqrt(6.0 / (7 ** 3 * 1 + 7 ** 3 * 32))  # Glorot uniform: fan_in + fan_out
    assert first.weight.abs().max() <= bound
    assert first.weight.abs().max() > 0.9 * bound


SPEC = DatasetSpec("toy", (ModalitySpec("fundus", "image", (3, 32, 32)), ModalitySpec("oct", "volume", (2, 32, 32))))


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_build_encoder_picks_them_from_the_config(name):
    config = EncoderConfig(oct_encoder=name, width=0.25)
    assert isinstance(build_encoder(SPEC.modality("oct"), config), ENCODERS[name])
    assert not isinstance(build_encoder(SPEC.modality("fundus"), config), ENCODERS[name])  # OCT only
    model = MultimodalRegressor(SPEC, modalities=("oct",), encoder=config)
    out = model({"oct": torch.randn(3, 2, 32, 32)})
    assert out["features"]["oct"].shape == (3, ENCODERS[name](width=0.25).out_features)
    assert out["fused"].shape == (3,)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_a_tiny_training_run_finishes_with_finite_metrics(name):
    from remd_core.data import load
    from remd_core.training import TrainConfig, fit

    dataset = load("synthetic-stage2", n_eyes=80, image_size=32, oct_size=32, n_bscans=2, test=20, val=12,
                   cache=False)
    config = TrainConfig(modalities=("oct",), epochs=1, batch_size=8,
                         encoder=EncoderConfig(oct_encoder=name, width=0.125))
    result = fit(dataset, config, progress=False)
    assert isinstance(result.model.encoders["oct"], ENCODERS[name])
    for split in ("val", "test"):
        for key in ("r2", "mae"):
            assert np.isfinite(result.metrics[split][key]), (split, key)
    assert np.isfinite(result.predictions["test"]).all()
    assert len(result.predictions["test"]) == 20
