import matplotlib
import numpy as np
import pytest
import torch

from remd_core.optim import SGMConfig, modulation_gamma
from remd_core.training import TrainConfig
from remd_core.workbench.widgets import gamma_view, margin_view, replay_gamma, show_gamma_widget, show_margin_widget

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


def test_widgets_start_at_the_config_defaults_exactly():
    margin = show_margin_widget(np.linspace(-1, 1, 8), total_steps=3)
    train = TrainConfig()
    assert margin.values() == {"m0": train.margin_m0, "beta": train.margin_beta, "t_n": train.margin_warmup, "step": 0}
    assert {c.description for c in margin.children[:-1]} == {"m0", "beta", "t_n", "step"}
    assert margin.controls["t_n"].max == train.margin_warmup  # widened past the run's 3 steps, not clamped to 3
    assert margin.latest["margin"] == train.margin_m0
    gamma = show_gamma_widget(np.ones(10))
    sgm = SGMConfig()
    assert gamma.values() == {"gamma_base": sgm.gamma_base, "gamma_min": sgm.gamma_min, "gamma_max": sgm.gamma_max,
                              "window": sgm.window}
    for slider in [*margin.controls.values(), *gamma.controls.values()]:
        assert slider.style.description_width == "initial"  # the whole name is shown


def test_sliders_hold_values_off_their_grid_and_outside_their_range():
    margin = show_margin_widget([0.0, 1.0], m0=0.43, beta=0.00073, t_n=5000, step=7, total_steps=4)
    assert margin.values() == {"m0": 0.43, "beta": 0.00073, "t_n": 5000, "step": 7}
    assert margin.controls["beta"].label == "0.00073" and margin.controls["m0"].label == "0.43"
    m0_values = [value for _, value in margin.controls["m0"].options]
    assert m0_values.index(0.43) == m0_values.index(0.4) + 1  # in order, between 0.4 and 0.45
    gamma = show_gamma_widget(np.ones(4), gamma_base=12.5, gamma_min=0.0, gamma_max=25.0, window=900)
    assert gamma.values() == {"gamma_base": 12.5, "gamma_min": 0.0, "gamma_max": 25.0, "window": 900}


def test_one_figure_redrawn_in_place_and_carried_by_the_display():
    margin = show_margin_widget(np.linspace(-1, 1, 8), total_steps=2000)
    bundle = margin._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and bundle["image/png"] == margin.png
    assert bundle["text/plain"] == "adaptive margin: m0=0.4, beta=0.0005, t_n=100, step=0"
    (shown,) = margin.figure.outputs
    before = shown["data"]["image/png"]
    assert before == margin.png
    margin.controls["step"].value = 1100
    (shown,) = margin.figure.outputs  # replaced, not appended
    assert shown["data"]["image/png"] != before
    assert margin.latest["margin"] == pytest.approx(0.4 * np.exp(-0.0005 * 1000))
    assert margin._repr_mimebundle_()["image/png"] == shown["data"]["image/png"]


def test_gamma_bounds_that_do_not_go_together_are_reported_in_place_of_the_figure():
    gamma = show_gamma_widget(np.ones(10))
    gamma.controls["gamma_min"].value = 5.0
    gamma.controls["gamma_max"].value = 1.0
    (shown,) = gamma.figure.outputs
    assert shown["output_type"] == "stream" and "gamma_min (5) must not exceed gamma_max (1)" in shown["text"]
    gamma.controls["gamma_max"].value = 10.0
    assert gamma.figure.outputs[0]["output_type"] == "display_data" and gamma.latest["gamma"].max() <= 10.0


@pytest.mark.slow
def test_slider_changes_redraw_in_a_real_kernel():
    """A real ipykernel (as JupyterLab starts it): the widget's display carries one PNG; moving a
    slider runs the callback, which sends the frontend one new PNG as the state of the widget's
    figure (no new output in the cell) and recomputes the values for the new setting."""
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3")
    try:
        def outputs_of(msg_id):
            images, redraws, texts = 0, [], []
            while True:
                msg = client.get_iopub_msg(timeout=60)
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                kind, content = msg["msg_type"], msg["content"]
                if kind in ("display_data", "execute_result") and "image/png" in content["data"]:
                    images += 1
                if kind == "comm_msg" and "outputs" in content["data"].get("state", {}):
                    redraws += [o["data"]["image/png"] for o in content["data"]["state"]["outputs"]]
                if kind == "execute_result":
                    texts.append(content["data"]["text/plain"])
                if kind == "error":
                    raise AssertionError("\n".join(content["traceback"]))
                if kind == "status" and content["execution_state"] == "idle":
                    return images, redraws, texts

        def run(code):
            return outputs_of(client.execute(code))

        def move_slider(model_id, state):  # the message the frontend sends when a slider moves
            msg = client.session.msg("comm_msg", {"comm_id": model_id, "data": {
                "method": "update", "state": state, "buffer_paths": []}})
            client.shell_channel.send(msg)
            images, redraws, _ = outputs_of(msg["header"]["msg_id"])
            assert images == 0 and len(redraws) == 1  # the figure is replaced in place, once
            return redraws[0]

        images, _, _ = run("import numpy as np\nfrom remd_core.workbench.widgets import show_margin_widget, show_gamma_widget\n"
                           "m = show_margin_widget(np.linspace(-1, 1, 8), total_steps=2000)\nm")
        assert images == 1  # one picture: the widget's display carries the figure at the given values
        _, _, (ids,) = run("m.controls['m0'].model_id, [v for _, v in m.controls['m0'].options].index(0.8), "
                           "m.controls['step'].model_id, m.png")
        m0_slider, m0_index, step_slider, first = eval(ids)
        second = move_slider(m0_slider, {"index": m0_index})  # a selection slider syncs its index
        third = move_slider(step_slider, {"value": 1100})
        assert len({first, second, third}) == 3
        _, _, texts = run("round(m.latest['margin'], 6), m.latest['positives']")
        margin = 0.8 * np.exp(-0.0005 * (1100 - 100))
        gaps = np.abs(np.subtract.outer(np.linspace(-1, 1, 8), np.linspace(-1, 1, 8)))
        assert texts == [repr((round(float(margin), 6), int(((gaps < margin) & (gaps > 0)).sum())))]
        run("g = show_gamma_widget(np.r_[np.ones(5), 3 * np.ones(5)], window=3)")
        images, redraws, texts = run("g.controls['gamma_base'].value = 2.0\ng.latest['gamma'].round(3).tolist()")
        assert images == 0 and len(redraws) == 1
        # window of the 3 previous scores: the jump to 3 is 3x their median for two probes (6, clipped to 5)
        assert texts == [repr([2.0] * 5 + [5.0, 5.0] + [2.0] * 3)]
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
