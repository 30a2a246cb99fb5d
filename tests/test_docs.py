"""The documentation works as written: README.md and every docs/*.md page.

Every ```python block runs as a standalone program in its own interpreter; a
block that is not a standalone program is marked ```text or ```sh by its
author. Every relative link (and #anchor) points at a file (and a heading)
that exists, and the docs index lists every page. New pages are picked up
without touching this file.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^\s`]*)")
_INLINE_CODE = re.compile(r"(`+).+?\1", re.S)
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


@dataclasses.dataclass(frozen=True)
class Block:
    page: pathlib.Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def parse(page: pathlib.Path) -> tuple[list[Block], str]:
    """The fenced blocks of ``page`` and its text outside them."""
    blocks: list[Block] = []
    prose: list[str] = []
    fence: str | None = None
    lang = ""
    start = 0
    body: list[str] = []
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        match = _FENCE.match(line)
        if fence is None:
            if match:
                fence, lang, start, body = match.group(1), match.group(2).lower(), number, []
            else:
                prose.append(line)
        elif match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) and not match.group(2):
            blocks.append(Block(page, start, lang, "\n".join(body) + "\n"))
            fence = None
            prose.append("")
        else:
            body.append(line)
    assert fence is None, f"{page.relative_to(ROOT)}:{start}: unclosed code fence"
    return blocks, "\n".join(prose)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: pathlib.Path) -> set[str]:
    _, prose = parse(page)
    seen: dict[str, int] = {}
    result: set[str] = set()
    for line in prose.splitlines():
        match = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


PYTHON_BLOCKS = [block for page in PAGES for block in parse(page)[0] if block.lang in ("python", "py", "python3")]


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[block.id for block in PYTHON_BLOCKS])
def test_python_block_runs(block: Block, tmp_path: pathlib.Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(block.code, encoding="utf-8")
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{block.id} failed:\n{result.stdout}\n{result.stderr}"


def test_docs_have_runnable_examples() -> None:
    assert any(block.page.name == "README.md" and block.page.parent == ROOT for block in PYTHON_BLOCKS)
    assert len(PYTHON_BLOCKS) >= 10


def _links() -> list[tuple[pathlib.Path, str]]:
    links = []
    for page in PAGES:
        _, prose = parse(page)
        for target in _LINK.findall(_INLINE_CODE.sub("", prose)):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
                links.append((page, target))
    return links


LINKS = _links()


@pytest.mark.parametrize(
    ("page", "target"), LINKS, ids=[f"{page.relative_to(ROOT)}->{target}" for page, target in LINKS]
)
def test_relative_link_resolves(page: pathlib.Path, target: str) -> None:
    path, _, anchor = target.partition("#")
    resolved = (page.parent / path).resolve() if path else page
    assert resolved.exists(), f"{page.relative_to(ROOT)}: {target} does not exist"
    if anchor and resolved.suffix == ".md":
        assert anchor in anchors(resolved), f"{page.relative_to(ROOT)}: no heading for #{anchor} in {resolved.name}"


def test_links_were_found() -> None:
    assert any(page.name == "README.md" and target == "docs/README.md" for page, target in LINKS)


def test_index_lists_every_page() -> None:
    index = DOCS / "README.md"
    _, prose = parse(index)
    listed = {target.partition("#")[0] for target in _LINK.findall(prose)}
    missing = [page.name for page in DOCS.glob("*.md") if page != index and page.name not in listed]
    assert not missing, f"docs/README.md does not link {missing}"


def test_slug_matches_github() -> None:
    assert slug("Multi-worker servers and `traced-transport run`") == "multi-worker-servers-and-traced-transport-run"
    assert slug("Tracing scope: `tracing()`") == "tracing-scope-tracing"
    assert slug("Zero-code: `instrument()`") == "zero-code-instrument"
