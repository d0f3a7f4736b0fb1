"""Interactive views of the two hyperparameter families the paper studies (Fig. 6): the adaptive
margin (m0, beta, t_n; section 4.1) and SGM's modulation (gamma_base, gamma_min, gamma_max, window;
section 4.2).

The callbacks are plain library functions (``margin_view``, ``replay_gamma``, ``gamma_view``),
tested on their own; the widget builders only wire sliders to them. ``show_*`` first draws a
static figure at the given values, so a headless papermill or nbval run records a picture and
never waits for input, then shows the sliders (which do something only in a live kernel).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..losses import margin_schedule, positive_mask
from ..optim import modulation_gamma


def margin_view(y_batch, m0: float, beta: float, t_n: int, step: int, total_steps: int):
    """The schedule ``m(t)`` over ``total_steps`` and the positive pairs of ``y_batch`` (standardised
    labels, sorted for display) at ``step``. Returns ``(figure, margin, positive_mask)``."""
    y = torch.as_tensor(np.sort(np.asarray(y_batch, dtype=np.float64)))
    steps = np.arange(total_steps + 1)
    schedule = margin_schedule(steps, m0, beta, t_n)
    margin = float(margin_schedule(step, m0, beta, t_n))
    mask = positive_mask(y, margin)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(steps, schedule)
    left.axvline(step, color="k", ls="--", lw=1)
    left.set(xlabel="iteration t", ylabel="margin m(t) (SD of training MD)",
             title=f"m0={m0:g}, beta={beta:g}, t_n={t_n}: m({step}) = {margin:.3f}")
    right.imshow(mask.numpy(), cmap="Greens", vmin=0, vmax=1)
    right.set(xlabel="sample j (sorted by label)", ylabel="anchor i",
              title=f"positives |y_i - y_j| < m: {int(mask.sum())} pairs, "
                    f"{int((mask.sum(1) > 0).sum())}/{len(y)} anchors")
    fig.tight_layout()
    return fig, margin, mask


def replay_gamma(sharpness, gamma_base: float, gamma_min: float, gamma_max: float, window: int) -> np.ndarray:
    """Gamma that SGM would have used on a recorded sharpness trace with these settings (the window
    holds the previous ``window`` scores, as in ``SGM``)."""
    scores = [float(s) for s in sharpness]
    return np.array([float(modulation_gamma(s, scores[max(0, t - window):t], gamma_base, gamma_min, gamma_max))
                     for t, s in enumerate(scores)])


def gamma_view(sharpness, gamma_base: float, gamma_min: float, gamma_max: float, window: int):
    """Replayed gamma beside the sharpness trace; returns ``(figure, gamma)``."""
    gamma = replay_gamma(sharpness, gamma_base, gamma_min, gamma_max, window)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(np.asarray(sharpness, float), lw=0.8, label="sharpness s_t")
    twin = left.twinx()
    twin.plot(gamma, color="C1", lw=0.8, label="gamma_t")
    left.set(xlabel="probe", ylabel="sharpness", title=f"gamma_base={gamma_base:g}, [{gamma_min:g}, {gamma_max:g}], "
                                                         f"window {window}")
    twin.set_ylabel("gamma")
    right.scatter(sharpness, gamma, s=4, alpha=0.5)
    right.set(xlabel="sharpness s_t", ylabel="gamma_t", title="gamma against sharpness (cf. Fig. 5B)")
    fig.tight_layout()
    return fig, gamma


def show_margin_widget(y_batch, m0=0.4, beta=0.0005, t_n=100, step=0, total_steps=1000):
    """Draw ``margin_view`` at the given values, then return sliders that redraw it. The returned
    widget's ``latest`` dict holds what the last redraw computed (``margin``, ``positives``)."""
    import ipywidgets as w
    from IPython.display import display

    display(margin_view(y_batch, m0, beta, t_n, step, total_steps)[0])
    plt.close("all")
    latest = {}

    def redraw(m0, beta, t_n, step):
        fig, margin, mask = margin_view(y_batch, m0, beta, t_n, step, total_steps)
        latest.update(m0=m0, beta=beta, t_n=t_n, step=step, margin=margin, positives=int(mask.sum()))
        display(fig)
        plt.close(fig)

    view = w.interactive(redraw, m0=w.FloatSlider(value=m0, min=0.0, max=2.0, step=0.05),
                         beta=w.FloatLogSlider(value=beta, base=10, min=-5, max=-1),
                         t_n=w.IntSlider(value=t_n, min=0, max=total_steps), step=w.IntSlider(value=step, min=0, max=total_steps))
    view.latest = latest
    return view


def show_gamma_widget(sharpness, gamma_base=1.5, gamma_min=0.5, gamma_max=5.0, window=50):
    """Draw ``gamma_view`` at the given values, then return sliders that redraw it. The returned
    widget's ``latest`` dict holds the last replayed ``gamma`` and its settings."""
    import ipywidgets as w
    from IPython.display import display

    display(gamma_view(sharpness, gamma_base, gamma_min, gamma_max, window)[0])
    plt.close("all")
    latest = {}

    def redraw(gamma_base, gamma_min, gamma_max, window):
        if gamma_min > gamma_max:
            print("gamma_min must not exceed gamma_max")
            return
        fig, gamma = gamma_view(sharpness, gamma_base, gamma_min, gamma_max, window)
        latest.update(gamma_base=gamma_base, gamma_min=gamma_min, gamma_max=gamma_max, window=window, gamma=gamma)
        display(fig)
        plt.close(fig)

    view = w.interactive(redraw, gamma_base=w.FloatSlider(value=gamma_base, min=0.1, max=10.0, step=0.1),
                         gamma_min=w.FloatSlider(value=gamma_min, min=0.0, max=5.0, step=0.1),
                         gamma_max=w.FloatSlider(value=gamma_max, min=0.5, max=20.0, step=0.5),
                         window=w.IntSlider(value=window, min=1, max=500))
    view.latest = latest
    return view
