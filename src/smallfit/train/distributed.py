"""Training launched on several processes (``accelerate launch``, ``torchrun``): which process
this is, and waiting for the others.

transformers' Trainer does the distributed training itself (DDP over the launcher's process
group); around it, only the main process writes the model, the run's records and its scratch
directories, and the others wait for it where they read what it wrote."""

from __future__ import annotations

import os
from typing import Any, TypeVar

T = TypeVar("T")


def world_size() -> int:
    """Processes the launcher started (1 when not launched)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """Whether this is the process that writes (rank 0, or the only one)."""
    return int(os.environ.get("RANK", "0")) == 0


WAIT_HOURS = 24
"""How long a process waits for the others: the first one alone may label with an LLM, or
train a student the others do not share, for hours (PyTorch's default is 30 minutes)."""


def _state() -> Any:
    """accelerate's process state, as the Trainer will find it (one per process, made once,
    here first): on the CPU (gloo) unless there are GPUs."""
    from datetime import timedelta

    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(hours=WAIT_HOURS))


def wait_for_everyone() -> None:
    """A barrier across the launched processes (nothing when there is one)."""
    if world_size() > 1:
        _state().wait_for_everyone()


def share_from_main(value: T) -> T:
    """The main process's ``value``, on every process (sent over the launcher's process group;
    the others' own ``value`` is ignored)."""
    if world_size() == 1:
        return value
    from accelerate.utils import broadcast_object_list

    _state()
    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]
