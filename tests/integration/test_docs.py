"""The README and the docs pages (and the benchmark results they link): every relative link resolves to
a file, every docs page is reachable from the README, the README stays one screen (under 200 lines),
and its library example runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
RESULTS = sorted((ROOT / "benchmarks" / "results").glob("*.md"))  # benchmark numbers, linked from docs
README_LIMIT = 200  # lines; the README is the way in, the rest lives in docs/

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~)")
EXTERNAL = ("http://", "https://", "mailto:")


def prose(text: str) -> str:
    """``text`` without its fenced code blocks (code is not a link)."""
    kept, inside = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            inside = not inside
            continue
        if not inside:
            kept.append(line)
    return "\n".join(kept)


def relative_links(path: Path) -> list[str]:
    """The relative link targets of a Markdown file, anchors stripped (same-page anchors dropped)."""
    targets = []
    for target in LINK.findall(prose(path.read_text(encoding="utf-8"))):
        if target.startswith(EXTERNAL) or target.startswith("#"):
            continue
        targets.append(target.split("#", 1)[0])
    return targets


def test_the_link_finder_sees_links_and_skips_code(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("see [a](a.md#part), ![fig](img/f.png \"title\"), [web](https://example.org), [here](#top)\n"
                    "```python\nx = d[0](1)  # [not](a-link.md)\n```\n", encoding="utf-8")
    assert relative_links(page) == ["a.md", "img/f.png"]


def test_there_are_docs_pages():
    assert README.is_file()
    assert PAGES, "docs/*.md: no pages found"


@pytest.mark.parametrize("path", [README, *PAGES, *RESULTS], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    missing = [t for t in relative_links(path) if not (path.parent / t).exists()]
    assert not missing, f"{path.relative_to(ROOT)} links to files that do not exist: {missing}"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / t).resolve() for t in relative_links(README)}
    unlinked = [p.name for p in PAGES if p.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def test_readme_is_under_200_lines():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < README_LIMIT, f"README.md has {len(lines)} lines; keep it under {README_LIMIT} (move detail to docs/)"


def readme_example() -> str:
    """The README's library example: the first ``python`` block of its library section."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## The library", 1)
    assert len(section) == 2, "README.md has no '## The library' section"
    match = re.search(r"```python\n(.*?)```", section[1], re.S)
    assert match, "README.md's library section has no python block"
    return match.group(1)


@pytest.mark.slow
def test_readme_library_example_runs(tmp_path):
    env = {**os.environ, "REMD_OUTPUTS": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", readme_example()], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"the README's example failed:\n{done.stderr[-3000:]}"
    assert "re-m3dr" in done.stdout and "test_r2" in done.stdout
    assert (tmp_path / "readme-example" / "summary.csv").is_file()
