"""Shared fixtures: the real datasets in ../shared/data, sliced small, and the real zoo weights."""

from __future__ import annotations

import atexit
import faulthandler
import gc
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SMALLFIT_SHARED_DATA", REPO.parent / "shared" / "data"))

# Keep the machine's two cores for the work under test; no hub access, ever.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# A crash in native code prints the Python stacks of every thread. Enabled before pytest's own
# faulthandler plugin configures, so that plugin re-arms it when the session ends.
faulthandler.enable()

_SESSION: list[pytest.Session] = []
"""The finished session, whose ``exitstatus`` pytest returns (see :func:`_end_after_the_report`)."""


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Release what the tests left in reference cycles (llama.cpp contexts, ONNX Runtime
    sessions, torch modules) while every library is still whole, with faulthandler armed."""
    gc.collect()
    _SESSION[:] = [session]


@atexit.register
def _end_after_the_report() -> None:
    """End the test process with pytest's exit status before CPython tears its modules down.

    Registered when the conftest is imported, so it runs after the exit handlers of the
    libraries the tests import later (Ray's, llama.cpp's, torch's). The status is read now, as
    a later ``sessionfinish`` hook may have changed it; after an uncaught exception (a plugin's
    ``unconfigure`` raising, say) the process exits as Python would, with status 1. The
    module teardown that follows frees native libraries in an order none of them controls:
    on an AMD EPYC Milan, one run died there with SIGSEGV after all 574 tests had passed and
    pytest had printed its summary (CI exit code 139). Everything the tests check, and every
    server or worker they started, is finished by then."""
    if _SESSION and not hasattr(sys, "last_value"):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(_SESSION[0].exitstatus))


def shared_dataset(name: str) -> Path:
    """A dataset folder of ../shared/data; a missing one fails the test (never a silent skip)."""
    folder = SHARED_DATA / name
    if not (folder / "train.jsonl").is_file():
        pytest.fail(f"real dataset missing: {folder} (set SMALLFIT_SHARED_DATA)")
    return folder


def write_slice(src: Path, dst: Path, *, per_label: int, labels: list[str] | None = None) -> Path:
    """The first ``per_label`` rows of each label (optionally only ``labels``) as a JSONL file."""
    counts: dict[str, int] = {}
    out = []
    for line in src.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if labels is not None and row["label"] not in labels:
            continue
        if counts.get(row["label"], 0) < per_label:
            counts[row["label"]] = counts.get(row["label"], 0) + 1
            out.append(line)
    dst.write_text("\n".join(out) + "\n", encoding="utf-8")
    return dst


@pytest.fixture(scope="session")
def snips_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SNIPS (7 intents): 40 train and 12 test rows per label, as a dataset folder."""
    folder = shared_dataset("snips")
    out = tmp_path_factory.mktemp("snips")
    write_slice(folder / "train.jsonl", out / "train.jsonl", per_label=40)
    write_slice(folder / "test.jsonl", out / "test.jsonl", per_label=12)
    return out


@pytest.fixture(scope="session")
def snips_texts(snips_slice: Path) -> list[str]:
    from smallfit.data import read_split

    return read_split(snips_slice / "train.jsonl").texts


@pytest.fixture(scope="session")
def snips_minilm(snips_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MiniLM classifier with its head fitted on the SNIPS slice (a few seconds), saved."""
    import torch

    from smallfit import zoo
    from smallfit.data import read_split
    from smallfit.models.transformer import TransformerClassifier
    from smallfit.teach import one_hot
    from smallfit.train import warmstart_head

    torch.manual_seed(0)
    split = read_split(snips_slice / "train.jsonl")
    labels = sorted(set(split.labels))
    model = TransformerClassifier.from_base(
        zoo.resolve("minilm-l6"), labels=labels, name="s", max_length=32
    )
    warmstart_head(model, split.texts, one_hot(split.labels, labels), progress=False)
    return model.save(tmp_path_factory.mktemp("minilm") / "student")


API_KEY = "sk-smallfit-test-0123456789"
"""The key the tests' llama.cpp server demands (a test checks it never reaches a file)."""


@pytest.fixture(scope="session")
def llama_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama.cpp's OpenAI-compatible server on 127.0.0.1 serving SmolLM2-135M-Instruct as
    ``smollm2``, demanding ``API_KEY``; its base URL (``.../v1``)."""
    from smallfit.testing.llama_server import llama_server

    log = tmp_path_factory.mktemp("llama") / "server.log"
    with llama_server(api_key=API_KEY, log_file=log) as url:
        yield url


@pytest.fixture(scope="module")
def local_ray() -> Iterator[str]:
    """Ray on this machine (2 CPUs), started and stopped by the test module; the address
    another process joins it at."""
    ray = pytest.importorskip("ray")  # .ci/run installs it (the dev extra): never skipped there
    context = ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False
    )
    yield str(context.address_info["gcs_address"])
    ray.shutdown()


@pytest.fixture
def llm_env(monkeypatch: pytest.MonkeyPatch) -> str:
    """The API key in the environment, as OPENAI_API_KEY; returns the variable's name."""
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    return "OPENAI_API_KEY"


@pytest.fixture(scope="session")
def snips_linear(snips_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A linear classifier fitted on the SNIPS slice's gold labels (a second), saved."""
    from smallfit.config import DataConfig, LinearStudent
    from smallfit.data import load_dataset
    from smallfit.distill import distill_student
    from smallfit.teach import one_hot

    data = load_dataset(
        DataConfig(train=snips_slice / "train.jsonl", test=snips_slice / "test.jsonl")
    )
    out = tmp_path_factory.mktemp("linear") / "linear"
    distill_student(
        LinearStudent(),
        data,
        train_probs=one_hot(data.train.labels, data.labels),
        dev_probs=one_hot(data.dev.labels, data.labels),
        out_dir=out,
        progress=False,
    )
    return out


@pytest.fixture
def openai_client() -> Iterator[Any]:
    """Opens official ``openai`` clients (``openai_client(base_url=..., api_key=...)``) and
    closes them after the test, pooled sockets and all."""
    import openai

    clients: list[openai.OpenAI] = []

    def make(**options: Any) -> openai.OpenAI:
        clients.append(openai.OpenAI(**options))
        return clients[-1]

    yield make
    for client in clients:
        client.close()
