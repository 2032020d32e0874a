"""Every citation of the design notes names something that exists, and every relative link resolves.

Citation forms found in code, docstrings, configs, README.md and docs/ (the notes are docs/*.md):
- `method.md 4.6`, `method.md 2.1, 3, 1.3`, `method.md 4.1-4.13`: numbered headings of docs/method.md;
- `serving.md "Worker loop"`, `serving.md "Queue", "Redis layout"`: headings of that document (the quoted
  name is the heading, or the heading's start before ":" or " ("); the same for architecture.md,
  method.md and README;
- `architecture.md invariant 5`, `invariants 1, 3`: the numbered items under "The invariants";
- a bare `serving.md` or `docs/PATH`: the file exists.
Markdown links `[text](target)` in README.md and docs/*.md: the target file exists, and a `#fragment`
is the GitHub anchor of one of its headings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NOTES = ("architecture", "serving", "method")
SCANNED_SUFFIXES = {".py", ".md", ".toml", ".yaml", ".yml", ".html", ".js", ".json", ".cfg", ".conf", ".txt", ".sh"}
SCANNED_NAMES = {"Makefile", "Dockerfile", "run"}
SKIPPED_DIRS = {"__pycache__", "node_modules", "runs", "build", "dist"}

_NUMBER = r"\d+(?:\.\d+)*"
SECTION_CITE = re.compile(rf"\bmethod\.md`?,?\s+(?P<list>{_NUMBER}(?:\s*(?:,|-|–|and)\s*{_NUMBER}(?![\w.]))*)")
_QUOTED = r'"[^"\n]+"'
QUOTED_CITE = re.compile(
    rf"\b(?P<doc>architecture\.md|serving\.md|method\.md|README(?:\.md)?)`?,?\s+"
    rf"(?P<list>{_QUOTED}(?:(?:,\s*|\s+and\s+){_QUOTED})*)"
)
INVARIANT_CITE = re.compile(rf"\barchitecture\.md`?,?\s+invariants?\s+(?P<list>{_NUMBER}(?:\s*(?:,|and)\s*{_NUMBER})*)")
FILE_CITE = re.compile(r"(?<![\w/.-])(?:docs/)?(?P<name>[a-z]+)\.md\b")
DOCS_PATH = re.compile(r"(?<![\w/.-])docs/(?P<path>[A-Za-z0-9_./-]*[A-Za-z0-9_])")
LINK = re.compile(r"!?\[[^\]\n]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(?P<hashes>#{1,6})\s+(?P<title>.+?)\s*#*\s*$")


@dataclass(frozen=True)
class Problem:
    where: str
    citation: str
    why: str

    def __str__(self) -> str:
        return f"{self.where}: {self.citation!r}: {self.why}"


def headings(path: Path) -> list[str]:
    """Heading titles of a markdown file, fenced code blocks skipped (a `# comment` there is no heading)."""
    titles, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            titles.append(match["title"].strip())
    return titles


def section_numbers(path: Path) -> set[str]:
    """ "1", "1.2", ... from headings such as "## 1. ResShift ..." and "### 1.2 Markov chain"."""
    numbers = set()
    for title in headings(path):
        match = re.match(rf"({_NUMBER})\.?\s", title)
        if match:
            numbers.add(match[1])
    return numbers


def invariant_numbers(path: Path) -> set[str]:
    """Numbers of the list items under the heading that starts with "The invariants"."""
    numbers, inside, fenced = set(), False, False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        heading = None if fenced else HEADING.match(line)
        if heading:
            inside = heading["title"].startswith("The invariants")
        elif inside and (item := re.match(r"(\d+)\.\s", line)):
            numbers.add(item[1])
    return numbers


def names_heading(name: str, titles: list[str]) -> bool:
    return any(t == name or t.startswith(name + ":") or t.startswith(name + " (") for t in titles)


def anchor(title: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", title).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def scanned_files(root: Path) -> list[Path]:
    files = []
    for path in sorted(root.rglob("*")):
        parts = path.relative_to(root).parts
        hidden = any(p.startswith(".") and p != ".ci" for p in parts)
        if hidden or any(p in SKIPPED_DIRS or p.endswith(".egg-info") for p in parts) or not path.is_file():
            continue
        if path.suffix in SCANNED_SUFFIXES or path.name in SCANNED_NAMES:
            files.append(path)
    return files


def _split(listing: str) -> list[str]:
    return [p for p in re.split(r"\s*(?:,|and)\s*", listing) if p]


def _expand(listing: str) -> list[str]:
    """ "4.1-4.13, 3" -> ["4.1", "4.13", "3"] (a range's two ends)."""
    return [end for part in _split(listing) for end in re.split(r"\s*[-–]\s*", part)]


def citation_problems(text: str, where: str, docs: Path) -> list[Problem]:
    problems = []
    notes = {n: docs / f"{n}.md" for n in NOTES}
    readme = docs.parent / "README.md"
    numbered = (  # (citation, its numbers, the numbers the note has, what a missing one is)
        (SECTION_CITE, _expand, section_numbers, "method", "section"),
        (INVARIANT_CITE, _split, invariant_numbers, "architecture", "invariant"),
    )
    for pattern, numbers, known_in, note, kind in numbered:
        for match in pattern.finditer(text):
            known = known_in(notes[note]) if notes[note].exists() else set()
            problems += [
                Problem(where, match[0], f"docs/{note}.md has no {kind} {number}")
                for number in numbers(match["list"])
                if number not in known
            ]
    for match in QUOTED_CITE.finditer(text):
        doc = match["doc"]
        path = readme if doc.startswith("README") else docs / doc
        titles = headings(path) if path.exists() else []
        for name in re.findall(r'"([^"\n]+)"', match["list"]):
            if not names_heading(name, titles):
                problems.append(Problem(where, match[0], f"{path.relative_to(docs.parent)} has no heading {name!r}"))
    for match in FILE_CITE.finditer(text):
        if match["name"] in NOTES and not notes[match["name"]].exists():
            problems.append(Problem(where, match[0], f"docs/{match['name']}.md does not exist"))
    for match in DOCS_PATH.finditer(text):
        if not (docs / match["path"]).exists():
            problems.append(Problem(where, match[0], "no such file in docs/"))
    return problems


def link_problems(path: Path, root: Path) -> list[Problem]:
    problems = []
    where = str(path.relative_to(root))
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)  # links in code blocks are not links
    for match in LINK.finditer(text):
        target = match["target"]
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, fragment = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            problems.append(Problem(where, target, "the linked file does not exist"))
            continue
        if fragment and linked.suffix == ".md" and fragment not in {anchor(t) for t in headings(linked)}:
            problems.append(Problem(where, target, f"{linked.name} has no heading with anchor #{fragment}"))
    return problems


