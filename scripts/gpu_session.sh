#!/usr/bin/env bash
# The GPU checks of issue 28 in as few device calls as possible, for a lent machine that cannot reach the
# package registries (its image has torch, transformers, nvcc and ninja, but not nerfacc, tyro or plyfile).
#
#   bash scripts/gpu_session.sh wheels   # here, with a network: the missing pure-Python wheels into .whl/
#   bash scripts/gpu_session.sh check    # there (carry .whl): CUDA tests, tinycudann's test, step profile, teachers
#   bash scripts/gpu_session.sh bench --fresh --scenes forward   # there (carry .whl): scripts/bench_gpu.py,
#   bash scripts/gpu_session.sh bench --fresh --scenes orbit     # one scene a call (10 min each at most); the
#                                                                # JSON under $OUT or bench/ keeps both rows
#
# nerfacc compiles its CUDA ops with the machine's nvcc on first use (about a minute, inside `check`).
# tinycudann is not on the image and cannot be fetched there: it is tested only where it is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(nerfacc==0.5.3 tyro docstring-parser typeguard shtab plyfile)
OUT_DIR="${OUT:-bench}"

install_wheels() {
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    # ovseg3d itself, so that its presets are found (configs/ is installed as ovseg3d.configs); the image's
    # setuptools builds it, nothing is fetched
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target /tmp/site .
    export PYTHONPATH="/tmp/site"
    export PYTHONUNBUFFERED=1
    python3 -c "import torch, ovseg3d.accel as a; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0)); print(a.describe('cuda'))"
}

case "${1:-}" in
wheels)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "${WHEELS[@]}"
    ls .whl
    ;;
check)
    install_wheels
    mkdir -p "$OUT_DIR"
    # -P: the source tree must not shadow the installed package (its presets are only in the installed one)
    python3 -P -m pytest -q -m cuda tests 2>&1 | tee "$OUT_DIR/cuda_tests.log" || true
    python3 -c "import ovseg3d.accel as a; print('tinycudann test:', a.run_test(a.TCNN_TEST))" || true
    python3 scripts/profile_steps.py --preset gpu --device cuda --out "$OUT_DIR/profile_steps_gpu.json"
    # real-size CLIP / DINO throughput on the GPU (CLIP batches of 256, as the gpu preset)
    python3 scripts/bench_teachers.py --device cuda --backends transformers --crops 1024 --batch 256 \
        --skip-synthetic --out "$OUT_DIR/teachers_gpu.json" || true
    ;;
bench)
    install_wheels
    mkdir -p "$OUT_DIR"
    # bench/ stays on a warm machine between calls ($OUT is new each call): the rows of both calls add up there
    python3 scripts/bench_gpu.py --out bench/gpu.json "${@:2}"
    [ "$OUT_DIR" = bench ] || cp bench/gpu.json "$OUT_DIR/gpu.json"
    ;;
*)
    echo "usage: bash scripts/gpu_session.sh wheels|check|bench [bench_gpu.py options]" >&2
    exit 2
    ;;
esac
