"""The README fits a page and leads to every reference page; links between the pages land."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = sorted([README, REPO / "RELIABILITY.md", *(REPO / "docs").glob("*.md")])
LINK = re.compile(r"\]\(([^)\s]+)\)")


def links(page: Path) -> list[str]:
    """The targets of a page's markdown links, outside code."""
    return LINK.findall(re.sub(r"```.*?```", "", page.read_text(), flags=re.S))


def anchors(page: Path) -> set[str]:
    """The anchors GitHub makes for a page's headings: lower case, spaces to hyphens, punctuation gone."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    headings = re.findall(r"^#{1,6} +(.+?) *$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_the_readme_fits_a_page():
    assert len(README.read_text().encode()) < 15_000


def test_the_readme_links_every_docs_page_and_only_pages_that_exist():
    linked = {target.split("#")[0] for target in links(README) if target.startswith("docs/")}
    pages = {f"docs/{page.name}" for page in (REPO / "docs").glob("*.md")}
    assert linked <= pages, f"README links pages that do not exist: {sorted(linked - pages)}"
    assert pages <= linked, f"docs pages the README does not link: {sorted(pages - linked)}"
    assert "RELIABILITY.md" in links(README)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(REPO).as_posix())
def test_every_link_between_the_pages_lands_on_a_file_and_heading(page):
    for target in links(page):
        if re.match(r"[a-z]+:", target):  # http:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: link to a missing file {target}"
        if anchor and file.suffix == ".md":
            assert anchor in anchors(file), f"{page.name}: link to a missing heading {target}"


def test_the_anchor_rule_matches_githubs():
    page = REPO / "docs" / "scaling-out.md"
    assert "merge-array-jobs-with-label---shard-kn" in anchors(page)  # "merge: array jobs with label --shard K/N"
    assert not [a for a in anchors(README) if a.startswith("label-files")]  # a comment in a code block is no heading
