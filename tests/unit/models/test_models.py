import pytest
import torch

from remd_core.data.format import DatasetSpec, ModalitySpec
from remd_core.models import EncoderConfig, MultimodalRegressor, ResNet2d
from remd_core.models.encoders import SharedBscanEncoder
from remd_core.models.resnet import BasicBlock

SPEC = DatasetSpec("toy", (ModalitySpec("fundus", "image", (3, 32, 32)), ModalitySpec("oct", "volume", (4, 32, 32)),
                           ModalitySpec("plan", "vector", (5,))))


@pytest.mark.parametrize("arch,blocks", [("resnet18", 8), ("resnet34", 16)])
def test_resnet_depth_and_width(arch, blocks):
    net = ResNet2d(arch, in_channels=3, width=0.25)
    assert sum(isinstance(m, BasicBlock) for m in net.modules()) == blocks
    assert net.out_features == 128
    assert ResNet2d(arch, in_channels=3, width=1.0).out_features == 512


@pytest.mark.parametrize("channels", [1, 3, 32])
@pytest.mark.parametrize("stem", ["imagenet", "small"])
def test_resnet_accepts_any_number_of_input_channels(channels, stem):
    net = ResNet2d("resnet18", in_channels=channels, width=0.125, stem=stem)
    assert net(torch.randn(2, channels, 32, 32)).shape == (2, net.out_features)


def test_resnet_rejects_unknown_settings():
    with pytest.raises(ValueError, match="unknown backbone"):
        ResNet2d("resnet50")
    with pytest.raises(ValueError, match="stem"):
        ResNet2d(stem="tiny")


def test_shared_bscan_encoder_equals_the_mean_of_per_scan_features():
    enc = SharedBscanEncoder(EncoderConfig(width=0.125)).eval()
    x = torch.randn(2, 4, 32, 32)
    per_scan = torch.stack([enc.backbone(x[:, s:s + 1]) for s in range(4)], 1)
    torch.testing.assert_close(enc(x), per_scan.mean(1))
    torch.testing.assert_close(enc(x[:, torch.tensor([2, 0, 3, 1])]), enc(x), rtol=1e-5, atol=1e-5)


def test_regressor_returns_every_prediction_and_feature_and_all_receive_gradients():
    model = MultimodalRegressor(SPEC, encoder=EncoderConfig(width=0.125, mlp_hidden=8))
    inputs = {"fundus": torch.randn(3, 3, 32, 32), "oct": torch.randn(3, 4, 32, 32), "plan": torch.randn(3, 5)}
    out = model(inputs)
    assert out["fused"].shape == (3,)
    assert set(out["unimodal"]) == set(out["features"]) == {"fundus", "oct", "plan"}
    assert out["features"]["plan"].shape == (3, 8)
    assert out["projections"]["oct"].shape == (3, 128)
    loss = out["fused"].sum() + sum(p.sum() for p in out["unimodal"].values())
    loss = loss + sum(z.sum() for z in out["projections"].values())
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    shared = {id(p) for p in model.encoder_parameters()}
    assert shared.isdisjoint(id(p) for p in model.head_parameters())
    assert len(shared) + len(model.head_parameters()) == len(list(model.parameters()))


def test_fusion_contributions_add_up_to_the_fused_prediction():
    model = MultimodalRegressor(SPEC, encoder=EncoderConfig(width=0.125, mlp_hidden=8)).eval()
    inputs = {"fundus": torch.randn(3, 3, 32, 32), "oct": torch.randn(3, 4, 32, 32), "plan": torch.randn(3, 5)}
    out = model(inputs)
    parts = model.fusion_contributions(out["features"])
    torch.testing.assert_close(sum(parts.values()), out["fused"])
    w = model.fusion_head.weight[0, -8:]
    torch.testing.assert_close(parts["plan"], out["features"]["plan"] @ w + model.fusion_head.bias[0] / 3)


def test_single_modality_model_is_the_same_class():
    model = MultimodalRegressor(SPEC, modalities=("oct",), encoder=EncoderConfig(width=0.125))
    out = model({"oct": torch.randn(2, 4, 32, 32)})
    assert list(out["unimodal"]) == ["oct"]
    assert model.fusion_head.in_features == model.encoders["oct"].out_features
    with pytest.raises(KeyError, match="no modality"):
        MultimodalRegressor(SPEC, modalities=("slo",))


@pytest.mark.parametrize("kind", ["shared2d", "channels", "3d"])
def test_every_oct_encoder_maps_a_volume_to_features(kind):
    from remd_core.models.encoders import StackedBscanEncoder, VolumeEncoder

    model = MultimodalRegressor(SPEC, modalities=("oct",), encoder=EncoderConfig(width=0.125, oct_encoder=kind))
    expected = {"shared2d": SharedBscanEncoder, "channels": StackedBscanEncoder, "3d": VolumeEncoder}[kind]
    assert isinstance(model.encoders["oct"], expected)
    out = model({"oct": torch.randn(2, 4, 32, 32)})
    assert out["features"]["oct"].shape == (2, model.encoders["oct"].out_features)
    if kind == "channels":
        assert model.encoders["oct"].backbone.stem[0].in_channels == 4


def test_unknown_oct_encoder_is_rejected():
    with pytest.raises(ValueError, match="oct_encoder"):
        EncoderConfig(oct_encoder="4d")
