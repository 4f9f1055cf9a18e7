"""Student training under ``accelerate launch``: the README's line, on two CPU processes. The
Trainer spreads the training over both (DDP over gloo), the first process writes, and ``smallfit
fit`` of the same config then reuses the trained student."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import shared_dataset, write_slice

from smallfit.testing.llama_server import free_port

pytestmark = pytest.mark.slow


def test_accelerate_launch_trains_a_student_on_two_processes(tmp_path: Path) -> None:
    folder = shared_dataset("snips")
    train = write_slice(folder / "train.jsonl", tmp_path / "train.jsonl", per_label=12)
    test = write_slice(folder / "test.jsonl", tmp_path / "test.jsonl", per_label=4)
    config = tmp_path / "fit.yaml"
    config.write_text(
        f"""run_dir: {tmp_path / "run"}
data: {{train: {train}, test: {test}, dev_fraction: 0.2}}
teacher: {{source: gold}}
students:
  - kind: transformer
    name: mini
    base: minilm-l6
    train: {{epochs: 1, min_steps: 8, batch_size: 8, max_length: 32, patience: 0}}
  - kind: linear
route: null
select: {{quality_floor: "0.5"}}
evaluate: {{isolate: false, latency_queries: 5, warmup: 1, throughput_batches: 1}}
""",
        encoding="utf-8",
    )
    launched = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.accelerate_cli",
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--main_process_port",
            str(free_port()),
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "smallfit.cli",
            "distill",
            "--config",
            str(config),
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    # one process reports (the other trains and stays quiet)
    assert launched.stdout.count("stages run: student:mini, student:linear") == 1, launched.stdout
    manifest = json.loads((tmp_path / "run" / "models" / "mini" / "smallfit.json").read_text())
    training = manifest["lineage"]["training"]
    assert training["processes"] == 2 and training["steps"] >= 4
    stages = json.loads((tmp_path / "run" / "stages.json").read_text())
    assert set(stages) == {"student:mini", "student:linear"}
    assert not (tmp_path / "run" / "models" / "mini.work").exists()  # checkpoints cleared

    from smallfit.config import load_fit_config
    from smallfit.pipeline import fit

    result = fit(load_fit_config(config), progress=False, log=lambda _: None)
    assert {"student:mini", "student:linear"} <= set(result.stages_skipped)
    mini = result.candidate("mini")
    assert mini is not None and mini.quality.accuracy > 0.5


def test_fit_itself_refuses_a_distributed_launch(tmp_path: Path, monkeypatch) -> None:
    from smallfit.config import FitConfig
    from smallfit.errors import SmallfitError
    from smallfit.pipeline import fit

    monkeypatch.setenv("WORLD_SIZE", "2")
    config = FitConfig.model_validate({"data": {"train": str(tmp_path / "none.jsonl")}})
    with pytest.raises(SmallfitError, match="smallfit distill"):
        fit(config, progress=False, log=lambda _: None)
