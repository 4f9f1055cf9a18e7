"""The command line as a user meets it: fast help, clear errors, exit code 2, --debug."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smallfit.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from smallfit.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "Usage:" in out.stdout
    assert out.stdout.strip().endswith("NO-TORCH")


def _commands() -> list[str]:
    from smallfit.cli import main

    return sorted(main.commands)


@pytest.mark.parametrize("command", _commands())
def test_every_command_has_help(command: str) -> None:
    out = run_cli(command, "--help")
    assert out.returncode == 0
    assert "Usage:" in out.stdout


def test_the_help_lists_every_command() -> None:
    listed = run_cli("--help").stdout
    assert {"fit", "demo", "route", "serve", "report"} <= set(_commands())
    for command in _commands():
        assert f"  {command}" in listed, command


def _bad_data_config(tmp_path: Path) -> Path:
    train = tmp_path / "train.jsonl"
    train.write_text(
        '{"text": "hello", "label": "a"}\n{"text": "", "label": "b"}\n', encoding="utf-8"
    )
    config = tmp_path / "fit.yaml"
    config.write_text(f"run_dir: {tmp_path / 'run'}\ndata:\n  train: {train}\n", encoding="utf-8")
    return config


def test_bad_input_is_one_clear_line_and_exit_code_2(tmp_path: Path) -> None:
    out = run_cli("fit", "--config", str(_bad_data_config(tmp_path)))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert f"{tmp_path / 'train.jsonl'}:2" in out.stderr
    assert "'text'" in out.stderr


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    out = run_cli("--debug", "fit", "--config", str(_bad_data_config(tmp_path)))
    assert out.returncode == 2
    assert "Traceback" in out.stderr and "DataError" in out.stderr


def test_bad_config_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "fit.yaml"
    config.write_text("data:\n  train: x.jsonl\n  text_feild: body\n", encoding="utf-8")
    out = run_cli("fit", "--config", str(config))
    assert out.returncode == 2
    assert "data.text_feild" in out.stderr and "Traceback" not in out.stderr


def test_demo_writes_a_valid_config(tmp_path: Path, snips_slice: Path) -> None:
    out = run_cli(
        "demo",
        "--data",
        str(snips_slice),
        "--run-dir",
        str(tmp_path / "r"),
        "--write-config-only",
    )
    assert out.returncode == 0, out.stderr
    from smallfit.config import load_fit_config

    config = load_fit_config(tmp_path / "r" / "config.yaml")
    assert config.data.train == (snips_slice / "train.jsonl").resolve()
    assert [s.name for s in config.students] == ["minilm-l6", "linear", "static"]


def test_demo_on_a_folder_without_data_fails_cleanly(tmp_path: Path) -> None:
    out = run_cli("demo", "--data", str(tmp_path))
    assert out.returncode == 2
    assert "train.jsonl" in out.stderr and "Traceback" not in out.stderr


def test_zoo_lists_offline_aliases() -> None:
    out = run_cli("zoo")
    assert out.returncode == 0
    assert "minilm-l6" in out.stdout and "mpnet-base" in out.stdout


def test_version() -> None:
    out = run_cli("--version")
    assert out.returncode == 0 and "0.1.0" in out.stdout


def test_generated_docs_are_up_to_date() -> None:
    from smallfit.docs import main as docs_main

    assert docs_main(["--check"]) == 0, "docs/ is stale: run python -m smallfit.docs"


@pytest.mark.slow
def test_teacher_command_fine_tunes_mpnet_base(tmp_path: Path) -> None:
    from conftest import shared_dataset, write_slice

    folder = shared_dataset("sms_spam")
    train = write_slice(folder / "train.jsonl", tmp_path / "train.jsonl", per_label=40)
    test = write_slice(folder / "test.jsonl", tmp_path / "test.jsonl", per_label=15)
    out = run_cli(
        "teacher", "--data", str(train), "--test", str(test), "--base", "mpnet-base",
        "--epochs", "0.5", "--min-steps", "0", "-o", str(tmp_path / "teacher"), "-q",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    accuracy = float(out.stdout.split("test accuracy ")[1].rstrip("%\n")) / 100
    assert accuracy >= 0.8  # 30 test messages, ham/spam; chance is 0.5
    from smallfit.models import load

    model = load(tmp_path / "teacher")
    assert model.info.parameters > 100_000_000  # mpnet-base, not a stand-in
    assert model.lineage["base"] == "mpnet-base"


def test_compress_refuses_an_unknown_step_with_exit_code_2(
    tmp_path: Path, snips_slice: Path
) -> None:
    out = run_cli(
        "compress", str(tmp_path), "--step", "prune-everything", "--check-data",
        str(snips_slice / "train.jsonl"), "-o", str(tmp_path / "out"),
    )  # fmt: skip
    assert out.returncode == 2
    assert "prune-everything" in out.stderr and "known methods" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_compress_chains_steps_and_heals_against_a_teacher(
    tmp_path: Path, snips_slice: Path, snips_minilm: Path
) -> None:
    out = run_cli(
        "compress", str(snips_minilm), "--step", "drop-layers:keep=2,heal.epochs=0.5",
        "--step", "onnx", "--step", "int8-dynamic:min_agreement=0.8",
        "--check-data", str(snips_slice / "train.jsonl"), "--teacher", str(snips_minilm),
        "-o", str(tmp_path / "out"), "-q",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"healing against {snips_minilm} on 280 texts" in out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"saved {tmp_path / 'out'}: onnx")
    assert [line.split()[0] for line in lines[1:]] == ["drop-layers", "onnx", "int8-dynamic"]
    from smallfit.models.base import read_manifest

    manifest = read_manifest(tmp_path / "out")
    assert manifest["architecture"]["layers"] == 2
    assert manifest["quantization"].startswith("int8-dynamic")


def test_compress_refuses_a_step_in_the_wrong_order_before_any_work(
    tmp_path: Path, snips_slice: Path, snips_minilm: Path
) -> None:
    out = run_cli(
        "compress", str(snips_minilm), "--step", "onnx", "--step", "drop-layers:keep=3",
        "--check-data", str(snips_slice / "train.jsonl"), "-o", str(tmp_path / "out"),
    )  # fmt: skip
    assert out.returncode == 2
    assert "step 2 (drop-layers)" in out.stderr and "before 'onnx'" in out.stderr
    assert not (tmp_path / "out").exists()
