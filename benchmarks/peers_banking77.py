"""Issue 17's peers on Banking77: what a user would try instead of smallfit, trained on the same
teacher-labelled pool, scored on the same test set, timed on the same cores in one run.

    .venv/bin/python benchmarks/peers_banking77.py [--data ../shared/data/banking77]
        [--run-dir runs/banking77] [--queries 300] [--setfit-steps 1000] [--only NAME ...]

Needs the peers' packages, which install beside torch 2.13 without changing it:
``.venv/bin/pip install -e '.[peers]'`` (setfit 1.2, model2vec 0.10 and skeletoken 0.6; not
``model2vec[distill]``: that extra downgrades transformers, see ../shared/MODELS.md).

Runs (or reuses) the demo's fit, takes the teacher's labels of its training pool (argmax) and
dev split, and trains each peer on them with both cores:

- TF-IDF (word 1-2 grams) + logistic regression, C chosen on dev;
- frozen MiniLM-L6 and mpnet-base sentence embeddings + logistic regression, C chosen on dev;
- model2vec 0.10: a static model distilled from MiniLM-L6, with its own classifier;
- SetFit 1.2 with a MiniLM-L6 body (``--setfit-steps`` contrastive steps of 32 pairs) and its
  logistic-regression head;
- smallfit's distilled fp32 student run as a plain ``transformers`` feature-extraction pipeline
  (mean pooling and the student's head in numpy);
- the same student exported to ONNX and run by ONNX Runtime with default session settings.

Each is then scored on the whole test set (gold accuracy, and agreement with the teacher), and
every peer, smallfit's pick, its static and 3-layer tiers and the teacher take turns query by
query at 1 thread (drift hits all alike). Writes ``benchmarks/results/peers_banking77.json``:
per model accuracy, p50/p99, size on disk, training time, and how it relates to smallfit's pick
on (accuracy, p50, size): ``dominates``, ``dominated`` or the axes it wins. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _report import save_and_report, smallest_over

from smallfit.demo import demo_config
from smallfit.pipeline import fit

HERE = Path(__file__).resolve().parent
C_GRID = (1.0, 10.0, 100.0)


def dir_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class Peer:
    """One peer, as the latency loop and the scorer see it: ``answer`` a list of texts (the
    user's natural call for one query), ``predict`` label indices in bulk."""

    def __init__(
        self,
        name: str,
        answer: Callable[[Sequence[str]], Any],
        predict: Callable[[Sequence[str]], np.ndarray],
        *,
        bytes_on_disk: int,
        train_seconds: float,
        how: str,
        threads: Callable[[int], None] | None = None,
    ) -> None:
        self.name, self.answer, self.predict = name, answer, predict
        self.bytes_on_disk, self.train_seconds, self.how = bytes_on_disk, train_seconds, how
        self._threads = threads

    def set_num_threads(self, n: int) -> None:
        if self._threads is not None:
            self._threads(n)


@contextlib.contextmanager
def timer() -> Iterator[list[float]]:
    out: list[float] = []
    start = time.monotonic()
    yield out
    out.append(round(time.monotonic() - start, 1))


def _pick_c(
    train_x: Any, train_y: np.ndarray, dev_x: Any, dev_y: np.ndarray
) -> tuple[Any, float, float]:
    """The logistic regression with the best dev accuracy over :data:`C_GRID`, refitted on
    nothing more (dev only chooses)."""
    from sklearn.linear_model import LogisticRegression

    best: tuple[Any, float, float] | None = None
    for c in C_GRID:
        clf = LogisticRegression(C=c, max_iter=3000).fit(train_x, train_y)
        acc = float((clf.predict(dev_x) == dev_y).mean())
        if best is None or acc > best[2]:
            best = (clf, c, acc)
    assert best is not None
    return best


def _saved_size(obj: Any, tmp: Path, name: str) -> int:
    dest = tmp / f"{name}.pkl"
    dest.write_bytes(pickle.dumps(obj))
    return dest.stat().st_size


def tfidf_peer(pool: dict[str, Any], tmp: Path) -> Peer:
    from sklearn.feature_extraction.text import TfidfVectorizer

    with timer() as took:
        vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
        x = vec.fit_transform(pool["train_texts"])
        clf, c, _ = _pick_c(x, pool["train_y"], vec.transform(pool["dev_texts"]), pool["dev_y"])
    return Peer(
        "tfidf-lr",
        lambda texts: clf.predict_proba(vec.transform(texts)),
        lambda texts: clf.predict(vec.transform(texts)),
        bytes_on_disk=_saved_size((vec, clf), tmp, "tfidf"),
        train_seconds=took[0],
        how=f"TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True) + LogisticRegression(C={c})",
    )


def frozen_peer(alias: str, pool: dict[str, Any], tmp: Path) -> Peer:
    from sentence_transformers import SentenceTransformer

    from smallfit.zoo import resolve

    path = resolve(alias)
    with timer() as took:
        model = SentenceTransformer(str(path), device="cpu")

        def encode(texts: Sequence[str]) -> np.ndarray:
            return model.encode(
                list(texts), batch_size=64, normalize_embeddings=True, show_progress_bar=False
            )

        clf, c, _ = _pick_c(
            encode(pool["train_texts"]), pool["train_y"], encode(pool["dev_texts"]), pool["dev_y"]
        )
    return Peer(
        f"frozen-{alias}-lr",
        lambda texts: clf.predict_proba(encode(texts)),
        lambda texts: clf.predict(encode(texts)),
        bytes_on_disk=dir_bytes(path) + _saved_size(clf, tmp, alias),
        train_seconds=took[0],
        how=f"SentenceTransformer({alias}).encode(normalize) + LogisticRegression(C={c})",
    )


def model2vec_peer(pool: dict[str, Any], tmp: Path) -> Peer:
    from model2vec.distill import distill
    from model2vec.train import StaticModelForClassification

    from smallfit.zoo import resolve

    labels = pool["labels"]
    with timer() as took:
        static = distill(model_name=str(resolve("minilm-l6")), pca_dims=256)
        classifier = StaticModelForClassification.from_static_model(model=static)
        classifier.fit(
            pool["train_texts"],
            [labels[i] for i in pool["train_y"]],
            X_val=pool["dev_texts"],
            y_val=[labels[i] for i in pool["dev_y"]],
            random_seed=0,
        )
        pipeline = classifier.to_pipeline()
    out = tmp / "model2vec"
    pipeline.save_pretrained(str(out))
    index = {label: i for i, label in enumerate(labels)}
    return Peer(
        "model2vec",
        lambda texts: pipeline.predict_proba(list(texts)),
        lambda texts: np.asarray([index[p] for p in pipeline.predict(list(texts))]),
        bytes_on_disk=dir_bytes(out),
        train_seconds=took[0],
        how="model2vec.distill(minilm-l6, pca_dims=256) + StaticModelForClassification.fit "
        "(early stopping on dev) -> to_pipeline()",
    )


def setfit_peer(pool: dict[str, Any], tmp: Path, steps: int) -> Peer:
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    from smallfit.zoo import resolve

    with timer() as took:
        model = SetFitModel.from_pretrained(str(resolve("minilm-l6")), device="cpu")
        args = TrainingArguments(
            output_dir=str(tmp / "setfit-checkpoints"),
            batch_size=(32, 32),
            num_epochs=(1, 16),
            max_steps=steps,
            seed=0,
            report_to="none",
            save_strategy="no",
            show_progress_bar=sys.stderr.isatty(),
        )
        data = Dataset.from_dict({"text": pool["train_texts"], "label": list(pool["train_y"])})
        Trainer(model=model, args=args, train_dataset=data).train()
    out = tmp / "setfit"
    model.save_pretrained(str(out))
    return Peer(
        "setfit-minilm-l6",
        lambda texts: model.predict_proba(list(texts)),
        lambda texts: np.asarray(model.predict(list(texts), batch_size=64)),
        bytes_on_disk=dir_bytes(out),
        train_seconds=took[0],
        how=f"SetFitModel(minilm-l6), {steps} contrastive steps x 32 pairs, logistic head",
    )


def _student_head(student_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    from safetensors.numpy import load_file

    head = load_file(str(student_dir / "head.safetensors"))
    weight = next(v for k, v in head.items() if k.endswith("weight"))
    bias = next(v for k, v in head.items() if k.endswith("bias"))
    return weight, bias


def transformers_peer(student_dir: Path, seconds: float) -> Peer:
    import torch
    from transformers import AutoModel, AutoTokenizer, pipeline

    weight, bias = _student_head(student_dir)
    encoder = AutoModel.from_pretrained(str(student_dir), dtype=torch.float32)
    extractor = pipeline(
        "feature-extraction",
        model=encoder,
        tokenizer=AutoTokenizer.from_pretrained(str(student_dir)),
        device="cpu",
    )

    def logits(texts: Sequence[str]) -> np.ndarray:
        rows = []
        for hidden in extractor(list(texts), truncation=True, max_length=64):
            pooled = np.asarray(hidden[0], dtype=np.float32).mean(axis=0)
            rows.append(pooled / np.linalg.norm(pooled))
        return np.stack(rows) @ weight.T + bias

    return Peer(
        "transformers-pipeline-fp32",
        logits,
        lambda texts: logits(texts).argmax(1),
        bytes_on_disk=dir_bytes(student_dir),
        train_seconds=seconds,
        how="transformers.pipeline('feature-extraction') over smallfit's distilled fp32 student, "
        "mean pooling and its head in numpy",
    )


def ort_default_peer(student_dir: Path, tmp: Path, check: list[str], seconds: float) -> Peer:
    import onnxruntime as ort
    from transformers import AutoTokenizer

    from smallfit.compress.core import compress
    from smallfit.compress.steps import OnnxExport
    from smallfit.models.onnx import ONNX_FILE

    started = time.monotonic()
    out = tmp / "onnx-fp32"
    compress(student_dir, [OnnxExport(fuse=False)], out_dir=out, check_texts=check)
    exported = time.monotonic() - started
    tokenizer = AutoTokenizer.from_pretrained(str(student_dir))
    state: dict[str, Any] = {}

    def threads(n: int) -> None:
        options = ort.SessionOptions()  # defaults but for the thread count the loop asks for
        options.intra_op_num_threads = n
        state["session"] = ort.InferenceSession(str(out / ONNX_FILE), options)

    threads(0)

    def logits(texts: Sequence[str]) -> np.ndarray:
        enc = tokenizer(
            list(texts), padding=True, truncation=True, max_length=64, return_tensors="np"
        )
        feeds = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        return state["session"].run(["logits"], feeds)[0]

    def predict(texts: Sequence[str]) -> np.ndarray:
        return np.concatenate(
            [logits(texts[i : i + 64]).argmax(1) for i in range(0, len(texts), 64)]
        )

    return Peer(
        "onnxruntime-default-fp32",
        logits,
        predict,
        bytes_on_disk=dir_bytes(out),
        train_seconds=round(seconds + exported, 1),
        how="smallfit's fp32 student exported to ONNX, onnxruntime.InferenceSession with default "
        "SessionOptions (fp32, no quantization)",
        threads=threads,
    )


def train_seconds(candidate: dict[str, Any]) -> float | None:
    """A candidate's recorded training time plus its compression steps' (None: not recorded)."""
    lineage = candidate["lineage"]
    trained = (lineage.get("training") or {}).get("seconds")
    if trained is None:
        return None
    return round(trained + sum(s.get("seconds") or 0 for s in lineage.get("compression", [])), 1)


def relation(peer: dict[str, float], pick: dict[str, float]) -> str:
    """How ``peer`` stands against ``pick`` on accuracy (higher wins), p50 and size (lower)."""
    wins = [
        axis
        for axis, better in (
            ("accuracy", peer["accuracy"] > pick["accuracy"]),
            ("p50", peer["p50_ms"] < pick["p50_ms"]),
            ("size", peer["bytes_on_disk"] < pick["bytes_on_disk"]),
        )
        if better
    ]
    ties_or_wins = (
        peer["accuracy"] >= pick["accuracy"]
        and peer["p50_ms"] <= pick["p50_ms"]
        and peer["bytes_on_disk"] <= pick["bytes_on_disk"]
    )
    if ties_or_wins and wins:
        return "dominates"
    if not wins:
        return "dominated"
    return "wins on " + ", ".join(wins)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=HERE.parents[1] / "shared/data/banking77")
    parser.add_argument("--run-dir", type=Path, default=None)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--setfit-steps", type=int, default=1000)
    parser.add_argument("--only", nargs="*", default=None, help="peers to build (default: all)")
    args = parser.parse_args()

    from smallfit.data import load_dataset
    from smallfit.evaluate import interleaved_latency, limit_threads
    from smallfit.models import load
    from smallfit.run.layout import RunDir
    from smallfit.teach import label_pool

    config = demo_config(args.data, run_dir=args.run_dir)
    result = fit(config, progress=sys.stderr.isatty(), log=lambda m: print(m, file=sys.stderr))
    by_name = {c["name"]: c for c in result.results.dump()["candidates"]}
    run = RunDir(result.run_dir)
    dataset = load_dataset(config.data)
    labels = dataset.labels
    teacher = load(run.model("teacher"))
    probs = {
        split: label_pool(
            teacher,
            getattr(dataset, split).texts,
            labels=labels,
            teacher_dir=run.model("teacher"),
            run=run,
            progress=False,
        )
        for split in ("train", "dev", "test")
    }
    pool = {
        "labels": labels,
        "train_texts": dataset.train.texts,
        "train_y": probs["train"].argmax(1),
        "dev_texts": dataset.dev.texts,
        "dev_y": probs["dev"].argmax(1),
    }
    test_texts = dataset.test.texts
    gold = np.asarray([labels.index(y) for y in dataset.test.labels])
    teacher_test = probs["test"].argmax(1)
    student_dir = run.model("minilm-l6")
    student_seconds = train_seconds(by_name["minilm-l6"]) or 0.0

    builders: dict[str, Callable[[Path], Peer]] = {
        "tfidf-lr": lambda tmp: tfidf_peer(pool, tmp),
        "frozen-minilm-l6-lr": lambda tmp: frozen_peer("minilm-l6", pool, tmp),
        "frozen-mpnet-base-lr": lambda tmp: frozen_peer("mpnet-base", pool, tmp),
        "model2vec": lambda tmp: model2vec_peer(pool, tmp),
        "setfit-minilm-l6": lambda tmp: setfit_peer(pool, tmp, args.setfit_steps),
        "transformers-pipeline-fp32": lambda tmp: transformers_peer(student_dir, student_seconds),
        "onnxruntime-default-fp32": lambda tmp: ort_default_peer(
            student_dir, tmp, dataset.dev.texts[:256], student_seconds
        ),
    }
    names = args.only or list(builders)
    tmp = Path(tempfile.mkdtemp(prefix="smallfit-peers-"))
    peers: dict[str, Peer] = {}
    rows: dict[str, dict[str, Any]] = {}
    for name in names:
        print(f"[peers] building {name}", file=sys.stderr)
        peer = peers[name] = builders[name](tmp)
        with timer() as took:
            predicted = np.asarray(peer.predict(test_texts))
        rows[name] = {
            "how": peer.how,
            "accuracy": float((predicted == gold).mean()),
            "agreement_with_teacher": float((predicted == teacher_test).mean()),
            "bytes_on_disk": peer.bytes_on_disk,
            "train_seconds": peer.train_seconds,
            "test_seconds_2_threads": took[0],
        }
        print(f"[peers] {name}: {json.dumps(rows[name])}", file=sys.stderr)

    tiers = {
        "pick": result.chosen,
        "pick_at_99": smallest_over(by_name, 0.99),  # at `quality_floor: 0.99 * teacher`
        "six_layer": "minilm-l6-int8",
        "three_layer": "minilm-l6-l3-p50-int8",
        "static": "static",
    }
    ours = {tier: load(run.model(n)) for tier, n in tiers.items() if n in by_name}
    for tier in ours:
        c = by_name[tiers[tier]]
        rows[f"smallfit:{tier}"] = {
            "how": f"smallfit candidate {tiers[tier]}",
            "accuracy": c["quality"]["accuracy"],
            "agreement_with_teacher": c["quality"].get("teacher_agreement"),
            "bytes_on_disk": c["bytes_on_disk"],
            "train_seconds": train_seconds(c),
        }
    rows["teacher"] = {
        "how": "the mpnet-base teacher, PyTorch fp32",
        "accuracy": by_name["teacher"]["quality"]["accuracy"],
        "bytes_on_disk": by_name["teacher"]["bytes_on_disk"],
    }
    timed_models: dict[str, Any] = {"teacher": teacher}
    timed_models |= {f"smallfit:{tier}": m for tier, m in ours.items()} | peers
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with limit_threads(1, *timed_models.values()):
        timed = interleaved_latency(timed_models, test_texts, queries=args.queries, warmup=20)
    for name, stats in timed.items():
        rows[name] |= {"p50_ms": stats["p50_ms"], "p99_ms": stats["p99_ms"]}
    for name in peers:
        rows[name]["vs_pick"] = relation(rows[name], rows["smallfit:pick"])
        if "smallfit:pick_at_99" in rows:
            rows[name]["vs_pick_at_99"] = relation(rows[name], rows["smallfit:pick_at_99"])
    dominated_by = [name for name in peers if rows[name]["vs_pick"] == "dominates"]
    dominated_99 = [name for name in peers if rows[name].get("vs_pick_at_99") == "dominates"]
    save_and_report(
        {
            "benchmark": "peers_banking77",
            "command": " ".join(["python", "benchmarks/peers_banking77.py", *sys.argv[1:]]),
            "run_dir": str(result.run_dir),
            "pool": "the teacher's argmax labels of the run's training pool; dev chooses C",
            "test_examples": len(test_texts),
            "timed_queries": args.queries,
            "figures": {
                "pick": result.chosen,
                "pick_at_99": tiers["pick_at_99"],
                "models": rows,
                "peers_dominating_pick": dominated_by,
                "peers_dominating_pick_at_99": dominated_99,
            },
            "passed": {
                "no_peer_dominates_pick": not dominated_by,
                "no_peer_dominates_pick_at_99": not dominated_99,
            }
            if len(peers) == len(builders)
            else {},
            "interleaved_latency_ms_1_thread": timed,
            "environment": result.results.environment,
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
