"""The one place that knows the optional accelerators (tinycudann, nerfacc).

Everything else asks this module; a missing accelerator means the pure-PyTorch path and one
clear log line, never an import-time crash. Both are used only for CUDA tensors: importing
tinycudann without a GPU raises, and nerfacc's packed ops try to compile CUDA on first use.
"""

from __future__ import annotations

import functools
import logging
from types import ModuleType

import torch

log = logging.getLogger("ovseg3d")


@functools.cache
def _import(name: str) -> ModuleType | None:
    try:
        return __import__(name)
    except Exception as exc:  # tinycudann raises EnvironmentError without a GPU
        log.info("%s not usable (%s): using the PyTorch path", name, type(exc).__name__)
        return None


def _cuda(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda" and torch.cuda.is_available()


def tcnn(device: torch.device | str) -> ModuleType | None:
    """The ``tinycudann`` module when it can run on ``device``, else ``None``."""
    return _import("tinycudann") if _cuda(device) else None


@functools.cache
def _nerfacc_built() -> ModuleType | None:
    """``nerfacc`` with its CUDA extension loaded, else ``None``.

    nerfacc from PyPI compiles its CUDA ops on first use (a minute or more, once per machine);
    doing it here, on the first question, keeps that one-off build out of timed training steps.
    """
    module = _import("nerfacc")
    if module is None:
        return None
    try:
        from nerfacc.cuda import _backend
    except Exception as exc:  # a failed nvcc build surfaces as any of several exception types
        log.warning("nerfacc's CUDA extension could not be built (%s): using the PyTorch marcher", exc)
        return None
    if _backend._C is None:
        log.warning("nerfacc found no CUDA toolkit to build its extension: using the PyTorch marcher")
        return None
    return module


def nerfacc(device: torch.device | str) -> ModuleType | None:
    """The ``nerfacc`` module when its CUDA ops can run on ``device``, else ``None``."""
    return _nerfacc_built() if _cuda(device) else None


def describe(device: torch.device | str) -> str:
    """One line for logs: which implementation each part uses on ``device``."""
    grid = "tinycudann" if tcnn(device) is not None else "torch"
    sampler = "nerfacc" if nerfacc(device) is not None else "torch"
    return f"device={torch.device(device)} hash grid={grid} sampler={sampler}"


def configure_cpu_allocator() -> None:
    """Keep large temporaries in the process instead of returning them to the OS each time.

    Tensors up to 32 MB then come from the heap; keep per-chunk temporaries below that.

    glibc hands big blocks back to the kernel, so every op pays page faults again; raising
    the mmap and trim thresholds gave 3-5x on elementwise ops here (REFERENCE.md §7).
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's maximum: blocks above it are still mmapped
    libc.mallopt(m_trim_threshold, 1 << 30)


def machine_info(device: torch.device) -> dict[str, object]:
    """What a benchmark's JSON records about where it ran."""
    import platform

    return {
        "device": describe(device),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "machine": platform.platform(),
    }
