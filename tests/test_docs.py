"""The README and docs/ as a reader meets them: a short README that opens with a picture, its quickstart as CI
runs it, and links that lead somewhere (every relative link's file exists, every anchor is a heading there)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # no headings inside code blocks
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def test_slugs_follow_github():
    assert slug("From photos: `ovseg3d prepare`") == "from-photos-ovseg3d-prepare"
    assert slug("The README's figures (2026-11-26, latest)") == "the-readmes-figures-2026-11-26-latest"


def test_the_readme_is_short_and_opens_with_a_picture_ovseg3d_made():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, len(lines)
    pictures = [m.group(1) for line in lines[:12] for m in LINK.finditer(line) if line.lstrip().startswith("![")]
    assert pictures and (ROOT / pictures[0]).is_file()


def test_the_quickstart_is_two_commands_and_the_second_is_what_ci_runs():
    text = (ROOT / "README.md").read_text()
    quick = text[text.index("## Install and quickstart") :]
    blocks = re.findall(r"```bash\n(.*?)```", quick, re.S)[:2]
    assert blocks[0].strip().startswith('pip install torch==2.13.0 -e ".[dev]" && ovseg3d run scenes/demo')
    ci = (ROOT / ".ci" / "run").read_text()
    assert blocks[1].strip() == "python -m pytest -q -n 2" and ci.rstrip().endswith(blocks[1].strip())


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_leads_to_a_file_and_heading(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no such heading")
    assert not broken, broken
