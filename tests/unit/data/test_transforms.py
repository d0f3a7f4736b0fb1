import pytest
import torch

from remd_core.data.transforms import (IMAGE_MEAN, IMAGE_STD, drop_modalities, normalize, prepare_inputs, random_intensity,
                                  random_translate)


def test_translate_moves_a_single_bright_pixel_by_at_most_the_shift():
    x = torch.zeros(8, 1, 16, 16)
    x[:, 0, 8, 8] = 1.0
    out = random_translate(x, 3, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    positions = [divmod(int(img.flatten().argmax()), 16) for img in out[:, 0]]
    assert all(abs(r - 8) <= 3 and abs(c - 8) <= 3 for r, c in positions)
    assert len(set(positions)) > 1
    assert torch.equal(random_translate(x, 0), x)


def test_intensity_jitter_stays_in_range_and_is_reproducible():
    x = torch.rand(4, 3, 8, 8)
    a = random_intensity(x, 0.1, 0.2, torch.Generator().manual_seed(1))
    b = random_intensity(x, 0.1, 0.2, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a, x)


def test_prepare_inputs_normalises_images_and_passes_vectors():
    batch = {"fundus": torch.full((2, 3, 8, 8), 0.5), "plan": torch.ones(2, 4)}
    out = prepare_inputs(batch, ("fundus", "plan"), {"fundus": "image", "plan": "vector"}, augment=False)
    torch.testing.assert_close(out["fundus"], torch.full((2, 3, 8, 8), (0.5 - IMAGE_MEAN) / IMAGE_STD))
    assert torch.equal(out["plan"], batch["plan"])
    assert torch.equal(normalize(torch.tensor([IMAGE_MEAN])), torch.tensor([0.0]))


def test_an_absent_modality_reaches_the_model_as_zeros_and_a_present_one_unchanged():
    g = torch.Generator().manual_seed(0)
    batch = {"fundus": torch.rand(3, 3, 8, 8, generator=g), "plan": torch.rand(3, 2, generator=g),
             "present": torch.tensor([[True, True], [False, True], [True, False]])}
    kinds = {"fundus": "image", "plan": "vector"}
    masked = prepare_inputs(batch, ("plan", "fundus"), kinds, augment=True, generator=torch.Generator().manual_seed(1))
    plain = prepare_inputs({k: v for k, v in batch.items() if k != "present"}, ("plan", "fundus"), kinds,
                           augment=True, generator=torch.Generator().manual_seed(1))
    assert masked["present"].tolist() == [[True, True], [True, False], [False, True]]  # in the model's order
    assert (masked["fundus"][1] == 0).all() and (masked["plan"][2] == 0).all()
    assert torch.equal(masked["fundus"][[0, 2]], plain["fundus"][[0, 2]])
    assert torch.equal(masked["plan"][:2], plain["plan"][:2])


def test_modality_dropout_drops_at_its_rate_never_revives_and_never_empties_a_sample():
    present = torch.ones(20000, 2, dtype=torch.bool)
    present[:5000, 1] = False
    out = drop_modalities(present, 0.3, torch.Generator().manual_seed(0))
    assert not (out & ~present).any() and out.any(dim=1).all()
    # both present: each dropped at 0.3 unless both are (p = 0.09, then both kept)
    both = out[5000:]
    share = 1 - both.float().mean().item()
    expected = 0.3 - 0.09  # P(dropped) = 0.3 minus the draws where both were dropped and kept instead
    assert abs(share - expected) < 5 * (expected * (1 - expected) / both.numel()) ** 0.5
    assert out[:5000, 0].all()  # a single present modality is never dropped
    assert torch.equal(out, drop_modalities(present, 0.3, torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="rate"):
        drop_modalities(present, 1.0)
