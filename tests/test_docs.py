"""Every ```python block of docs/*.md runs, so the examples never rot.

The blocks of one page run in order in one namespace (later blocks use earlier variables), in a fresh temporary
working directory, offline (`NONLOCAL_ZOO_OFFLINE=1`, `HF_HUB_OFFLINE=1`: no downloads). A block right after a line
`<!-- skip-test -->` is not run (lines that need real checkpoints); `SKIPPED` pins how many each page has, so a
new skipped block is a deliberate change. ```text blocks are never run.
"""
import os
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
SKIP_MARKER = "<!-- skip-test -->"
REQUIRED_PAGES = ("quickstart.md", "classify_a_video.md", "finetune.md", "add_a_checkpoint_format.md",
                  "choose_a_model.md", "nonlocal_memory.md", "export.md", "long_videos.md",
                  "scale_out.md")
# Blocks that need real weights or downloads, per page.
SKIPPED = {"quickstart.md": 1, "classify_a_video.md": 1, "finetune.md": 1, "choose_a_model.md": 1, "export.md": 0}
_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(text):
    """`[(line number, code, skipped)]` of the ```python blocks of a Markdown text."""
    blocks = []
    for match in _FENCE.finditer(text):
        if match.group(1) != "python":
            continue
        before = text[:match.start()].rstrip("\n").splitlines()
        skipped = bool(before) and before[-1].strip() == SKIP_MARKER
        blocks.append((text[:match.start()].count("\n") + 1, match.group(2), skipped))
    return blocks


def test_block_extraction():
    text = "a\n```python\nx = 1\n```\n<!-- skip-test -->\n```python\nraise SystemExit\n```\n```text\nno\n```\n"
    assert python_blocks(text) == [(2, "x = 1\n", False), (6, "raise SystemExit\n", True)]


def test_required_pages_exist():
    missing = [page for page in REQUIRED_PAGES if not (DOCS / page).is_file()]
    assert not missing, f"docs pages missing: {missing}"


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_page_snippets_run(page, tmp_path, monkeypatch):
    text = (DOCS / page).read_text(encoding="utf-8")
    blocks = python_blocks(text)
    skipped = sum(1 for _, _, skip in blocks if skip)
    assert skipped == SKIPPED.get(page, 0), f"{page}: {skipped} blocks marked {SKIP_MARKER}"
    assert any(not skip for _, _, skip in blocks), f"{page} has no executed python block"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NONLOCAL_ZOO_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NONLOCAL_ZOO_HOME", str(tmp_path / "cache"))
    namespace = {"__name__": f"docs_{page[:-3]}"}
    for line, code, skip in blocks:
        if skip:
            compile(code, f"docs/{page}:{line}", "exec")  # skipped blocks must still be valid Python
            continue
        exec(compile(code, f"docs/{page}:{line}", "exec"), namespace)
    os.chdir(DOCS)  # leave the temporary directory before pytest removes it
