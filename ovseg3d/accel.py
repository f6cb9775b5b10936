"""The one place that knows the optional accelerators (tinycudann, nerfacc).

Everything else asks this module; a missing accelerator means the pure-PyTorch path and one
clear log line, never an import-time crash. Both are used only for CUDA tensors: importing
tinycudann without a GPU raises, and nerfacc's packed ops try to compile CUDA on first use.

A tinycudann build that does not match its torch, CUDA or GPU can crash the process in its first forward
pass (a segfault no Python code can catch; seen with tiny-cuda-nn 2.0, torch 2.11, CUDA 13 on an H100). So
before it is first used, a separate Python runs a forward and backward pass of a small tinycudann grid
(:data:`TCNN_TEST`); if that process dies or fails, ovseg3d says so in one line and uses its torch grid. The
answer is remembered per installation (tinycudann's files, torch, CUDA, the GPU) in
``~/.cache/ovseg3d/accelerators.json``, so the test costs its few seconds once.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import torch

from ovseg3d.atomic import write_json

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


TCNN_TEST = """
import torch, tinycudann
config = {"otype": "HashGrid", "n_levels": 8, "n_features_per_level": 2, "log2_hashmap_size": 15,
          "base_resolution": 16, "per_level_scale": 1.5}
grid = tinycudann.Encoding(3, config).cuda()
x = torch.rand(4096, 3, device="cuda")
y = grid(x)
y.float().square().sum().backward()
torch.cuda.synchronize()
assert y.shape == (4096, 16) and bool(torch.isfinite(y).all()), "outputs not finite"
assert grid.params.grad is not None and bool(grid.params.grad.abs().sum() > 0), "no gradient"
"""
"""What a tinycudann installation must survive in a separate process before ovseg3d uses it."""


def signal_name(number: int) -> str:
    """``SIGSEGV`` for 11, ``signal N`` for a number without a name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def run_test(code: str, timeout: float = 600.0) -> tuple[bool, str]:
    """Run ``code`` in a fresh Python (``-X faulthandler``): whether it exited with status 0, and else one line
    on how it failed: the signal that killed it and the innermost Python frame it was in, or the last line of
    its error output."""
    try:
        proc = subprocess.run(
            [sys.executable, "-X", "faulthandler", "-c", code], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return False, f"no answer in {timeout:.0f} s"
    if proc.returncode == 0:
        return True, ""
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    if proc.returncode < 0:
        frames = [line for line in lines if line.startswith("File ")]
        return False, f"killed by {signal_name(-proc.returncode)}" + (f" ({frames[0]})" if frames else "")
    return False, f"exit status {proc.returncode}" + (f": {lines[-1]}" if lines else "")


def needed_libraries(path: Path) -> list[str] | None:
    """The shared libraries an ELF64 little-endian file names as needed (its ``DT_NEEDED`` entries, what ``ldd``
    starts from), or ``None`` when ``path`` is not such a file."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    shoff, (shentsize, shnum) = struct.unpack_from("<Q", data, 0x28)[0], struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    for _, kind, _, _, offset, size, link, _, _, entsize in sections:
        if kind != 6 or entsize == 0:  # SHT_DYNAMIC; its sh_link is the string table it refers to
            continue
        strings = sections[link][4]
        names = []
        for i in range(size // entsize):
            tag, value = struct.unpack_from("<qQ", data, offset + i * entsize)
            if tag == 0:  # DT_NULL ends the table
                break
            if tag == 1:  # DT_NEEDED
                end = data.index(b"\0", strings + value)
                names.append(data[strings + value : end].decode(errors="replace"))
        return names
    return []


def static_libstdcxx_hint(package: str = "tinycudann_bindings") -> str:
    """One sentence when ``package``'s compiled extension does not load libstdc++ dynamically (a compiler that
    links it statically; that copy's locale code crashes on meeting torch's libstdc++, as tiny-cuda-nn's
    first forward pass did), else ``""``."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return ""
    for lib in sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.so")):
        needed = needed_libraries(lib)
        if needed is not None and not any(n.startswith("libstdc++") for n in needed):
            return (
                f"{lib.name} does not load libstdc++.so dynamically: it was built by a compiler that links "
                "libstdc++ statically, which crashes beside torch's; rebuild it with the system compiler "
                "(CC=/usr/bin/gcc CXX=/usr/bin/g++, see the README)"
            )
    return ""


def cache_file() -> Path:
    """Where tested accelerators are remembered: ``$XDG_CACHE_HOME/ovseg3d`` or ``~/.cache/ovseg3d``."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "ovseg3d" / "accelerators.json"


def remembered_test(key: str, code: str) -> tuple[bool, str]:
    """:func:`run_test`, its answer remembered under ``key`` in :func:`cache_file` (an unreadable cache is
    ignored and rewritten; one that cannot be written costs only the test next time)."""
    path = cache_file()
    try:
        known = json.loads(path.read_text())
        if not isinstance(known, dict):
            known = {}
    except (OSError, ValueError):
        known = {}
    if isinstance(known.get(key), list) and len(known[key]) == 2:
        ok, detail = known[key]
        return bool(ok), str(detail)
    ok, detail = run_test(code)
    known[key] = [ok, detail]
    try:
        write_json(path, known)
    except OSError:
        pass
    return ok, detail


def _installation_key(name: str) -> str | None:
    """What identifies one installation of ``name`` with this torch and GPU (``None``: not installed)."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        return None
    files = Path(spec.origin).parent
    stamp = max((p.stat().st_mtime_ns for p in files.iterdir() if p.is_file()), default=0)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no gpu"
    return f"{name} {files} {stamp} | torch {torch.__version__} cuda {torch.version.cuda} | {gpu}"


@functools.cache
def _tcnn_tested() -> ModuleType | None:
    key = _installation_key("tinycudann")
    if key is None:
        log.info("tinycudann not installed: using the PyTorch hash grid")
        return None
    ok, detail = remembered_test(key, TCNN_TEST)
    if not ok:
        hint = static_libstdcxx_hint()
        log.warning(
            "tinycudann failed its test in a separate process (%s): using the PyTorch hash grid "
            "(--grid-impl torch skips tinycudann; delete %s to test it again)%s",
            detail,
            cache_file(),
            f". {hint}" if hint else "",
        )
        return None
    return _import("tinycudann")


def tcnn(device: torch.device | str) -> ModuleType | None:
    """The ``tinycudann`` module when it can run on ``device`` (installed, and its test passed), else ``None``."""
    return _tcnn_tested() if _cuda(device) else None


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


def describe(device: torch.device | str, grid_impl: str = "auto") -> str:
    """One line for logs: which implementation each part uses on ``device`` (the hash grid as ``grid_impl``,
    ``--grid-impl``, chooses it)."""
    grid = "tinycudann" if grid_impl != "torch" and tcnn(device) is not None else "torch"
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
