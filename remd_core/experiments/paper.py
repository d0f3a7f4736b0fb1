"""The Re-M3Dr paper's reported numbers (seed paper 001, STAGE2 data set), keyed like our recipes,
to print beside our results. They come from a different data set (real STAGE2 eyes) and setup
(ResNet34, 224 px, 32 B-scans), so they are context, not targets."""

from __future__ import annotations

import pandas as pd

# Table 1 (STAGE2 columns) and Table 2: (recipe, model) -> (R2, MSE, MAE)
STAGE2 = {
    ("unimodal-oct", "oct"): (0.420, 5.01, 1.59),
    ("unimodal-fundus", "fundus"): (0.605, 3.63, 1.38),
    ("naive-fusion", "fusion"): (0.371, 4.64, 1.52),
    ("ogm-ge", "fusion"): (0.468, 3.78, 1.43),
    ("mmpareto", "fusion"): (0.532, 4.01, 1.39),
    ("eyemost", "fusion"): (0.478, 5.47, 1.45),
    ("eyemost-plus", "fusion"): (0.381, 3.97, 1.44),
    ("sam", "fusion"): (0.537, 3.74, 1.32),
    ("imbsam", "fusion"): (0.276, 4.14, 1.56),
    ("sse-sam", "fusion"): (0.532, 3.46, 1.38),
    ("egvfi", "oct"): (0.390, 3.78, 1.53),
    ("sf3d", "oct"): (0.168, 3.75, 1.53),
    ("simclr", "fusion"): (0.215, 4.47, 1.58),
    ("conr-oct", "oct"): (0.358, 5.20, 1.60),
    ("conr-fundus", "fundus"): (0.504, 3.48, 1.40),
    ("conr", "fusion"): (0.483, 3.90, 1.48),
    ("echomen-oct", "oct"): (0.053, 5.02, 1.66),
    ("echomen-fundus", "fundus"): (0.569, 3.18, 1.30),
    ("echomen", "fusion"): (0.455, 4.21, 1.51),
    ("re-m3dr", "fusion"): (0.626, 2.50, 1.16),
    ("wo-am", "fusion"): (0.611, 2.95, 1.26),
    ("am-only", "oct"): (0.340, 4.79, 1.54),
    ("am-only", "fundus"): (0.601, 2.87, 1.23),
    ("am-naive-fusion", "fusion"): (0.525, 3.21, 1.29),
    ("am-mmpareto", "fusion"): (0.317, 4.19, 1.53),
}


def stage2_table() -> pd.DataFrame:
    """The paper's STAGE2 numbers as a frame indexed by (recipe, model): ``paper_r2, paper_mse, paper_mae``."""
    index = pd.MultiIndex.from_tuples(STAGE2, names=["recipe", "model"])
    return pd.DataFrame(list(STAGE2.values()), index=index, columns=["paper_r2", "paper_mse", "paper_mae"])


def with_paper(summary: pd.DataFrame, columns: list[str] | None = None) -> pd.DataFrame:
    """``summary`` (indexed by recipe and model; ``columns`` of it, default all) with the paper's
    STAGE2 numbers beside each row that the paper reports (empty where it does not)."""
    return (summary if columns is None else summary[columns]).join(stage2_table(), how="left")
