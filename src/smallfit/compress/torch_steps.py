"""Compression steps on PyTorch transformer classifiers: layer dropping, structured and
magnitude pruning, each followed by a short distillation ("healing") against the teacher."""

from __future__ import annotations

import shutil
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from smallfit.compress.base import HealData, StepContext, register_step
from smallfit.compress.steps import DropLayers, HealConfig, PruneMagnitude, PruneStructured
from smallfit.errors import SmallfitError
from smallfit.models.base import load

CHECK_TEXTS = 256  # agreement with the uncompressed model is measured on this many texts
HEAD_PRUNING_FAMILIES = ("bert",)  # attention reshapes with -1 heads: narrower q/k/v just work


def _transformer_only(step: Any, manifest: dict[str, Any]) -> dict[str, Any]:
    if manifest["kind"] != "transformer":
        raise SmallfitError(
            f"{step.method} applies to PyTorch transformer models; this one is "
            f"'{manifest['kind']}' (run it before 'onnx')"
        )
    arch = manifest.get("architecture")
    if not arch:
        raise SmallfitError("the model's manifest has no architecture; re-save it with smallfit")
    return arch


def _drop_can_apply(step: DropLayers, manifest: dict[str, Any]) -> dict[str, Any]:
    arch = _transformer_only(step, manifest)
    if step.keep >= arch["layers"]:
        raise SmallfitError(f"keep={step.keep}, but the model has only {arch['layers']} layers")
    kept = {**arch, "layers": step.keep}
    kept["attention"], kept["ffn"] = arch["attention"][: step.keep], arch["ffn"][: step.keep]
    return {**manifest, "architecture": kept}


def _prune_can_apply(step: PruneStructured, manifest: dict[str, Any]) -> dict[str, Any]:
    arch = _transformer_only(step, manifest)
    if step.heads == 0 and step.ffn == 0:
        raise SmallfitError("nothing to prune: set heads and/or ffn above 0")
    if step.heads and arch["model_type"] not in HEAD_PRUNING_FAMILIES:
        raise SmallfitError(
            f"pruning heads supports {', '.join(HEAD_PRUNING_FAMILIES)} encoders; this one is "
            f"'{arch['model_type']}' (prune ffn only)"
        )
    return manifest


def _magnitude_can_apply(step: PruneMagnitude, manifest: dict[str, Any]) -> dict[str, Any]:
    _transformer_only(step, manifest)
    return manifest


def _linears(model: Any) -> list[tuple[str, Any]]:
    """Every encoder layer's linear layers (embeddings and the head excluded)."""
    from torch import nn

    layers = model.module.encoder.encoder.layer
    return [(f"layer.{n}", m) for n, m in layers.named_modules() if isinstance(m, nn.Linear)]


def heal(
    model: Any, config: HealConfig, data: HealData, work_dir: Path, *, progress: bool
) -> dict[str, Any] | None:
    """Distil ``model`` against ``data`` for ``config.epochs``; returns the training summary."""
    from smallfit.train import train_classifier
    from smallfit.train.config import KDConfig, TrainConfig

    if config.epochs == 0:
        return None
    texts, probs = data.train_texts, data.train_probs
    if config.max_examples and len(texts) > config.max_examples:
        pick = np.sort(np.random.default_rng(config.seed).permutation(len(texts)))
        pick = pick[: config.max_examples]
        texts, probs = [texts[i] for i in pick], probs[pick]
    train = TrainConfig(
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        max_length=model.max_length,
        head_warmstart=False,
        patience=0,
        min_steps=0,  # a repair sized by heal.epochs, not a training run of its own
        evals_per_epoch=2,
        time_budget=config.time_budget,
        seed=config.seed,
    )
    work = work_dir / "heal"
    shutil.rmtree(work, ignore_errors=True)
    summary = train_classifier(
        model,
        (texts, probs, data.dev_texts, data.dev_probs),
        train=train,
        kd=KDConfig(),
        output_dir=work,
        progress=progress,
    )
    shutil.rmtree(work, ignore_errors=True)
    for p in model.module.parameters():
        p.requires_grad_(True)
    return {**summary, "texts": len(texts), "against": data.source}


def _agreement(model: Any, texts: list[str], reference: np.ndarray) -> float:
    return float((model.predict_proba(texts).argmax(1) == reference.argmax(1)).mean())


def _source(model_dir: Path, ctx: StepContext) -> tuple[Any, np.ndarray]:
    """The model to compress, and its answers on the check texts before any change."""
    model = load(model_dir)
    return model, model.predict_proba(ctx.check_texts[:CHECK_TEXTS])


