"""One training loop for every PyTorch classifier: transformers' Trainer with a KD loss.

Teacher fine-tuning and distillation differ only in their targets (one-hot gold labels vs the
teacher's probabilities) and the loss weights (STYLE rule 3): the loss is
``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, argmax teacher)``.
Checkpoints go to ``output_dir/checkpoints``; a rerun resumes from the newest one. Early stopping
watches agreement with the dev targets (the teacher's labels when there is no gold). Because the
Trainer runs on accelerate, the same code runs distributed under ``accelerate launch``. After
training, a temperature fitted on dev calibrates the probabilities (stored in the manifest).

Any :class:`~smallfit.models.transformer.TorchClassifier` trains here: the encoder students and
teachers, and the LoRA decoder students (whose module is a peft model, so only the adapters and
the head have gradients). The classifier says what its head is (trained at ``head_lr``,
warm-started on :meth:`~smallfit.models.transformer.TorchClassifier.embed`) and what it keeps
fixed (:meth:`~smallfit.models.transformer.TorchClassifier.prepare_training`).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import (
    EarlyStoppingCallback,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from smallfit.models.precision import bf16_native
from smallfit.models.transformer import TorchClassifier
from smallfit.schema import parse_duration
from smallfit.train.config import KDConfig, TrainConfig
from smallfit.train.distributed import share_from_main, world_size

log = logging.getLogger(__name__)


def kd_loss(
    logits: torch.Tensor, targets: torch.Tensor, kd: KDConfig, *, eps: float = 1e-8
) -> torch.Tensor:
    """Temperature-scaled KL to the target distribution plus CE to its argmax."""
    temp = kd.temperature
    loss = logits.new_zeros(())
    if kd.alpha > 0:
        soft_targets = F.softmax(torch.log(targets.clamp(min=eps)) / temp, dim=-1)
        log_student = F.log_softmax(logits / temp, dim=-1)
        loss = loss + kd.alpha * temp**2 * F.kl_div(
            log_student, soft_targets, reduction="batchmean"
        )
    if kd.alpha < 1:
        loss = loss + (1 - kd.alpha) * F.cross_entropy(logits, targets.argmax(dim=-1))
    return loss


class _KDTrainer(Trainer):
    def __init__(
        self, *args: Any, kd: KDConfig, head_lr: float, head: nn.Module, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.kd = kd
        self.head_lr = head_lr
        self.head_ids = {id(p) for p in head.parameters()}

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        targets = inputs.pop("targets")
        outputs = model(**inputs)
        loss = kd_loss(outputs["logits"].float(), targets.float(), self.kd)
        return (loss, outputs) if return_outputs else loss

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            assert self.model is not None  # given to the Trainer when it was made
            trained = [p for p in self.model.parameters() if p.requires_grad]
            head = [p for p in trained if id(p) in self.head_ids]
            body = [p for p in trained if id(p) not in self.head_ids]
            self.optimizer = torch.optim.AdamW(
                [
                    {"params": body, "lr": self.args.learning_rate},
                    {"params": head, "lr": self.head_lr},
                ],
                weight_decay=self.args.weight_decay,
            )
        return self.optimizer


class _TimeBudget(TrainerCallback):
    """Stops training cleanly (evaluate, save) once the wall-clock budget is spent."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.monotonic()
        self.hit = False

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        # launched on several processes, all stop at the same step: the first one's clock
        if share_from_main(time.monotonic() - self.start > self.seconds):
            self.hit = True
            control.should_training_stop = True
            control.should_evaluate = True
            control.should_save = True
        return control


class _Encoded(torch.utils.data.Dataset):
    def __init__(self, model: TorchClassifier, texts: list[str], targets: np.ndarray):
        self.input_ids = model.encode(texts)
        self.targets = targets.astype(np.float32)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.input_ids[i], "targets": self.targets[i]}


@dataclass
class _Collator:
    pad_id: int

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(x["input_ids"]) for x in items)
        ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            ids[row, :n] = torch.tensor(item["input_ids"])
            mask[row, :n] = 1
        targets = torch.from_numpy(np.stack([x["targets"] for x in items]))
        return {"input_ids": ids, "attention_mask": mask, "targets": targets}


def _agreement(eval_pred: Any) -> dict[str, float]:
    logits, targets = eval_pred.predictions, eval_pred.label_ids
    return {"agreement": float((logits.argmax(-1) == targets.argmax(-1)).mean())}


def warmstart_head(
    model: TorchClassifier,
    texts: list[str],
    targets: np.ndarray,
    *,
    steps: int = 300,
    lr: float = 0.05,
    weight_decay: float = 1e-4,
    seed: int = 0,
    progress: bool = True,
) -> float:
    """Fit the linear head on the frozen features it sees (full batch); returns train
    agreement."""
    torch.manual_seed(seed)
    with model.bf16():
        feats = torch.from_numpy(model.embed(texts))
    target = torch.from_numpy(targets.astype(np.float32))
    head = model.head()
    optimizer = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in tqdm(
        range(steps), desc=f"{model.name}: warm-start head", leave=False, disable=not progress
    ):
        optimizer.zero_grad()
        loss = -(target * F.log_softmax(head(feats), dim=-1)).sum(-1).mean()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        agree = (head(feats).argmax(-1) == target.argmax(-1)).float().mean().item()
    return agree


