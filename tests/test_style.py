"""One toolchain everywhere: the lint, format, type and import-layer checks run as part of the
test suite, and modules stay small."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import smallfit

REPO = Path(__file__).resolve().parents[1]


def _tool(name: str) -> list[str]:
    exe = Path(sys.executable).with_name(name)
    if exe.exists():
        return [str(exe)]
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run scripts/setup --dev")
    return [found]


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]])
def test_ruff(args: list[str]) -> None:
    out = subprocess.run([*_tool("ruff"), *args], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_type_checker_finds_nothing_in_src() -> None:
    """mypy over src/smallfit with the pydantic plugin ([tool.mypy] in pyproject.toml)."""
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_the_import_layers_hold() -> None:
    """The layers and the no-cycles contract in [tool.importlinter] (pyproject.toml)."""
    out = subprocess.run(
        [*_tool("lint-imports"), "--no-cache"], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_configs_import_light() -> None:
    """``import smallfit.config`` reaches every stage's config and nothing else of the stages:
    no numpy or torch, and of smallfit only config modules, package inits (lazy) and the ground
    floor. A stage config that imports its stage's code (and so its weight) fails here."""
    code = "import json, sys\nimport smallfit.config\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout)
    heavy = [m for m in loaded if m.split(".")[0] in {"numpy", "torch", "transformers", "sklearn"}]
    assert not heavy, heavy
    packages = {p.parent.name for p in Path(smallfit.__file__).parent.glob("*/__init__.py")}
    ground = {"errors", "hashing", "lazy", "schema", "compress.steps", "llm.prompt", "run.layout"}
    ours = [m.removeprefix("smallfit.") for m in loaded if m.startswith("smallfit.")]
    stray = [m for m in ours if m not in packages and m not in ground and not m.endswith("config")]
    assert not stray, f"import smallfit.config also loads {stray}"
    assert {"data.config", "teach.config", "distill.config", "route.config"} <= set(ours)


def test_no_export_shadows_a_submodule() -> None:
    """A package that exports a name lazily must not also have a submodule of that name: once
    the submodule is imported, ``from package import name`` would give the module instead."""
    import importlib
    import pkgutil

    clashes = []
    for info in pkgutil.walk_packages(smallfit.__path__, "smallfit."):
        if not info.ispkg:
            continue
        package = importlib.import_module(info.name)
        subs = {m.name for m in pkgutil.iter_modules(package.__path__)}
        clashes += [f"{info.name}.{n}" for n in getattr(package, "__all__", []) if n in subs]
    assert not clashes, f"exported names that are also submodules: {clashes}"


def test_modules_stay_small() -> None:
    """No module of the package is over 500 lines."""
    root = Path(smallfit.__file__).parent
    big = {}
    for file in sorted(root.rglob("*.py")):
        lines = len(file.read_text("utf-8").splitlines())
        if lines > 500:
            big[str(file.relative_to(root))] = lines
    assert not big, f"modules over their line budget: {big}"


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


def test_dependency_ranges_are_the_tested_ones() -> None:
    """Each declared range admits one minor release, and the installed one is its minimum: what
    the suite runs is what a user's install can get (no untested lower bound)."""
    import importlib.metadata
    import re
    import tomllib

    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["project"]
    wide = []
    for line in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        req = Requirement(line)
        installed = Version(importlib.metadata.version(req.name).split("+")[0])
        lows = [Version(s.version) for s in req.specifier if s.operator in (">=", "~=")]
        if not req.specifier.contains(installed) or not lows:
            wide.append(f"{line}: installed {installed}")
            continue
        low = lows[0]
        nxt = Version(f"{low.major}.{low.minor + 1}")
        if req.specifier.contains(nxt) or (low.major, low.minor) != (
            installed.major,
            installed.minor,
        ):
            wide.append(f"{line}: admits {nxt} or its minimum is not the installed {installed}")
    assert wide == [], "untested ranges:\n" + "\n".join(wide)
    assert re.search(r'"torch>=2\.13,<2\.14"', (REPO / "pyproject.toml").read_text("utf-8"))


PROVIDED_BY = {"starlette": "fastapi", "httptools": "uvicorn"}
"""Packages imported at module level that a declared dependency guarantees: FastAPI is built
on Starlette, and uvicorn[standard] installs httptools."""


def test_module_level_imports_are_declared_dependencies() -> None:
    """Every third-party package a module imports when it loads is a declared dependency, not
    a dev extra or another package's dependency: `httpx` came with openai 2 but not openai 3,
    and `smallfit serve` failed to start on a plain install while every test passed."""
    import ast
    import importlib.metadata
    import re
    import tomllib

    from packaging.requirements import Requirement

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    project = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["project"]
    declared = {norm(Requirement(line).name) for line in project["dependencies"]}
    distributions = importlib.metadata.packages_distributions()
    missing = []
    for path in sorted((REPO / "src" / "smallfit").rglob("*.py")):
        for node in ast.parse(path.read_text("utf-8")).body:
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for top in {name.split(".")[0] for name in names}:
                if top in sys.stdlib_module_names or top in ("smallfit", "__future__"):
                    continue
                owners = {norm(d) for d in distributions.get(top, [])}
                if not owners & declared and PROVIDED_BY.get(top) not in declared:
                    missing.append(f"{path.relative_to(REPO)}: {top} ({sorted(owners)})")
    assert missing == [], "imported when loaded, not a declared dependency:\n" + "\n".join(missing)


def test_ci_runs_the_readme_second_command() -> None:
    """A newcomer's test command is the whole CI: .ci/run runs the README's second command and
    nothing else."""
    readme = (REPO / "README.md").read_text("utf-8")
    block = readme.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert len(block) == 2
    ci = (REPO / ".ci" / "run").read_text("utf-8").splitlines()
    commands = [ln for ln in ci if ln.strip() and not ln.startswith(("#", "set ", "cd "))]
    assert commands == [block[1]]
