"""pyproject.toml and environment.yml must describe the same environment."""

import re
import tomllib
from pathlib import Path

import yaml
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[2]
CONDA_NAMES = {"pytorch": "torch", "python-kaleido": "kaleido"}          # conda package name -> PyPI name
CONDA_ONLY = {"python", "pip"}


def _split(requirement: str) -> tuple[str, str]:
    name, spec = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", requirement).groups()
    return name.lower().replace("_", "-"), spec.replace(" ", "")


def pyproject_requirements(root: Path = ROOT) -> dict[str, str]:
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for group in project["optional-dependencies"].values() for r in group]
    return dict(_split(r) for r in reqs)


def conda_requirements(root: Path = ROOT) -> dict[str, str]:
    env = yaml.safe_load((root / "environment.yml").read_text())
    out = {}
    for dep in env["dependencies"]:
        if isinstance(dep, str):
            name, spec = _split(dep.replace("=", "==", 1) if re.match(r"^[\w.-]+=[^=]", dep) else dep)
            if name not in CONDA_ONLY:
                out[CONDA_NAMES.get(name, name)] = spec
    return out


def test_pyproject_and_environment_yml_name_the_same_packages_and_versions():
    pip, conda = pyproject_requirements(), conda_requirements()
    assert set(pip) == set(conda), f"only in pyproject: {set(pip) - set(conda)}; only in environment.yml: {set(conda) - set(pip)}"
    differing = {k: (pip[k], conda[k]) for k in pip if SpecifierSet(pip[k]) != SpecifierSet(conda[k])}
    assert not differing, f"version specifiers differ: {differing}"


def test_the_comparison_notices_a_missing_package(tmp_path):
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    env["dependencies"] = [d for d in env["dependencies"] if not (isinstance(d, str) and d.startswith("seaborn"))]
    (tmp_path / "environment.yml").write_text(yaml.safe_dump(env))
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    assert "seaborn" in set(pyproject_requirements(tmp_path)) - set(conda_requirements(tmp_path))


def test_torch_pin_admits_the_cpu_wheel_and_the_gpu_machines_but_no_newer_release():
    spec = SpecifierSet(pyproject_requirements()["torch"])
    assert "2.13.0" in spec and "2.11.0" in spec
    assert "2.13.1" not in spec and "2.14.0" not in spec and "2.15.0" not in spec


def test_no_torchvision_or_timm_dependency():
    assert not {"torchvision", "timm"} & set(pyproject_requirements())