def last_complete_checkpoint(ckpt_dir: Path) -> str | None:
    """The newest checkpoint whose ``trainer_state.json`` (written last) exists and parses.

    A kill during a save leaves a torn ``checkpoint-N``: it is removed, and training resumes
    from the one before it."""
    found = []
    for path in Path(ckpt_dir).glob("checkpoint-*"):
        suffix = path.name.removeprefix("checkpoint-")
        if path.is_dir() and suffix.isdigit():
            found.append((int(suffix), path))
    for _, path in sorted(found, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
            return str(path)
        except (OSError, ValueError):
            log.warning("removing incomplete checkpoint %s (interrupted while saving)", path)
            shutil.rmtree(path, ignore_errors=True)
    return None


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature T minimising cross-entropy of softmax(logits / T) to ``targets`` (dev)."""
    z = torch.from_numpy(logits.astype(np.float32))
    t = torch.from_numpy(targets.astype(np.float32))
    log_t = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = -(t * F.log_softmax(z / log_t.exp(), dim=-1)).sum(-1).mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(np.clip(log_t.exp().item(), 0.05, 20.0))


def train_classifier(
    model: TorchClassifier,
    data: tuple[list[str], np.ndarray, list[str], np.ndarray],
    *,
    train: TrainConfig,
    kd: KDConfig,
    output_dir: Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``model`` in place on (train_texts, train_targets, dev_texts, dev_targets).

    Targets are probability matrices over ``model.labels``. The length is
    :meth:`TrainConfig.schedule`'s: ``train.epochs``, raised on a small pool to reach
    ``train.min_steps``. Returns a summary: the schedule and why, best dev agreement, steps,
    epochs, seconds, and why training stopped.
    """
    train_texts, train_targets, dev_texts, dev_targets = data
    output_dir = Path(output_dir)
    ckpt_dir = output_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    last = last_complete_checkpoint(ckpt_dir)
    torch.manual_seed(train.seed)

    summary: dict[str, Any] = {"resumed_from": Path(last).name if last else None}
    model.prepare_training(
        freeze_embeddings=train.freeze_embeddings, freeze_layers=train.freeze_layers
    )
    if last is None and train.head_warmstart:
        summary["warmstart_train_agreement"] = warmstart_head(
            model, train_texts, train_targets, seed=train.seed, progress=progress
        )

    schedule = train.schedule(len(train_texts))
    summary["schedule"] = schedule.describe()
    # launched on N processes, each step takes a batch on every one: an epoch is N times shorter
    steps_per_epoch = math.ceil(schedule.steps_per_epoch / world_size())
    eval_steps = max(1, steps_per_epoch // train.evals_per_epoch)
    on_cpu = not (world_size() > 1 and torch.cuda.is_available())
    args = TrainingArguments(
        output_dir=str(ckpt_dir),
        # CPU unless launched on several processes with GPUs (accelerate launch); the model
        # comes back to the CPU after training either way
        use_cpu=on_cpu,
        bf16=train.bf16 and bf16_native("cpu" if on_cpu else "cuda"),
        num_train_epochs=schedule.epochs,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=64,
        learning_rate=train.lr,
        weight_decay=train.weight_decay,
        warmup_steps=train.warmup_ratio,
        lr_scheduler_type="linear",
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=eval_steps,
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model="agreement",
        greater_is_better=True,
        logging_steps=max(1, eval_steps // 4),
        logging_strategy="steps",
        report_to="none",
        disable_tqdm=not progress,
        seed=train.seed,
        data_seed=train.seed,
        remove_unused_columns=False,
        label_names=["targets"],
        train_sampling_strategy="group_by_length",
        dataloader_num_workers=0,
    )
    callbacks: list[TrainerCallback] = []
    if train.patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=train.patience))
    budget = _TimeBudget(parse_duration(train.time_budget)) if train.time_budget else None
    if budget:
        callbacks.append(budget)

    trainer = _KDTrainer(
        model=model.module,
        args=args,
        train_dataset=_Encoded(model, train_texts, train_targets),
        eval_dataset=_Encoded(model, dev_texts, dev_targets),
        data_collator=_Collator(model.tokenizer.pad_token_id or 0),
        compute_metrics=_agreement,
        callbacks=callbacks,
        kd=kd,
        head_lr=train.head_lr or 20 * train.lr,
        head=model.head(),
    )
    if not progress:  # without bars, Trainer prints every log dict: keep quiet output quiet
        trainer.remove_callback(PrinterCallback)
    started = time.monotonic()
    result = trainer.train(resume_from_checkpoint=last)
    # With bf16, accelerate wraps the module's forward in autocast on the instance; unwrap it,
    # or the trained model would keep predicting in bf16 (and its temperature be fitted on bf16
    # logits) while the same model loaded from disk predicts in fp32.
    trainer.accelerator.unwrap_model(model.module, keep_fp32_wrapper=False)
    model.module.to("cpu")
    model.module.eval()
    model.temperature = fit_temperature(model.logits(dev_texts), dev_targets)
    state = trainer.state
    stopped = "epochs"
    if budget and budget.hit:
        stopped = "time_budget"
    elif state.global_step < state.max_steps:
        stopped = "early_stopping"
    summary.update(
        best_dev_agreement=state.best_metric,
        steps=state.global_step,
        epochs=round(float(state.epoch or 0.0), 3),
        train_loss=float(result.training_loss),
        seconds=round(time.monotonic() - started, 1),
        stopped_by=stopped,
        temperature=round(model.temperature, 4),
        processes=trainer.accelerator.num_processes,
    )
    return summary
