"""A clean run prints no library noise: what transformers, torch and the other libraries print,
log and warn goes to the run's log file, while smallfit's own lines reach the terminal."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from smallfit.logs import LOG_FILE, beside, library_output


def _undocumented_forward() -> None:
    """What transformers does when it imports a model whose ``forward`` has a parameter its
    docstring does not cover (BertModel's ``past_key_values`` in some 5.x releases): its own
    ``auto_docstring`` prints an ``[ERROR]`` line to stdout."""
    from transformers.utils.auto_docstring import auto_docstring

    class BertModel:
        @auto_docstring
        def forward(self, input_ids=None, past_key_values=None):
            """"""

    assert BertModel


def _streams(logger: str) -> dict[logging.Handler, object]:
    """A logger's stream handlers and their streams (a test runner may add handlers of its own
    that have none)."""
    return {h: h.stream for h in logging.getLogger(logger).handlers if hasattr(h, "stream")}


def test_library_noise_goes_to_the_log_file_and_ours_to_the_terminal(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers.utils import logging as hf_logging

    from smallfit.cli import _log

    monkeypatch.delenv("SMALLFIT_DEBUG", raising=False)
    _undocumented_forward()  # outside the block: the terminal gets it (the bug, as seen)
    assert "[ERROR]" in capfd.readouterr().out

    log_file = tmp_path / "run" / LOG_FILE
    before = _streams("transformers")
    assert before  # transformers' own handler, made when it was first imported
    with library_output(log_file, what="fit") as used:
        assert used == log_file
        _log("[teacher] running")
        _undocumented_forward()
        hf_logging.get_logger("transformers.modeling_utils").error("a library error line")
        with library_output(tmp_path / "inner.log") as inner:  # nested: the outer file keeps it
            assert inner == log_file
            print("[torch.onnx] Obtain model graph ... done")

    terminal = capfd.readouterr()
    assert "[ERROR]" not in terminal.out + terminal.err
    assert "a library error line" not in terminal.out + terminal.err
    assert "torch.onnx" not in terminal.out + terminal.err
    assert "[teacher] running" in terminal.err
    assert f"library output (warnings, logs): {log_file}" in terminal.err
    logged = log_file.read_text("utf-8")
    assert "smallfit fit" in logged.splitlines()[0]
    assert "[ERROR] `past_key_values` is part of " in logged
    assert "BertModel.forward's signature, but not documented" in logged
    assert "a library error line" in logged and "[torch.onnx] Obtain model graph" in logged
    assert "[teacher] running" not in logged
    assert not (tmp_path / "inner.log").exists()
    # after the block, the library's handlers write where they wrote before it
    after = _streams("transformers")
    assert after == before and not (tmp_path / "after.log").exists()


def test_debug_shows_library_output_on_the_terminal_too(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMALLFIT_DEBUG", "1")
    with library_output(tmp_path / LOG_FILE):
        _undocumented_forward()
    assert "[ERROR] `past_key_values`" in capfd.readouterr().out
    assert "[ERROR] `past_key_values`" in (tmp_path / LOG_FILE).read_text("utf-8")


def test_warnings_and_log_records_go_by_who_sent_them(tmp_path: Path) -> None:
    """In a fresh interpreter: pytest records warnings and log records itself, so there they
    never reach a stream."""
    log_file = tmp_path / LOG_FILE
    script = (
        "import logging, sys, warnings\n"
        "from smallfit.logs import library_output\n"
        f"with library_output({str(log_file)!r}):\n"
        "    warnings.warn_explicit('torch.onnx: a deprecated option', FutureWarning,\n"
        "                           'torch/onnx/__init__.py', 1, module='torch.onnx')\n"
        "    print('smallfit line', file=sys.stderr)\n"
        "    logging.getLogger('smallfit.train').warning('removing incomplete checkpoint')\n"
        "    logging.getLogger('onnxscript').warning('an optimizer hint')\n"
    )
    out = subprocess.run(
        [sys.executable, "-W", "always", "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "smallfit line" in out.stderr and "removing incomplete checkpoint" in out.stderr
    assert "deprecated option" not in out.stderr and "optimizer hint" not in out.stderr
    logged = log_file.read_text("utf-8")
    assert "FutureWarning: torch.onnx: a deprecated option" in logged
    assert "an optimizer hint" in logged and "incomplete checkpoint" not in logged


def test_log_beside_a_model_directory() -> None:
    assert beside("out/model-v1.2/") == Path("out/model-v1.2.log")


def test_fit_keeps_its_lines_on_the_terminal_and_library_output_in_the_run_log(
    snips_slice: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch
) -> None:
    from smallfit.config import FitConfig
    from smallfit.models import linear
    from smallfit.pipeline import fit

    def noisy(*args, **kwargs):  # a library printing while the student trains
        from transformers.utils import logging as hf_logging

        hf_logging.get_logger("transformers.trainer").error("[ERROR] library noise")
        return fit_linear(*args, **kwargs)

    fit_linear = linear.LinearClassifier.fit
    monkeypatch.setattr(linear.LinearClassifier, "fit", noisy)
    monkeypatch.delenv("SMALLFIT_DEBUG", raising=False)
    config = FitConfig.model_validate(
        {
            "run_dir": str(tmp_path / "run"),
            "data": {"train": str(snips_slice / "train.jsonl"),
                     "test": str(snips_slice / "test.jsonl")},
            "teacher": {"source": "gold"},
            "students": [{"kind": "linear"}],
            "select": {"quality_floor": "0.5"},
            "evaluate": {"isolate": False, "latency_queries": 10, "warmup": 1,
                         "throughput_batches": 2},
        }
    )  # fmt: skip
    fit(config, progress=False)
    terminal = capfd.readouterr()
    assert "[data] " in terminal.out and "[student:linear] done" in terminal.out
    assert "library noise" not in terminal.out + terminal.err
    logged = (tmp_path / "run" / LOG_FILE).read_text("utf-8")
    assert "smallfit fit" in logged and "[ERROR] library noise" in logged
