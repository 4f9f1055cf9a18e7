"""Docs that run: the README's Python blocks execute as written, from the repository root."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def python_blocks() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_readme_starts_with_the_two_commands() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    first = re.search(r"```bash\n(.*?)```", text, flags=re.DOTALL)
    assert first is not None
    assert first.group(1).strip().splitlines() == [
        "scripts/setup && .venv/bin/smallfit demo --data ../shared/data/banking77",
        "scripts/setup --dev && .venv/bin/pytest",
    ]
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert "scripts/setup --dev && .venv/bin/pytest" in ci


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_block_runs(index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    if not (REPO.parent / "shared" / "data" / "sms_spam").is_dir():
        pytest.fail("the README's examples read ../shared/data; it is missing")
    monkeypatch.chdir(REPO)
    run_dir = REPO / "runs" / "readme-example"
    shutil.rmtree(run_dir, ignore_errors=True)
    try:
        exec(compile(python_blocks()[index], f"README.md python block {index}", "exec"), {})
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    assert os.getcwd() == str(REPO)
