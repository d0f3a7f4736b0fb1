"""Interactive views of the two hyperparameter families the paper studies (Fig. 6): the adaptive
margin (m0, beta, t_n; section 4.1) and SGM's modulation (gamma_base, gamma_min, gamma_max, window;
section 4.2).

The callbacks are plain library functions (``margin_view``, ``replay_gamma``, ``gamma_view``),
tested on their own; the widget builders only wire sliders to them. Each widget is one
``LiveFigure``: its sliders above one figure that they redraw in place. Its display also carries
that figure as a PNG, so a notebook executed without a frontend (papermill, nbval) records one
picture and never waits for input, while JupyterLab shows the live widget only. The sliders start
at exactly the values given, which default to the config dataclasses' (``TrainConfig``,
``SGMConfig``, through ``runner.library_default``); a slider's range always contains its value.
"""

from __future__ import annotations

import base64

import ipywidgets as w
import matplotlib.pyplot as plt
import numpy as np
import torch

from ..losses import margin_schedule, positive_mask
from ..optim import modulation_gamma
from .figures import finish
from .runner import library_default

LABELS = {"description_width": "initial"}  # the whole name beside each slider, never "gamma_..."


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
    finish(fig)
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
    finish(fig)
    return fig, gamma


def choice_slider(name: str, value: float, grid) -> w.SelectionSlider:
    """A slider over the values of ``grid`` and ``value``, starting at exactly ``value`` (a float
    slider would snap it to its step, a log slider to its base's powers). Each label is the
    shortest text that reads back as its value."""
    value = float(value)
    options = sorted({float(v) for v in grid} | {value})
    labels = [f"{v:g}" if float(f"{v:g}") == v else repr(v) for v in options]
    return w.SelectionSlider(options=list(zip(labels, options)), value=value, description=name, style=LABELS,
                             continuous_update=False)


def int_slider(name: str, value: int, low: int, high: int) -> w.IntSlider:
    """An integer slider from ``low`` to ``high``, widened to hold ``value`` (never clamped to it)."""
    return w.IntSlider(value=value, min=min(low, value), max=max(high, value), description=name, style=LABELS,
                       continuous_update=False)


def figure_png(fig) -> str:
    """``fig`` as base64 PNG text, the form a notebook output holds; closes ``fig``."""
    from IPython.core.pylabtools import print_figure

    try:
        return base64.b64encode(print_figure(fig, "png", bbox_inches="tight")).decode("ascii")
    finally:
        plt.close(fig)


class LiveFigure(w.VBox):
    """Sliders (``controls``, name -> slider) above the figure ``draw(**values)`` makes, redrawn in
    place whenever a slider moves. ``draw`` returns ``(figure, computed)``; ``latest`` holds the
    values and ``computed`` of the last redraw. A ``ValueError`` from ``draw`` (settings that do not
    go together) is shown in place of the figure. Displayed, the widget carries its current figure
    as ``image/png`` beside the widget view: a frontend with widgets shows the live view, and a
    notebook run headlessly keeps that one picture."""

    def __init__(self, draw, controls: dict, caption: str):
        self._draw, self.controls, self.caption = draw, dict(controls), caption
        self.figure, self.latest, self.png = w.Output(), {}, None
        super().__init__(children=[*self.controls.values(), self.figure])
        for slider in self.controls.values():
            slider.observe(self.redraw, "value")
        self.redraw()

    def values(self) -> dict:
        return {name: slider.value for name, slider in self.controls.items()}

    def redraw(self, change=None) -> None:
        values = self.values()
        try:
            fig, computed = self._draw(**values)
        except ValueError as error:
            self.latest = {**values, "error": str(error)}
            self.figure.outputs = ({"output_type": "stream", "name": "stderr", "text": f"{error}\n"},)
            return
        self.png = figure_png(fig)
        self.latest = {**values, **computed}
        self.figure.outputs = ({"output_type": "display_data", "metadata": {},
                                "data": {"image/png": self.png, "text/plain": self.describe()}},)

    def describe(self) -> str:
        shown = ", ".join(f"{k}={v:g}" for k, v in self.values().items())
        return f"{self.caption}: {shown}"

    def _repr_mimebundle_(self, **kwargs):
        data = super()._repr_mimebundle_(**kwargs)
        data["text/plain"] = self.describe()
        if self.png is not None:
            data["image/png"] = self.png
        return data


def show_margin_widget(y_batch, m0=None, beta=None, t_n=None, step=0, total_steps=1000) -> LiveFigure:
    """``margin_view`` with sliders for ``m0``, ``beta``, ``t_n`` and the iteration ``step``; ``None``
    is ``TrainConfig``'s default. ``latest`` also holds ``margin`` and ``positives`` (pair count)."""
    m0 = library_default("MARGIN_M0") if m0 is None else m0
    beta = library_default("MARGIN_BETA") if beta is None else beta
    t_n = library_default("MARGIN_WARMUP") if t_n is None else t_n

    def draw(m0, beta, t_n, step):
        fig, margin, mask = margin_view(y_batch, m0, beta, t_n, step, total_steps)
        return fig, {"margin": margin, "positives": int(mask.sum())}

    betas = [0.0] + [float(f"{m}e{e}") for e in range(-6, -1) for m in (1, 2, 5)] + [0.1]
    return LiveFigure(draw, {"m0": choice_slider("m0", m0, [k / 20 for k in range(41)]),
                             "beta": choice_slider("beta", beta, betas),
                             "t_n": int_slider("t_n", t_n, 0, total_steps),
                             "step": int_slider("step", step, 0, total_steps)}, "adaptive margin")


def show_gamma_widget(sharpness, gamma_base=None, gamma_min=None, gamma_max=None, window=None) -> LiveFigure:
    """``gamma_view`` with sliders for ``gamma_base``, ``gamma_min``, ``gamma_max`` and ``window``;
    ``None`` is ``SGMConfig``'s default. ``latest`` also holds the replayed ``gamma``."""
    values = {"gamma_base": gamma_base, "gamma_min": gamma_min, "gamma_max": gamma_max, "window": window}
    values = {k: library_default(k.upper()) if v is None else v for k, v in values.items()}

    def draw(gamma_base, gamma_min, gamma_max, window):
        if gamma_min > gamma_max:
            raise ValueError(f"gamma_min ({gamma_min:g}) must not exceed gamma_max ({gamma_max:g})")
        fig, gamma = gamma_view(sharpness, gamma_base, gamma_min, gamma_max, window)
        return fig, {"gamma": gamma}

    grids = {"gamma_base": [k / 10 for k in range(1, 101)], "gamma_min": [k / 10 for k in range(51)],
             "gamma_max": [k / 2 for k in range(1, 41)]}
    controls = {name: choice_slider(name, values[name], grid) for name, grid in grids.items()}
    controls["window"] = int_slider("window", values["window"], 1, 500)
    return LiveFigure(draw, controls, "SGM gamma replay")
