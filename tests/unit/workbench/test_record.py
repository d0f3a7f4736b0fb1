import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import plotly.express as px  # noqa: E402

from remd_core.workbench.record import record_results, save_figure, save_table  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plotly_figure_is_saved_as_png_and_self_contained_html(tmp_path):
    fig = px.line(x=[0, 1, 2], y=[1, 3, 2], title="t")
    png, html = save_figure(fig, "curve", tmp_path)
    assert png == tmp_path / "figures" / "curve.png" and png.read_bytes()[:8] == PNG_MAGIC
    text = html.read_text()
    assert "<html>" in text and len(text) > 1_000_000  # plotly.js embedded: readable offline


def test_matplotlib_figure_is_saved_as_png(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    (png,) = save_figure(fig, "m", tmp_path)
    plt.close(fig)
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_tables_round_trip_through_csv_and_parquet(tmp_path):
    table = pd.DataFrame({"r2": [0.5, 0.25]}, index=pd.Index(["a", "b"], name="recipe"))
    csv, parquet = save_table(table, "t", tmp_path)
    pd.testing.assert_frame_equal(pd.read_csv(csv, index_col="recipe"), table)
    pd.testing.assert_frame_equal(pd.read_parquet(parquet), table)


def test_results_are_written_as_json_beside_the_run(tmp_path, monkeypatch):
    series = record_results("nb", {"r2": 0.5, "name": "x"}, tmp_path)
    assert json.loads((tmp_path / "results" / "nb.json").read_text()) == {"r2": 0.5, "name": "x"}
    assert series["r2"] == 0.5
    monkeypatch.setenv("REMD_OUTPUTS", str(tmp_path / "out"))
    record_results("nb", {"a": 1})
    assert (tmp_path / "out" / "interactive" / "results" / "nb.json").exists()
