"""The GPU path, exercised on CPU where torch allows it: bf16 autocast, channels-last memory format,
the device-side augmentation and the copy to the device; and the float64 path that keeps the
smoke profile's checked outputs the same on every processor. The CUDA-only parts (pinned memory:
``pin_memory`` needs an accelerator) run in the ``gpu``-marked test."""

from dataclasses import replace

import pytest
import torch

from remd_core.data import load
from remd_core.models import EncoderConfig
from remd_core.training import TrainConfig, autocast_context, fit
from remd_core.data.transforms import prepare_inputs, to_device

SMALL = dict(n_eyes=80, image_size=32, oct_size=32, n_bscans=2, test=20, val=12, cache=False)
BASE = TrainConfig(epochs=1, batch_size=8, encoder=EncoderConfig(width=0.125), strategy="sgm")


@pytest.fixture(scope="module")
def dataset():
    return load("synthetic-stage2", **SMALL)


def test_bf16_autocast_runs_on_cpu_with_float32_weights(dataset):
    with autocast_context("bf16", torch.device("cpu")):
        assert torch.nn.Linear(3, 2)(torch.ones(1, 3)).dtype == torch.bfloat16
    with autocast_context("auto", torch.device("cpu")):  # auto: bf16 on CUDA only
        assert torch.nn.Linear(3, 2)(torch.ones(1, 3)).dtype == torch.float32
    bf16 = fit(dataset, replace(BASE, precision="bf16"), progress=False)
    fp32 = fit(dataset, replace(BASE, precision="float32"), progress=False)
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())
    assert bf16.history["loss_fused"].notna().all() and bf16.history["gamma"].notna().all()
    # same weights and batch at the first step: the losses agree to bf16's precision (8 mantissa bits
    # a value, through 18 layers; measured 4 % apart here), and differ, so bf16 really ran
    first_bf16, first_fp32 = bf16.history["loss_fused"].iloc[0], fp32.history["loss_fused"].iloc[0]
    assert first_bf16 == pytest.approx(first_fp32, rel=0.15) and first_bf16 != first_fp32


def test_channels_last_on_cpu_trains_the_same_model_up_to_summation_order(dataset):
    """Another memory layout runs other convolution kernels, which sum in another order: in float64
    the weights after 6 SGM steps differ by about 1e-7 relative (measured) and the test MSE by about
    1e-11; a layout bug would differ at order 1."""
    config = replace(BASE, precision="float64")
    last = fit(dataset, replace(config, channels_last=True), progress=False)
    plain = fit(dataset, replace(config, channels_last=False), progress=False)
    conv = last.model.encoders["fundus"].backbone.stem[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    for (name, a), b in zip(last.model.state_dict().items(), plain.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8, msg=name)
    assert last.metrics["test"]["mse"] == pytest.approx(plain.metrics["test"]["mse"], rel=1e-8)


def test_float64_trains_float64_weights_and_reports_float64_predictions(dataset):
    result = fit(dataset, replace(BASE, precision="float64"), progress=False)
    assert all(p.dtype == torch.float64 for p in result.model.parameters())
    assert result.predictions["test"].dtype.name == "float64"
    with pytest.raises(ValueError, match="float64"):
        fit(dataset, replace(BASE, precision="float64", device="meta"), progress=False)
    with pytest.raises(ValueError, match="precision must be one of"):
        replace(BASE, precision="fp16")


def test_augmentation_draws_do_not_depend_on_the_tensor_layout_or_device_copy():
    """prepare_inputs moves a batch to the device first and augments it there, drawing from the
    host generator: the same seed gives the same images and leaves the generator in the same state
    whatever the memory layout (channels-last on the device) of the batch."""
    x = torch.rand(4, 3, 16, 16)
    kinds = {"fundus": "image"}
    a_gen, b_gen = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = prepare_inputs({"fundus": x}, ("fundus",), kinds, True, a_gen, "cpu")["fundus"]
    b = prepare_inputs({"fundus": x.to(memory_format=torch.channels_last)}, ("fundus",), kinds, True, b_gen,
                       "cpu")["fundus"]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert torch.equal(a_gen.get_state(), b_gen.get_state())
    assert to_device(x, "cpu") is x  # no copy and no pinning on the host


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path_trains_with_bf16_channels_last_and_pinned_copies_and_resumes(dataset, tmp_path):
    x = torch.rand(2, 3, 8, 8)
    moved = to_device(x, "cuda")
    assert moved.device.type == "cuda" and torch.equal(moved.cpu(), x)
    config = replace(BASE, epochs=2, device="cuda")
    first = fit(dataset, config, progress=False, checkpoint_dir=tmp_path, checkpoint_every=2)
    conv = first.model.encoders["fundus"].backbone.stem[0].weight
    assert conv.device.type == "cuda" and conv.is_contiguous(memory_format=torch.channels_last)
    assert first.history["loss_fused"].notna().all()
    again = fit(dataset, config, progress=False, checkpoint_dir=tmp_path, resume=True)
    assert again.best_epoch == first.best_epoch
