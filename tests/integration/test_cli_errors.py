"""The command line a newcomer meets: a mistake prints one line on stderr naming the argument, what
was given and what is allowed, exits with status 2, shows no traceback and leaves nothing under the
outputs folder. KEY=VALUE settings are typed by the dataclass field they name."""

import re
import subprocess
import sys
import typing
from dataclasses import dataclass, field

import pytest

from remd_core import cli
from remd_core.config import ConfigError, parse_settings, parse_value

GRID = "name: tiny\ndatasets: [synthetic-stage2]\nrecipes: [naive-fusion]\nseeds: [0]\n"

# (arguments, the argument the line must name, the value it must show); "{tmp}" is the test's folder
CASES = {
    "unknown recipe": (["compare", "--recipes", "nope"], "--recipes", "nope"),
    "float setting given a word": (["compare", "--train", "lr=abc"], "--train", "lr=abc"),
    "negative eye count": (["compare", "--data", "n_eyes=-3"], "--data", "n_eyes=-3"),
    "real data set without its folder": (["compare", "--dataset", "stage2"], "--dataset", "stage2"),
    "too few eyes for the test split": (["compare", "--data", "n_eyes=40"], "--data", "n_eyes=40"),
    "unknown data key": (["baselines", "--data", "n_eys=10"], "--data", "n_eys=10"),
    "setting without a value": (["compare", "--train", "lr"], "--train", "lr"),
    "value the config rejects": (["compare", "--epochs", "0"], "--epochs", "0"),
    "unknown data set": (["compare", "--dataset", "nope"], "--dataset", "nope"),
    "seeds not numbers": (["compare", "--seeds", "0,one"], "--seeds", "0,one"),
    "resume without a run": (["compare", "--resume"], "--resume", "--run"),
    "argparse type error": (["compare", "--lr", "fast"], "--lr", "fast"),
    "unknown option": (["compare", "--bogus"], "--bogus", "--bogus"),
    "missing grid file": (["sweep", "{tmp}/nope.yaml"], "grid", "nope.yaml"),
    "malformed grid file": (["sweep", "{tmp}/broken.yaml"], "grid", "broken.yaml"),
    "unknown grid key": (["sweep", "{tmp}/unknown_key.yaml"], "grid", "unknown_key.yaml"),
    "unknown sweep profile": (["sweep", "{tmp}/tiny.yaml", "--profile", "nope"], "--profile", "nope"),
    "unknown sweep parameter": (["sweep", "{tmp}/tiny.yaml", "--set", "FOO=1"], "--set", "FOO=1"),
    "sweep parameter of the wrong kind": (["sweep", "{tmp}/tiny.yaml", "--set", "LR=abc"], "--set", "LR=abc"),
    "unknown sub-grid": (["sweep", "{tmp}/tiny.yaml", "--groups", "nope"], "--groups", "nope"),
    "unknown Slurm profile": (["sweep", "{tmp}/tiny.yaml", "--slurm", "nope"], "--slurm", "nope"),
    "unknown run profile": (["run", "--profile", "nope"], "--profile", "nope"),
    "unknown notebook": (["run", "--notebooks", "nope"], "--notebooks", "nope"),
    "unknown notebook parameter": (["run", "--notebooks", "00", "--set", "FOO=1"], "--set", "FOO=1"),
    "notebook parameter a config rejects": (["run", "--notebooks", "00", "--set", "TAIL=9"], "--set", "TAIL=9"),
}


def remd(args, outputs, cwd=None):
    return subprocess.run([sys.executable, "-m", "remd_core", *args], capture_output=True, text=True, cwd=cwd,
                          env={"REMD_OUTPUTS": str(outputs), "PATH": ""}, timeout=300)


@pytest.mark.parametrize("case", list(CASES))
def test_a_mistake_is_one_line_with_status_2_and_leaves_nothing(case, tmp_path):
    (tmp_path / "tiny.yaml").write_text(GRID)
    (tmp_path / "broken.yaml").write_text("name: broken\nrecipes: [naive-fusion\nseeds: [0]\n")
    (tmp_path / "unknown_key.yaml").write_text(GRID + "recipez: [naive-fusion]\n")
    args, argument, given = CASES[case]
    outputs = tmp_path / "outputs"
    out = remd([a.replace("{tmp}", str(tmp_path)) for a in args], outputs)
    lines = out.stderr.splitlines()
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1 and lines[0].strip(), out.stderr
    assert re.match(r"remd( \w+)?: error: ", lines[0]), lines[0]
    assert argument in lines[0] and given in lines[0], lines[0]
    assert "Traceback" not in out.stderr + out.stdout
    assert not outputs.exists() or not any(outputs.iterdir()), sorted(p.name for p in outputs.rglob("*"))


def test_the_observed_lines_read_as_promised(tmp_path):
    out = remd(["compare", "--train", "lr=abc"], tmp_path / "outputs")
    assert out.stderr == "remd compare: error: --train lr=abc: lr takes a float, got 'abc'\n"
    out = remd(["compare", "--data", "n_eyes=40"], tmp_path / "outputs")
    assert out.stderr.startswith("remd compare: error: --data n_eyes=40: with 40 samples, test=200 and val=0.15")
    out = remd(["compare", "--dataset", "stage2"], tmp_path / "outputs")
    assert "pass root=..." in out.stderr and "REMD_STAGE2_ROOT" in out.stderr


# --- typed KEY=VALUE settings ---------------------------------------------------------------------

@dataclass
class Inner:
    width: float = 0.25
    arch: str = "resnet18"


