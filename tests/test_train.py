"""The KD loss and the shared training loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from smallfit.config import KDConfig
from smallfit.train import kd_loss


def test_kd_loss_is_cross_entropy_when_alpha_is_zero() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]])
    targets = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    loss = kd_loss(logits, targets, KDConfig(alpha=0.0))
    assert loss.item() == pytest.approx(F.cross_entropy(logits, torch.tensor([0, 2])).item())


def test_kd_loss_soft_term_is_scaled_kl() -> None:
    logits = torch.tensor([[1.0, 0.0, -1.0]])
    targets = torch.tensor([[0.5, 0.3, 0.2]])
    temp = 2.0
    loss = kd_loss(logits, targets, KDConfig(alpha=1.0, temperature=temp)).item()
    teacher = torch.softmax(torch.log(targets) / temp, -1)[0]
    student = torch.softmax(logits / temp, -1)[0]
    expected = temp**2 * sum(
        t * (math.log(t) - math.log(s))
        for t, s in zip(teacher.tolist(), student.tolist(), strict=True)
    )
    assert loss == pytest.approx(expected, rel=1e-5)


def test_kd_loss_is_zero_soft_when_student_matches_teacher() -> None:
    targets = torch.tensor([[0.6, 0.3, 0.1]])
    logits = torch.log(targets)
    assert kd_loss(logits, targets, KDConfig(alpha=1.0, temperature=1.0)).item() == pytest.approx(
        0.0, abs=1e-6
    )


def test_fit_temperature_recovers_a_known_temperature() -> None:
    import numpy as np

    from smallfit.train import fit_temperature

    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(4000, 5)) * 2.0
    probs = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(5, p=p) for p in probs])
    targets = np.eye(5, dtype=np.float32)[labels]
    # the model's logits are 3x too confident; the fitted temperature should undo that
    assert fit_temperature(true_logits * 3.0, targets) == pytest.approx(3.0, rel=0.1)


@pytest.mark.slow
def test_a_small_pool_trains_for_min_steps(tmp_path, snips_slice) -> None:
    """A real run on 16 SNIPS texts: one epoch is 2 steps of 8, so min_steps=6 makes it 3."""
    import numpy as np

    from smallfit import zoo
    from smallfit.config import TrainConfig
    from smallfit.data import read_split
    from smallfit.models.transformer import TransformerClassifier
    from smallfit.teach import one_hot
    from smallfit.train import train_classifier

    split = read_split(snips_slice / "train.jsonl")
    labels = sorted(set(split.labels))[:2]
    rows = [i for i, y in enumerate(split.labels) if y in labels]
    rows = rows[:8] + rows[-8:]  # 8 texts of each label
    texts = [split.texts[i] for i in rows]
    targets = one_hot([split.labels[i] for i in rows], labels)
    model = TransformerClassifier.from_base(
        zoo.resolve("minilm-l6"), labels=labels, name="s", max_length=16
    )
    train = TrainConfig(
        epochs=1.0, min_steps=6, batch_size=8, max_length=16, patience=0, head_warmstart=False
    )
    summary = train_classifier(
        model,
        (texts, targets, texts[::4], np.asarray(targets)[::4]),
        train=train,
        kd=KDConfig(alpha=0.0),
        output_dir=tmp_path,
        progress=False,
    )
    assert (summary["steps"], summary["epochs"], summary["stopped_by"]) == (6, 3.0, "epochs")
    assert summary["schedule"].startswith("3 epochs x 2 steps = 6 steps: train.epochs 1 would")


def test_token_batches_group_lengths_and_cover_each_text_once_an_epoch() -> None:
    from smallfit.train.token_loop import MEGABATCH, length_grouped

    rng = np.random.default_rng(0)
    lengths = [int(n) for n in rng.integers(3, 40, size=MEGABATCH * 8 * 2 + 5)]
    batches = length_grouped(lengths, 8, np.random.default_rng(1))
    assert sorted(int(i) for b in batches for i in b) == list(range(len(lengths)))
    assert len(batches) == -(-len(lengths) // 8)  # as many steps as plain shuffling gives
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    order = np.random.default_rng(1).permutation(len(lengths))
    plain = sum(
        max(lengths[i] for i in order[b : b + 8]) * len(order[b : b + 8])
        for b in range(0, len(order), 8)
    )
    assert padded < 0.8 * plain and padded < 1.1 * sum(lengths)
    again = length_grouped(lengths, 8, np.random.default_rng(1))
    assert all((a == b).all() for a, b in zip(batches, again, strict=True))  # seeded