def _finish(
    model: Any,
    step: Any,
    out: Path,
    ctx: StepContext,
    source: tuple[Path, np.ndarray],
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """Agreement before healing, heal, agreement after; save; return the step's metrics.
    ``source``: the uncompressed model's directory and its answers from :func:`_source`."""
    source_dir, reference = source
    check = ctx.check_texts[:CHECK_TEXTS]
    metrics["agreement_before_heal"] = _agreement(model, check, reference)
    healing = heal(model, step.heal, ctx.heal_data(source_dir), ctx.work_dir, progress=ctx.progress)
    if healing is not None:
        metrics["heal"] = healing
    metrics["argmax_agreement"] = _agreement(model, check, reference)
    metrics["check_texts"] = len(check)
    metrics["parameters"] = model.num_parameters
    model.save(out)
    return metrics


def _layer_importance(model: Any, texts: list[str], full: np.ndarray) -> list[float]:
    """How much the output moves (mean KL from ``full``, the whole model's answers on
    ``texts``) when each layer alone is gone."""
    from torch import nn

    layers = model.module.encoder.encoder.layer
    scores = []
    for i in range(len(layers)):
        model.module.encoder.encoder.layer = nn.ModuleList(
            [m for j, m in enumerate(layers) if j != i]
        )
        probs = model.predict_proba(texts)
        scores.append(
            float(np.mean(np.sum(full * (np.log(full + 1e-9) - np.log(probs + 1e-9)), 1)))
        )
    model.module.encoder.encoder.layer = layers
    return scores


def layers_to_keep(step: DropLayers, n: int, importance: list[float] | None = None) -> list[int]:
    """Indices of the layers that remain, in order."""
    if step.strategy == "bottom":
        return list(range(step.keep))
    if step.strategy == "top":
        return list(range(n - step.keep, n))
    if step.strategy == "importance":
        assert importance is not None
        return sorted(np.argsort(importance)[::-1][: step.keep].tolist())
    if step.keep == 1:
        return [n - 1]
    return sorted({round(i * (n - 1) / (step.keep - 1)) for i in range(step.keep)})


@register_step(DropLayers, precondition=_drop_can_apply)
def _drop_layers(step: DropLayers, model_dir: Path, out: Path, ctx: StepContext) -> dict[str, Any]:
    from torch import nn

    model, reference = _source(model_dir, ctx)
    layers = model.module.encoder.encoder.layer
    importance = None
    if step.strategy == "importance":
        importance = _layer_importance(model, ctx.check_texts[:CHECK_TEXTS], reference)
    kept = layers_to_keep(step, len(layers), importance)
    model.module.encoder.encoder.layer = nn.ModuleList([layers[i] for i in kept])
    model.module.encoder.config.num_hidden_layers = len(kept)
    for new_index, layer in enumerate(model.module.encoder.encoder.layer):
        for sub in layer.modules():
            if hasattr(sub, "layer_idx"):
                sub.layer_idx = new_index
    metrics: dict[str, Any] = {"kept_layers": kept, "of": len(layers)}
    if importance is not None:
        metrics["layer_importance"] = [round(s, 5) for s in importance]
    return _finish(model, step, out, ctx, (model_dir, reference), metrics)


def _importance(model: Any, data: HealData, n_texts: int, parts: tuple[str, ...]) -> Any:
    """First-order importance of every head and FFN neuron: |sum of weight x gradient| of the
    distillation loss over the columns that feed the attention output and FFN output layers
    (equal to the gradient of a head/neuron mask), summed over batches."""
    import torch

    from smallfit.train import kd_loss
    from smallfit.train.config import KDConfig

    layers = model.module.encoder.encoder.layer
    head_dim = model.architecture()["head_dim"]
    heads = [
        torch.zeros(layer.get_submodule(parts[0]).out_features // head_dim) for layer in layers
    ]
    neurons = [torch.zeros(layer.get_submodule(parts[4]).out_features) for layer in layers]
    texts, probs = data.train_texts[:n_texts], data.train_probs[:n_texts]
    model.module.eval()
    for start in range(0, len(texts), 32):
        enc = model.tokenize(texts[start : start + 32])
        targets = torch.from_numpy(probs[start : start + 32]).float()
        model.module.zero_grad()
        logits = model.module(enc["input_ids"], enc["attention_mask"])["logits"]
        kd_loss(logits, targets, KDConfig(alpha=1.0)).backward()
        with torch.no_grad():
            for i, layer in enumerate(layers):
                attn_out, ffn_out = layer.get_submodule(parts[3]), layer.get_submodule(parts[5])
                contrib = (attn_out.weight * attn_out.weight.grad).sum(0)
                heads[i] += contrib.view(-1, head_dim).sum(1).abs()
                neurons[i] += (ffn_out.weight * ffn_out.weight.grad).sum(0).abs()
    model.module.zero_grad()
    return heads, neurons


def _shrink(linear: Any, keep: Any, *, dim: int) -> Any:
    """A new Linear holding only the ``keep`` rows (dim 0: outputs) or columns (dim 1: inputs)."""
    import torch
    from torch import nn

    weight = linear.weight.detach().index_select(dim, keep).clone()
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None)
    with torch.no_grad():
        new.weight.copy_(weight)
        if linear.bias is not None:
            new.bias.copy_(linear.bias.detach() if dim == 1 else linear.bias.detach()[keep])
    return new


def _replace(layer: Any, path: str, module: Any) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(layer.get_submodule(parent), leaf, module)


@register_step(PruneStructured, precondition=_prune_can_apply)
def _prune(step: PruneStructured, model_dir: Path, out: Path, ctx: StepContext) -> dict[str, Any]:
    import torch

    from smallfit.models.transformer import LAYER_PARTS

    model, reference = _source(model_dir, ctx)
    parameters_before = model.num_parameters
    arch = model.architecture()
    parts = LAYER_PARTS.get(arch["model_type"])
    if parts is None:
        raise SmallfitError(f"structured pruning does not know '{arch['model_type']}' encoders")
    data = ctx.heal_data(model_dir)
    heads, neurons = _importance(model, data, step.importance_texts, parts)
    head_dim = arch["head_dim"]
    # Heads: ranked across layers after normalising each layer's scores (Michel et al. 2019);
    # every layer keeps its best head.
    normed = [h / (h.norm() + 1e-12) for h in heads]
    total = sum(len(h) for h in heads)
    n_drop = round(step.heads * total)
    ranked = sorted(
        ((float(s), i, j) for i, h in enumerate(normed) for j, s in enumerate(h)),
    )
    dropped: dict[int, set[int]] = {i: set() for i in range(len(heads))}
    for _, i, j in ranked:
        if n_drop == 0:
            break
        if len(dropped[i]) < len(heads[i]) - 1:
            dropped[i].add(j)
            n_drop -= 1
    layers = model.module.encoder.encoder.layer
    removed_heads = removed_neurons = 0
    for i, layer in enumerate(layers):
        keep_heads = [j for j in range(len(heads[i])) if j not in dropped[i]]
        if len(keep_heads) < len(heads[i]):
            cols = torch.cat([torch.arange(j * head_dim, (j + 1) * head_dim) for j in keep_heads])
            for path in parts[:3]:
                _replace(layer, path, _shrink(layer.get_submodule(path), cols, dim=0))
            _replace(layer, parts[3], _shrink(layer.get_submodule(parts[3]), cols, dim=1))
            removed_heads += len(heads[i]) - len(keep_heads)
        n_keep = len(neurons[i]) - round(step.ffn * len(neurons[i]))
        if n_keep < len(neurons[i]):
            keep = torch.sort(torch.argsort(neurons[i], descending=True)[:n_keep]).values
            _replace(layer, parts[4], _shrink(layer.get_submodule(parts[4]), keep, dim=0))
            _replace(layer, parts[5], _shrink(layer.get_submodule(parts[5]), keep, dim=1))
            removed_neurons += len(neurons[i]) - n_keep
    after = model.architecture()
    metrics: dict[str, Any] = {
        "heads_removed": removed_heads,
        "heads_total": total,
        "ffn_neurons_removed": removed_neurons,
        "ffn_neurons_total": sum(arch["ffn"]),
        "heads_per_layer": [a // head_dim for a in after["attention"]],
        "ffn_per_layer": after["ffn"],
        "parameters_before": parameters_before,
    }
    return _finish(model, step, out, ctx, (model_dir, reference), metrics)


def _mask_gradients(masks: dict[Any, Any]) -> list[Any]:
    """Keep pruned weights at zero while healing: their gradients are zeroed."""
    return [p.register_hook(lambda g, m=m: g * m) for p, m in masks.items()]


@register_step(PruneMagnitude, precondition=_magnitude_can_apply)
def _magnitude(
    step: PruneMagnitude, model_dir: Path, out: Path, ctx: StepContext
) -> dict[str, Any]:
    import torch

    model, reference = _source(model_dir, ctx)
    masks = {}
    with torch.no_grad():
        for _, linear in _linears(model):
            w = linear.weight
            k = int(step.sparsity * w.numel())
            threshold = w.abs().flatten().kthvalue(k).values if k else -1.0
            mask = (w.abs() > threshold).to(w.dtype)
            w.mul_(mask)
            masks[w] = mask
    hooks = _mask_gradients(masks)
    zeros = sum(int((m == 0).sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    metrics: dict[str, Any] = {"encoder_linear_sparsity": zeros / total}
    try:
        metrics = _finish(model, step, out, ctx, (model_dir, reference), metrics)
    finally:
        for hook in hooks:
            hook.remove()
    with torch.no_grad():  # healing cannot revive them, but make it exact
        for w, mask in masks.items():
            w.mul_(mask)
    model.save(out)
    weights = (out / "model.safetensors").read_bytes()
    source = (Path(model_dir) / "model.safetensors").read_bytes()
    metrics["weights_bytes"] = len(weights)
    metrics["weights_bytes_compressed"] = len(zlib.compress(weights, 6))
    metrics["source_weights_bytes_compressed"] = len(zlib.compress(source, 6))
    metrics["note"] = (
        "zeros are stored densely: CPU kernels run no faster and the file is no smaller; "
        "only a compressed copy shrinks"
    )
    return metrics
