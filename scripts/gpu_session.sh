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
#   bash scripts/gpu_session.sh tcnn-src DIR # here: tiny-cuda-nn's sources (a checkout with its submodules;
#                                            # none given: cloned from GitHub) packed into .tcnn/ (about 2 MB)
#   bash scripts/gpu_session.sh tcnn         # there (carry .whl .tcnn): build tinycudann's encodings, test them in
#                                            # a separate Python, a native backtrace (cuda-gdb) if that crashes;
#                                            # if it passes: the parity test, grid speed, 30 s of training
#
# nerfacc compiles its CUDA ops with the machine's nvcc on first use (about a minute, inside `check`).
# tinycudann is not on the image and cannot be fetched there: `tcnn` builds it from the carried sources.
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
tcnn-src)
    # only what the PyTorch bindings compile: cutlass's headers, not its 400 MB of everything else
    src="${2:-}"
    if [ -z "$src" ]; then
        src=/tmp/tiny-cuda-nn-src
        rm -rf "$src"
        git clone -q --recursive --depth 1 --shallow-submodules https://github.com/NVlabs/tiny-cuda-nn "$src"
    fi
    [ -f "$src/bindings/torch/setup.py" ] && [ -d "$src/dependencies/cutlass/include" ] && [ -d "$src/dependencies/fmt/src" ] || {
        echo "$src is not a tiny-cuda-nn checkout with its submodules (cutlass, fmt)" >&2
        exit 2
    }
    mkdir -p .tcnn
    tar czf .tcnn/tiny-cuda-nn.tar.gz -C "$src" --transform 's,^\.,tiny-cuda-nn,' \
        ./CMakeLists.txt ./LICENSE.txt ./bindings ./include ./src ./dependencies/fmt/include ./dependencies/fmt/src \
        ./dependencies/cutlass/include ./dependencies/cutlass/tools/util/include ./dependencies/pcg32 \
        ./dependencies/pybind11_json ./dependencies/json
    (cd "$src" && git rev-parse HEAD 2>/dev/null || echo unknown) > .tcnn/COMMIT
    ls -la .tcnn
    ;;
tcnn)
    install_wheels
    mkdir -p "$OUT_DIR"
    log="$(realpath "$OUT_DIR")/tcnn.log"
    rm -rf /tmp/tiny-cuda-nn && tar xzf .tcnn/tiny-cuda-nn.tar.gz -C /tmp
    {
        echo "tiny-cuda-nn $(cat .tcnn/COMMIT 2>/dev/null)"
        nvcc --version | tail -n 2
        python3 -c "import torch, setuptools; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'setuptools', setuptools.__version__)"
    } 2>&1 | tee "$log"
    cd /tmp/tiny-cuda-nn/bindings/torch
    # setuptools 81+ has no pkg_resources: its setup.py needs only parse_version, which packaging has
    python3 -c "import pkg_resources" 2>/dev/null ||
        sed -i 's/^from pkg_resources import parse_version/from packaging.version import parse as parse_version/' setup.py
    # ovseg3d uses tiny-cuda-nn's encodings only: --no-networks leaves out its MLPs (half the build)
    export MAX_JOBS=16 TCNN_CUDA_ARCHITECTURES
    TCNN_CUDA_ARCHITECTURES="$(python3 -c "import torch; a, b = torch.cuda.get_device_capability(); print(10 * a + b)")"
    start=$SECONDS
    python3 setup.py --no-networks bdist_wheel -d /tmp/tcnn_wheel >>"$log" 2>&1 || { tail -n 40 "$log"; exit 1; }
    echo "built in $((SECONDS - start)) s" | tee -a "$log"
    python3 -m pip install -q --no-index --no-deps --no-cache-dir --target /tmp/site /tmp/tcnn_wheel/*.whl
    cd - >/dev/null
    { ldd /tmp/site/tinycudann_bindings/*.so | grep -E "cuda|nvrtc|torch|c10|stdc" || true; } | tee -a "$log"
    verdict="$(python3 -c "import ovseg3d.accel as a; ok, why = a.run_test(a.TCNN_TEST); print('passed' if ok else 'FAILED: ' + why)")"
    echo "tinycudann test: $verdict" | tee -a "$log"
    if [ "$verdict" = passed ]; then
        python3 -P -m pytest -q -m cuda tests/test_hashgrid.py 2>&1 | tee -a "$log" || true
        python3 scripts/benchmark.py --preset gpu --device cuda --skip-train --grid-points 1048576 \
            --out "$OUT_DIR/tcnn_grid.json" 2>&1 | tee -a "$log" || true
        python3 scripts/benchmark.py --preset gpu --device cuda --skip-grid --marks 10 20 30 --set grid_impl=tcnn \
            --out "$OUT_DIR/tcnn_train.json" 2>&1 | tee -a "$log" || true
    else
        # where it crashes: the native stack (the image has cuda-gdb, not gdb) and the libraries loaded
        timeout 300 cuda-gdb -batch -ex "set pagination off" -ex run -ex bt -ex "info sharedlibrary" \
            --args python3 -c "import ovseg3d.accel as a; exec(a.TCNN_TEST)" >"$OUT_DIR/tcnn_backtrace.txt" 2>&1 || true
        grep -E -A 30 "SIGSEGV|signal" "$OUT_DIR/tcnn_backtrace.txt" | head -n 60 || tail -n 60 "$OUT_DIR/tcnn_backtrace.txt"
    fi
    ;;
*)
    echo "usage: bash scripts/gpu_session.sh wheels|check|bench [bench_gpu.py options]|tcnn-src [DIR]|tcnn" >&2
    exit 2
    ;;
esac