@dataclass
class Every:
    count: int = 0
    rate: float = 1e-3
    flag: bool = False
    name: str = "x"
    names: tuple[str, ...] | None = None
    pair: tuple[float, float] | None = None
    seeds: list[int] = field(default_factory=list)
    steps: int | None = None
    weight: float | None = None
    every: int | str = 0
    meta: str | bool | None = None
    options: dict = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)
    mode: typing.Literal["fast", "slow"] = "fast"


@pytest.mark.parametrize("key, text, expected", [
    ("count", "12", 12), ("count", " -3 ", -3),
    ("rate", "0.01", 0.01), ("rate", "1e-3", 1e-3), ("rate", "2", 2),
    ("flag", "true", True), ("flag", "False", False), ("flag", "yes", True), ("flag", "0", False),
    ("name", "cpu", "cpu"), ("name", "123", "123"), ("name", "true", "true"), ("name", "'a b'", "a b"),
    ("name", "none", "none"),
    ("names", "fundus,oct", ("fundus", "oct")), ("names", "[fundus, oct]", ("fundus", "oct")),
    ("names", "fundus", ("fundus",)), ("names", "none", None),
    ("pair", "-30,2.5", (-30, 2.5)), ("pair", "null", None),
    ("seeds", "0,1,2", [0, 1, 2]),
    ("steps", "400", 400), ("steps", "None", None), ("weight", "0.5", 0.5), ("weight", "none", None),
    ("every", "14", 14), ("every", "auto", "auto"),
    ("meta", "false", False), ("meta", "glaucoma_meta.csv", "glaucoma_meta.csv"), ("meta", "none", None),
    ("options", "{sgm: {gamma_base: 3}}", {"sgm": {"gamma_base": 3}}), ("options", "{}", {}),
    ("inner", "{width: 0.5}", Inner(width=0.5)), ("inner", "{width: '1e-1'}", Inner(width=0.1)),
    ("mode", "slow", "slow"),
])
def test_a_value_is_parsed_by_its_field_type(key, text, expected):
    value = parse_settings(Every, [f"{key}={text}"])[key]
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("key, text, says", [
    ("count", "3.5", "count takes an int, got '3.5'"),
    ("count", "many", "count takes an int, got 'many'"),
    ("rate", "abc", "rate takes a float, got 'abc'"),
    ("flag", "maybe", "flag takes true or false, got 'maybe'"),
    ("pair", "1,2,3", "pair takes 2 comma-separated floats or none, got '1,2,3'"),
    ("seeds", "0,x", "seeds takes a comma-separated list of ints, got '0,x'"),
    ("steps", "lots", "steps takes an int or none, got 'lots'"),
    ("options", "abc", "options takes a mapping like {key: value}, got 'abc'"),
    ("inner", "{width: wide}", "inner.width takes a float, got 'wide'"),
    ("mode", "medium", "mode takes one of 'fast', 'slow', got 'medium'"),
])
def test_a_value_of_the_wrong_kind_names_the_key_the_type_and_the_text(key, text, says):
    with pytest.raises(ConfigError) as caught:
        parse_settings(Every, [f"{key}={text}"])
    assert str(caught.value) == says


def test_unknown_keys_and_missing_values_are_named():
    with pytest.raises(ConfigError, match=r"unknown key 'cont' for --train; allowed keys are: count, rate"):
        parse_settings(Every, ["cont=3"], context="--train")
    with pytest.raises(ConfigError, match=r"expected KEY=VALUE, got 'count'"):
        parse_settings(Every, ["count"])


def test_real_configs_get_typed_values():
    from remd_core.data.synthetic import Config as SyntheticConfig
    from remd_core.training import TrainConfig

    train = parse_settings(TrainConfig, ["lr=1e-3", "modalities=fundus,oct", "probe_every=auto", "channels_last=none",
                                         "reference_run_steps=400", "contrastive=true", "epochs=2",
                                         "strategy_options={sgm: {gamma_base: 3}}"])
    assert train == {"lr": 0.001, "modalities": ("fundus", "oct"), "probe_every": "auto", "channels_last": None,
                     "reference_run_steps": 400, "contrastive": True, "epochs": 2,
                     "strategy_options": {"sgm": {"gamma_base": 3}}}
    assert parse_settings(TrainConfig, ["probe_every=14"]) == {"probe_every": 14}
    data = parse_settings(SyntheticConfig, ["n_eyes=60", "test=15", "val=0.2", "cache=false", "null_modality=none"])
    assert data == {"n_eyes": 60, "test": 15, "val": 0.2, "cache": False, "null_modality": "none"}
    assert type(data["test"]) is int  # a count stays a count (split_sizes reads a float below 1 as a fraction)
    assert parse_value(int, "7") == 7


def test_compare_builds_its_configs_from_typed_settings():
    args = cli.build_parser().parse_args(["compare", "--train", "lr=1e-2", "modalities=fundus", "probe_every=auto",
                                          "--encoder", "width=0.125", "mlp_hidden=32", "--epochs", "3"])
    config = cli.train_config(args)
    assert (config.lr, config.modalities, config.probe_every, config.epochs) == (0.01, ("fundus",), "auto", 3)
    assert (config.encoder.width, config.encoder.mlp_hidden) == (0.125, 32)
    assert config.batch_size == 16  # the flag's default


def test_a_config_error_names_the_setting_it_is_about():
    args = cli.build_parser().parse_args(["compare", "--train", "temperature=0", "margin_m0=0.2", "--epochs", "5"])
    with pytest.raises(cli.UsageError) as caught:
        cli.train_config(args)
    assert caught.value.argument == "--train temperature=0"
    assert "temperature must be > 0" in caught.value.message


def test_main_prints_one_line_and_returns_2(capsys):
    assert cli.main(["compare", "--train", "lr=abc"]) == 2
    assert capsys.readouterr().err == "remd compare: error: --train lr=abc: lr takes a float, got 'abc'\n"
