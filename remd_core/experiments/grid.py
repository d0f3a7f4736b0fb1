"""Grids of experiment cells: sub-grids of data sets x recipes x seeds x parameters, expanded into
uniquely keyed cells. One grid serves both front ends of the engine (``engine``): ``remd sweep``
(a grid file of notebook cells, ``workbench.sweep``) and ``remd compare`` (recipes x seeds
in-process, ``compare``).

A grid's ``groups`` are its sub-grids (the paper's ``table1``, ``table2``, ``sensitivity_m0``, ...);
each holds ``datasets``, ``recipes``, ``seeds`` and ``params`` (parameter name -> list of values).
A cell is one combination; a cell that several sub-grids share (``re-m3dr`` seed 0 at its default
values is in Table 1, Table 2 and every sensitivity curve) is one cell listing all of its groups. A
parameter set to its default (``Grid.defaults``) is the same cell as leaving it out.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field

from ..config import ConfigError

AXES = {"datasets": "DATASET", "recipes": "RECIPE", "seeds": "SEED"}
SUBGRID_KEYS = ("description", *AXES, "params")
MAX_KEY = 100


@dataclass
class SubGrid:
    datasets: list[str]
    recipes: list[str]
    seeds: list[int]
    params: dict[str, list] = field(default_factory=dict)
    description: str = ""


@dataclass
class Grid:
    """``groups`` are the sub-grids with the top-level values filled in (a grid without sub-grids
    has one group, named after the grid); ``defaults`` are the parameters' default values, which
    decide what a cell's key leaves out; ``notebook`` is the cell notebook of a sweep (``None`` for
    cells run in-process)."""

    name: str
    groups: dict[str, SubGrid]
    defaults: dict
    notebook: object = None
    source: str = "<grid>"
    description: str = ""

    @property
    def swept(self) -> list[str]:
        """Names of the ``params`` of any group, in order of first mention."""
        return list(dict.fromkeys(name for g in self.groups.values() for name in g.params))

    def sensitivity_groups(self) -> dict[str, str]:
        """Sub-grids that vary exactly one parameter (a sensitivity curve; others may be held at one
        value, such as Fig. 6c's ``GAMMA_MAX``): group -> parameter. Derived from the grid itself, so
        a table never repeats the grid file's structure."""
        varied = {name: [k for k, values in g.params.items() if len(values) > 1] for name, g in self.groups.items()}
        return {name: keys[0] for name, keys in varied.items() if len(keys) == 1}


@dataclass
class Cell:
    """One run of the grid. ``params`` holds ``DATASET``, ``RECIPE``, ``SEED`` and the swept
    parameters that differ from the defaults; ``groups`` are all the sub-grids that hold the cell;
    ``index`` is its place in the grid's order (tables list cells in it)."""

    key: str
    params: dict
    groups: tuple[str, ...]
    index: int = 0


def check_keys(values: dict, allowed: tuple, context: str) -> None:
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ConfigError(f"{context}: unknown key(s) {unknown}; allowed: {', '.join(allowed)}")


def subgrid(values: dict, defaults: dict, reserved: tuple, context: str, declared_by: str = "the cells") -> SubGrid:
    """One checked sub-grid: non-empty axes of the right kinds, known data sets and recipes, swept
    parameters that are declared (``defaults``, by ``declared_by``), not ``reserved`` and of their
    default's kind."""
    from .. import data
    from .recipes import recipe

    axes = {}
    for axis, kind in (("datasets", str), ("recipes", str), ("seeds", int)):
        items = values.get(axis)
        if not items or not isinstance(items, list):
            raise ConfigError(f"{context}: needs a non-empty list of {axis} (at the top level or in the sub-grid)")
        bad = [v for v in items if not isinstance(v, kind) or isinstance(v, bool)]
        if bad:
            raise ConfigError(f"{context}: {axis} must be {kind.__name__}s; got {bad}")
        axes[axis] = list(dict.fromkeys(items))
    for name in axes["datasets"]:
        try:
            data.entry(name)
        except data.CatalogError as err:
            raise ConfigError(f"{context}: {err.args[0]}") from None
    for name in axes["recipes"]:
        try:
            recipe(name)
        except ValueError as err:
            raise ConfigError(f"{context}: {err}") from None
    params = values.get("params") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{context}: params must map parameter names to lists of values")
    clash = sorted(set(params) & {*AXES.values(), *reserved})
    if clash:
        raise ConfigError(f"{context}: {clash} cannot be in params: use datasets/recipes/seeds; the runner sets "
                          f"{', '.join(reserved)}")
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ConfigError(f"{context}: unknown parameter(s) {unknown}; {declared_by} declares {sorted(defaults)}")
    swept = {}
    for name, items in params.items():
        items = items if isinstance(items, list) else [items]
        if not items:
            raise ConfigError(f"{context}: params.{name} has no values")
        for value in items:
            check_kind(name, value, defaults[name], context)
        swept[name] = items
    return SubGrid(**axes, params=swept, description=str(values.get("description", "")))


def check_kind(name: str, value, default, context: str) -> None:
    """A swept value must be of the default's kind (ints and floats mix; a None default takes any)."""
    if default is None or value is None:
        return
    number = (int, float)
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(default, bool) and isinstance(value, bool)
    elif isinstance(default, number):
        ok = isinstance(value, number)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"{context}: params.{name} = {value!r} is a {type(value).__name__}; its default "
                          f"{default!r} is a {type(default).__name__}")