def all_problems(root: Path) -> list[Problem]:
    problems = []
    for path in scanned_files(root):
        text = path.read_text(encoding="utf-8", errors="replace")
        if path.resolve() == Path(__file__).resolve():
            continue  # this file's docstring shows the forms, with made-up examples
        problems += citation_problems(text, str(path.relative_to(root)), root / "docs")
    for path in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        problems += link_problems(path, root)
    return problems


def test_every_citation_and_link_resolves() -> None:
    problems = all_problems(ROOT)
    assert not problems, "broken citations or links:\n" + "\n".join(map(str, problems))


def test_the_notes_exist_with_their_cited_structure() -> None:
    for name in NOTES:
        assert (DOCS / f"{name}.md").is_file(), f"docs/{name}.md is missing"
    assert {"1", "1.4", "4.6", "5.2", "8"} <= section_numbers(DOCS / "method.md")
    assert invariant_numbers(DOCS / "architecture.md") == {"1", "2", "3", "4", "5", "6"}
    assert names_heading("Worker loop", headings(DOCS / "serving.md"))


@pytest.mark.parametrize(
    ("planted", "expected"),
    [
        ("# see method.md 9.9", "no section 9.9"),
        ("# method.md 4.1-4.99", "no section 4.99"),
        ('"""serving.md "Worker loops"."""', "no heading 'Worker loops'"),
        ('# serving.md "No such heading"', "no heading 'No such heading'"),
        ('# serving.md "Queue", "Redis layot"', "no heading 'Redis layot'"),
        ("# (architecture.md invariants 1, 7)", "no invariant 7"),
        ('# README "Nowhere"', "no heading 'Nowhere'"),
        ("# docs/missing_figure.png", "no such file"),
    ],
)
def test_a_planted_broken_citation_is_named(tmp_path: Path, planted: str, expected: str) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in NOTES:
        (docs / f"{name}.md").write_text((DOCS / f"{name}.md").read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "README.md").write_text((ROOT / "README.md").read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "module.py").write_text(f'{planted}\n# method.md 4.6; serving.md "Worker loop"\n', encoding="utf-8")
    problems = [p for p in all_problems(tmp_path) if p.where == "module.py"]
    assert len(problems) == 1 and expected in problems[0].why, problems


def test_a_broken_link_or_anchor_is_named(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "serving.md").write_text("# Serving\n\n## HTTP contract\n", encoding="utf-8")
    (tmp_path / "README.md").write_text(
        "# x\n[ok](docs/serving.md#http-contract) [gone](docs/nothing.md) [bad](#no-such)\n"
        "```\n[in code](elsewhere/ignored.md)\n```\n",
        encoding="utf-8",
    )
    found = {p.citation for p in all_problems(tmp_path)}
    assert found == {"docs/nothing.md", "#no-such"}, found
