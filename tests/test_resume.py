"""Training survives kill -9: a rerun resumes from the newest checkpoint and finishes the same
schedule. A real process, a real SIGKILL, real weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = """
import json, sys
import numpy as np
from smallfit import zoo
from smallfit.config import KDConfig, TrainConfig
from smallfit.models.transformer import TransformerClassifier
from smallfit.train import train_classifier

rows = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8")]
labels = sorted({r["label"] for r in rows})
targets = np.zeros((len(rows), len(labels)), np.float32)
targets[np.arange(len(rows)), [labels.index(r["label"]) for r in rows]] = 1
texts = [r["text"] for r in rows]
model = TransformerClassifier.from_base(zoo.resolve("minilm-l6"), labels=labels, name="s",
                                        max_length=32)
config = TrainConfig(epochs=3, batch_size=8, lr=1e-4, max_length=32, evals_per_epoch=4,
                     patience=0, head_warmstart=False)
summary = train_classifier(model, (texts, targets, texts[:40], targets[:40]), train=config,
                           kd=KDConfig(alpha=0.0), output_dir=sys.argv[2], progress=False)
print("SUMMARY " + json.dumps(summary))
"""


def _summary(stdout: str) -> dict:
    line = next(x for x in stdout.splitlines() if x.startswith("SUMMARY "))
    return json.loads(line.removeprefix("SUMMARY "))


def test_kill_9_midway_then_resume_finishes_the_schedule(tmp_path: Path, snips_slice: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT, encoding="utf-8")
    data = tmp_path / "train.jsonl"
    lines = (snips_slice / "train.jsonl").read_text(encoding="utf-8").splitlines()
    data.write_text("\n".join(lines[::2]) + "\n", encoding="utf-8")  # 140 rows, 7 labels
    out = tmp_path / "work"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, str(script), str(data), str(out)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    deadline = time.monotonic() + 300
    checkpoints = out / "checkpoints"
    while time.monotonic() < deadline and proc.poll() is None:
        if list(checkpoints.glob("checkpoint-*/trainer_state.json")):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "training finished before a checkpoint could be interrupted"
    time.sleep(0.5)  # the kill may land mid-save: a torn checkpoint must not break resume
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    log.close()
    assert proc.returncode == -signal.SIGKILL
    killed_at = sorted(int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*"))
    assert killed_at, "no checkpoint on disk after the kill"

    done = subprocess.run(
        [sys.executable, str(script), str(data), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = _summary(done.stdout)
    assert summary["resumed_from"] is not None
    assert int(summary["resumed_from"].split("-")[1]) in killed_at
    steps_per_epoch = -(-140 // 8)
    assert summary["steps"] == 3 * steps_per_epoch
    assert summary["stopped_by"] == "epochs"


def test_torn_checkpoints_are_skipped(tmp_path: Path) -> None:
    from smallfit.train import last_complete_checkpoint

    ckpts = tmp_path / "checkpoints"
    for step, state in ((4, "{}"), (8, "{}"), (12, None), (16, '{"truncat')):
        (ckpts / f"checkpoint-{step}").mkdir(parents=True)
        if state is not None:
            (ckpts / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    assert last_complete_checkpoint(ckpts) == str(ckpts / "checkpoint-8")
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-4", "checkpoint-8"]
    assert last_complete_checkpoint(tmp_path / "none") is None