def same(a, b) -> bool:
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def format_value(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, (int, str)) or value is None:
        return str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def cell_key(params: dict) -> str:
    """``<dataset>__<recipe>__seed<k>`` then ``NAME=value`` for each swept parameter (sorted by
    name), e.g. ``synthetic-stage2__re-m3dr__seed0__GAMMA_BASE=3``. Deterministic and safe as a folder
    name; a key that had to be cleaned of other characters, or is longer than 100 characters, gets a
    short hash of the full text so two cells never share a key."""
    text = "__".join([str(params["DATASET"]), str(params["RECIPE"]), f"seed{params['SEED']}",
                      *(f"{k}={format_value(v)}" for k, v in sorted(params.items()) if k not in AXES.values())])
    key = re.sub(r"[^A-Za-z0-9._=+-]", "-", text)
    if key != text or len(key) > MAX_KEY:
        key = f"{key[:MAX_KEY - 10]}__{hashlib.sha1(text.encode()).hexdigest()[:8]}"
    return key


def select_groups(grid: Grid, groups: list[str] | None) -> list[str]:
    """Sub-grid names selected by ``groups``: a name selects the sub-grid of that name and every
    sub-grid named ``<name>_...`` (``sensitivity`` selects ``sensitivity_m0``, ``sensitivity_beta``,
    ...). ``None`` selects all; a name that selects nothing is an error."""
    if not groups:
        return list(grid.groups)
    chosen = []
    for name in groups:
        found = [g for g in grid.groups if g == name or g.startswith(f"{name}_")]
        if not found:
            raise ConfigError(f"{grid.source}: no sub-grid {name!r}; it has {list(grid.groups)}")
        chosen += found
    return [g for g in grid.groups if g in chosen]


def expand(grid: Grid, seeds: list[int] | None = None, groups: list[str] | None = None) -> list[Cell]:
    """The cells of the selected sub-grids (``select_groups``), deduplicated by key, in the grid's
    order (sub-grids as written; in each: data set, seed, recipe, then the parameter product).
    ``seeds`` replaces every sub-grid's seeds. A cell's ``groups`` lists every sub-grid holding it,
    selected or not, so a table can always find e.g. the Table-2 rows among Table-1 cells."""
    selected = set(select_groups(grid, groups))
    cells: dict[str, Cell] = {}
    for group, sub in grid.groups.items():
        names = list(sub.params)
        for dataset, seed, name in itertools.product(sub.datasets, seeds or sub.seeds, sub.recipes):
            for combo in itertools.product(*(sub.params[n] for n in names)):
                params = {"DATASET": dataset, "RECIPE": name, "SEED": int(seed)}
                params.update({n: v for n, v in zip(names, combo) if not same(v, grid.defaults[n])})
                key = cell_key(params)
                if key not in cells:
                    cells[key] = Cell(key, params, (), len(cells))
                if group not in cells[key].groups:
                    cells[key].groups += (group,)
    return [c for c in cells.values() if selected & set(c.groups)]


def schedule(cells: list[Cell], stage2_only: set[str]) -> list[Cell]:
    """Execution order: first the cells that train stage-1 encoders no earlier cell trains (one per
    group sharing them; a one-modality recipe such as ``unimodal-oct`` trains its modality's only,
    so ``unimodal-oct`` and ``unimodal-fundus`` both lead, and train at once), then the cells without
    stage 1, then the cells whose encoders the leaders train, which by then mostly find them trained
    instead of waiting on the cache lock. ``stage2_only`` names the parameters that reach stage 2 only
    (used to order, never for correctness: the cache lock is)."""
    from .recipes import recipe

    every = {recipe(c.params["RECIPE"]).modality for c in cells} - {None}  # the modalities one-modality recipes name
    leaders, single, followers, seen = [], [], [], {}
    for cell in cells:
        r = recipe(cell.params["RECIPE"])
        if r.stage1 is None:
            single.append(cell)
            continue
        shared = (r.stage1, *sorted((k, format_value(v)) for k, v in cell.params.items()
                                    if k not in stage2_only and k != "RECIPE"))
        trained = seen.setdefault(shared, set())
        needs = {r.modality} if r.modality else {"*"}
        covered = "*" in trained or needs <= trained or (needs == {"*"} and every and every <= trained)
        (followers if covered else leaders).append(cell)
        trained |= needs
    return leaders + single + followers
