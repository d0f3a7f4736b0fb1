import matplotlib
import numpy as np
import pytest
import torch

from remd_core.optim import modulation_gamma
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


def test_widgets_build_without_a_frontend_and_show_the_defaults():
    margin = show_margin_widget(np.linspace(-1, 1, 8))
    assert {c.description for c in margin.children[:-1]} == {"m0", "beta", "t_n", "step"}
    assert margin.children[0].value == 0.4
    gamma = show_gamma_widget(np.ones(10))
    assert {c.description for c in gamma.children[:-1]} == {"gamma_base", "gamma_min", "gamma_max", "window"}


@pytest.mark.slow
def test_slider_changes_redraw_in_a_real_kernel():
    """A real ipykernel (as JupyterLab starts it): moving a slider runs the callback, which sends a
    new PNG to the frontend and recomputes the values for the new setting."""
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3")
    try:
        def outputs_of(msg_id):
            images, texts = 0, []
            while True:
                msg = client.get_iopub_msg(timeout=60)
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                kind, content = msg["msg_type"], msg["content"]
                if kind in ("display_data", "execute_result") and "image/png" in content["data"]:
                    images += 1
                if kind == "execute_result":
                    texts.append(content["data"]["text/plain"])
                if kind == "error":
                    raise AssertionError("\n".join(content["traceback"]))
                if kind == "status" and content["execution_state"] == "idle":
                    return images, texts

        def run(code):
            return outputs_of(client.execute(code))

        def move_slider(model_id, value):  # the message the frontend sends when a slider moves
            msg = client.session.msg("comm_msg", {"comm_id": model_id, "data": {
                "method": "update", "state": {"value": value}, "buffer_paths": []}})
            client.shell_channel.send(msg)
            return outputs_of(msg["header"]["msg_id"])[0]

        images, _ = run("import numpy as np\nfrom remd_core.workbench.widgets import show_margin_widget, show_gamma_widget\n"
                        "m = show_margin_widget(np.linspace(-1, 1, 8), total_steps=2000)")
        assert images >= 1  # the static rendering of the defaults
        _, (ids,) = run("m.children[0].model_id, m.children[3].model_id")
        m0_slider, step_slider = eval(ids)
        assert move_slider(m0_slider, 0.8) == 1 and move_slider(step_slider, 1100) == 1  # one redraw per move
        _, texts = run("round(m.latest['margin'], 6), m.latest['positives']")
        margin = 0.8 * np.exp(-0.0005 * (1100 - 100))
        gaps = np.abs(np.subtract.outer(np.linspace(-1, 1, 8), np.linspace(-1, 1, 8)))
        assert texts == [repr((round(float(margin), 6), int(((gaps < margin) & (gaps > 0)).sum())))]
        run("g = show_gamma_widget(np.r_[np.ones(5), 3 * np.ones(5)], window=3)")
        images, texts = run("g.children[0].value = 2.0\ng.latest['gamma'].round(3).tolist()")
        assert images == 1
        # window of the 3 previous scores: the jump to 3 is 3x their median for two probes (6, clipped to 5)
        assert texts == [repr([2.0] * 5 + [5.0, 5.0] + [2.0] * 3)]
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
