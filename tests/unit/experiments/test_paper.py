from remd_core.experiments.paper import STAGE2, stage2_table
from remd_core.experiments.recipes import PAPER_RECIPES, recipe


def test_every_paper_number_is_keyed_by_a_recipe_and_a_model_it_produces():
    for name, model in STAGE2:
        r = recipe(name)
        assert name in PAPER_RECIPES
        assert model == (r.modality or ("fusion" if r.strategy else model))
        assert model in ("fusion", "fundus", "oct")
    assert set(PAPER_RECIPES) <= {name for name, _ in STAGE2}
    table = stage2_table()
    assert table.loc[("re-m3dr", "fusion"), "paper_r2"] == 0.626 and table["paper_r2"].max() == 0.626
