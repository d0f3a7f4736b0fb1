import matplotlib
import numpy as np
import pytest
import torch

from remd_core.optim import modulation_gamma
from remd_core.widgets import gamma_view, margin_view, replay_gamma, show_gamma_widget, show_margin_widget

matplotlib.use("Agg")


def test_margin_view_gives_the_schedule_value_and_the_strict_positive_pairs():
    y = [0.0, 0.3, 0.5, 2.0]
    fig, margin, mask = margin_view(y, m0=0.4, beta=0.01, t_n=10, step=110, total_steps=200)
    assert margin == pytest.approx(0.4 * np.exp(-1.0))  # 0.147
    assert torch.equal(mask, torch.zeros(4, 4, dtype=torch.bool))  # the closest pair is 0.2 apart, above 0.147
    _, margin, mask = margin_view(y, m0=0.4, beta=0.01, t_n=10, step=5, total_steps=200)
    assert margin == 0.4
    assert mask[0, 1] and mask[1, 2] and not mask[0, 2] and not mask[0, 0] and not mask[3].any()
    assert len(fig.axes) == 2


def test_replay_gamma_matches_the_step_by_step_rule():
    rng = np.random.default_rng(0)
    sharpness = rng.gamma(2.0, 0.5, 40)
    gamma = replay_gamma(sharpness, 1.5, 0.5, 5.0, window=5)
    expected = [float(modulation_gamma(s, list(sharpness[max(0, t - 5):t]), 1.5, 0.5, 5.0)) for t, s in enumerate(sharpness)]
    np.testing.assert_allclose(gamma, expected)
    assert gamma[0] == 1.5 and gamma.min() >= 0.5 and gamma.max() <= 5.0
    fig, same = gamma_view(sharpness, 1.5, 0.5, 5.0, 5)
    np.testing.assert_allclose(same, gamma)


def test_widgets_build_without_a_frontend_and_show_the_defaults():
    margin = show_margin_widget(np.linspace(-1, 1, 8))
    assert {c.description for c in margin.children[:-1]} == {"m0", "beta", "t_n", "step"}
    assert margin.children[0].value == 0.4
    gamma = show_gamma_widget(np.ones(10))
    assert {c.description for c in gamma.children[:-1]} == {"gamma_base", "gamma_min", "gamma_max", "window"}
