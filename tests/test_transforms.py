import torch

from remd_core.transforms import IMAGE_MEAN, IMAGE_STD, normalize, prepare_inputs, random_intensity, random_translate


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
