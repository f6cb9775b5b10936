"""Which ops make a step wait for the GPU: a counter of the host-device synchronisations run under it.

A CUDA step runs ahead of the GPU until Python needs a value back: ``float()`` / ``.item()`` of a tensor
(``_local_scalar_dense``), or an op whose output size depends on the data (``nonzero``, ``x[mask]``,
``bincount``, ...). The ops are the same on a CPU, so they are counted anywhere; only their cost needs a GPU.
:class:`SyncCounter` is a ``TorchDispatchMode``: it sees every aten op of the Python thread under it, with the
ovseg3d line that ran it (the autograd engine's backward threads are not seen). Used by
``scripts/profile_steps.py`` and the tests that keep the training steps free of reads.
"""

from __future__ import annotations

import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNC_OPS = {
    "_local_scalar_dense": "value read back (float, int, item, bool)",
    "nonzero": "data-dependent size (nonzero)",
    "index[bool]": "data-dependent size (x[mask])",
    "masked_select": "data-dependent size (masked_select)",
    "bincount": "data-dependent size (bincount)",
    "repeat_interleave": "data-dependent size (repeat_interleave)",
    "unique_consecutive": "data-dependent size (unique)",
    "_unique2": "data-dependent size (unique)",
}


_THIS = Path(__file__).resolve()
PACKAGE = _THIS.parent


def where(stack: traceback.StackSummary) -> str:
    """The innermost frame of the package in a Python stack: ``ovseg3d/path.py:line (function)``."""
    for frame in reversed(stack):
        path = Path(frame.filename).resolve()
        if path.is_relative_to(PACKAGE) and path != _THIS:
            rel = path.relative_to(PACKAGE.parent).as_posix()
            return f"{rel}:{frame.lineno} ({frame.name})"
    return "(outside ovseg3d)"


def op_name(func: torch._ops.OpOverload, args: tuple) -> str:
    """The op's name, ``index[bool]`` for indexing by a mask."""
    name = func.overloadpacket.__name__
    if name in ("index", "index_put", "index_put_") and len(args) > 1:
        indices = args[1] if isinstance(args[1], (list, tuple)) else [args[1]]
        if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices):
            return "index[bool]"
    return name


class SyncCounter(TorchDispatchMode):
    """Counts the synchronising ops (:data:`SYNC_OPS`) run under it: ``counts[(op, where)]``."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[tuple[str, str]] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = op_name(func, args)
        if name in SYNC_OPS:
            self.counts[(name, where(traceback.extract_stack()))] += 1
        return func(*args, **(kwargs or {}))


def count_syncs(run: Callable[[], object]) -> Counter[tuple[str, str]]:
    """The synchronising ops that ``run()`` makes, by op and ovseg3d line."""
    with SyncCounter() as counter:
        run()
    return counter.counts


# aten ops that make no kernel (views and metadata): left out of :class:`OpCounter`'s count
VIEW_OPS = frozenset(
    "alias as_strided detach expand permute reshape select slice split squeeze t transpose unbind unsqueeze view "
    "_unsafe_view _reshape_alias".split()
)


class OpCounter(TorchDispatchMode):
    """Counts the aten ops run under it that are not views (:data:`VIEW_OPS`), by the ovseg3d function that ran
    them: on a GPU each launches about one kernel, and a step bound by launches costs about as many
    microseconds. The same ops run on a CPU, so they are counted anywhere (the autograd engine's backward
    threads are not seen; on a CPU a custom backward may run there)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func.overloadpacket.__name__ not in VIEW_OPS:
            path, _, line_and_function = where(traceback.extract_stack()).partition(":")
            self.counts[f"{path} {line_and_function.partition(' ')[2]}" if line_and_function else path] += 1
        return func(*args, **(kwargs or {}))


def count_ops(run: Callable[[], object]) -> Counter[str]:
    """The kernel-launching ops that ``run()`` makes, by ovseg3d file and function."""
    with OpCounter() as counter:
        run()
    return counter.counts


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` (on the CPU) copied to ``device`` without waiting for the GPU: through pinned memory with
    ``non_blocking=True`` on CUDA, where a plain ``.to(device)`` of pageable memory waits for every kernel
    queued before it. Other devices: ``.to(device)``."""
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
