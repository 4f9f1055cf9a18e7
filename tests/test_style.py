"""One toolchain everywhere: the lint and format checks run as part of the test suite."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import smallfit

REPO = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    exe = Path(sys.executable).with_name("ruff")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("ruff")
    if found is None:
        pytest.fail("ruff is not installed: run scripts/setup --dev")
    return [found]


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]])
def test_ruff(args: list[str]) -> None:
    out = subprocess.run([*_ruff(), *args], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_public_api_is_deliberate() -> None:
    assert smallfit.__all__ == sorted(
        [
            "Classifier",
            "DataConfig",
            "DataError",
            "FitConfig",
            "FitResult",
            "ModelInfo",
            "SmallfitError",
            "__version__",
            "fit",
            "load",
            "load_dataset",
            "load_fit_config",
            "register_backend",
        ]
    )
    for name in smallfit.__all__:
        assert getattr(smallfit, name) is not None
