"""The accelerators cannot take a run down: tinycudann is tested in a separate process before its first use,
a crash there is reported in one line (signal and Python frame) and remembered per installation, and the
run goes on with the torch grid."""

from __future__ import annotations

import json

import pytest
import torch

from ovseg3d import accel
from ovseg3d.errors import UsageError
from ovseg3d.field.hashgrid import HashGridConfig, TorchHashGrid, make_hash_grid

SEGFAULT = "import ctypes; ctypes.string_at(0)"


def test_a_crash_in_the_test_process_is_one_line_naming_the_signal_and_the_frame():
    ok, detail = accel.run_test(SEGFAULT)
    assert not ok and detail.startswith("killed by SIGSEGV") and "string_at" in detail


def test_a_failing_test_names_its_error_and_a_passing_one_nothing():
    assert accel.run_test("import sys; sys.exit('no GPU here')") == (False, "exit status 1: no GPU here")
    assert accel.run_test("x = 1") == (True, "")


def test_the_answer_is_remembered_per_installation(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = accel.remembered_test("tinycudann build A", SEGFAULT)
    assert not first[0]
    # the same installation is not tested again: a passing test would now give another answer
    assert accel.remembered_test("tinycudann build A", "x = 1") == first
    assert accel.remembered_test("tinycudann build B", "x = 1") == (True, "")
    saved = json.loads((tmp_path / "ovseg3d" / "accelerators.json").read_text())
    assert set(saved) == {"tinycudann build A", "tinycudann build B"}
    (tmp_path / "ovseg3d" / "accelerators.json").write_text("{not json")  # damaged: tested again, rewritten
    assert accel.remembered_test("tinycudann build A", "x = 1") == (True, "")
    assert json.loads((tmp_path / "ovseg3d" / "accelerators.json").read_text()) == {"tinycudann build A": [True, ""]}


def test_without_a_gpu_auto_is_the_torch_grid_and_tcnn_is_refused_in_one_line():
    cfg = HashGridConfig(n_levels=2, log2_hashmap_size=8)
    assert isinstance(make_hash_grid(cfg, "cpu", "auto"), TorchHashGrid)
    with pytest.raises(UsageError, match="--grid-impl torch"):
        make_hash_grid(cfg, "cpu", "tcnn")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_tinycudann_is_used_only_when_its_test_passes():
    pytest.importorskip("tinycudann")
    ok, detail = accel.run_test(accel.TCNN_TEST)
    grid = make_hash_grid(HashGridConfig(n_levels=2, log2_hashmap_size=8), "cuda", "auto")
    assert isinstance(grid, TorchHashGrid) != ok, detail


def _lib(name: str):
    import _ctypes
    from pathlib import Path

    return Path(_ctypes.__file__) if name == "c" else Path(torch.__file__).parent / "lib" / "libc10.so"


def test_the_needed_libraries_of_an_elf_file_are_read_as_ldd_starts_from_them(tmp_path):
    if not _lib("c++").exists() or _lib("c").suffix != ".so":
        pytest.skip("needs torch's libc10.so and a compiled _ctypes (Linux)")
    cxx, c = accel.needed_libraries(_lib("c++")), accel.needed_libraries(_lib("c"))
    assert cxx is not None and "libstdc++.so.6" in cxx and "libc.so.6" in cxx
    assert c is not None and "libc.so.6" in c and not any(n.startswith("libstdc++") for n in c)
    (tmp_path / "notelf.so").write_text("not a shared library")
    assert accel.needed_libraries(tmp_path / "notelf.so") is None


def test_an_extension_without_a_dynamic_libstdcxx_gets_the_compiler_hint(tmp_path, monkeypatch):
    """tiny-cuda-nn built by a compiler that links libstdc++ statically crashed in its first forward pass (H100 and
    H200, torch 2.11): the warning then says how to rebuild it; a build that loads libstdc++.so says nothing."""
    import shutil

    if not _lib("c++").exists() or _lib("c").suffix != ".so":
        pytest.skip("needs torch's libc10.so and a compiled _ctypes (Linux)")
    for name, lib in (("static_bindings", "c"), ("dynamic_bindings", "c++")):
        pkg = tmp_path / name
        pkg.mkdir()
        (pkg / "__init__.py").write_text("")
        shutil.copy(_lib(lib), pkg / "_90_C.cpython-311-x86_64-linux-gnu.so")
    monkeypatch.syspath_prepend(str(tmp_path))
    hint = accel.static_libstdcxx_hint("static_bindings")
    assert "_90_C" in hint and "CC=/usr/bin/gcc CXX=/usr/bin/g++" in hint
    assert accel.static_libstdcxx_hint("dynamic_bindings") == ""
    assert accel.static_libstdcxx_hint("no_such_bindings") == ""
