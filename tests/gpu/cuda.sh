#!/usr/bin/env bash
# The turbo KV-cache types on an NVIDIA GPU, end to end (issue 15):
#
#   bash tests/gpu/cuda.sh [all|build|test]    (from anywhere; results in docs/results/cuda-<gpu>.md)
#
# "build" does step 1 only and "test" steps 2-5 on the build that is there, so that the
# two halves fit two commands of a lent machine's 10-minute limit; "all" (default) does both.
#
#   1. build: the patched llama.cpp with pyturbo's kernels, GGML_CUDA=ON for this GPU's
#      architecture only (nvidia-smi's compute_cap), flash-attention vector instances for
#      f16-f16, q8_0-q8_0 and pyturbo's six turbo pairs only, PYTURBO_DEV_TOOLS=ON for
#      test-backend-ops; targets llama, ggml (with ggml-cuda) and test-backend-ops;
#   2. test-backend-ops -b CUDA0 on the turbo cases (-p turbo) of SET_ROWS, CPY, GET_ROWS,
#      MUL_MAT and FLASH_ATTN_EXT: the CUDA results against the CPU's;
#   3. python -m pyturbo.selftest MODEL -ngl 99 (pyturbo from this checkout, PYTURBO_LIB_DIR
#      = the build's bin/): logits of every cache pair on the GPU against the CPU;
#   4. python -m pyturbo.bench MODEL -ngl 99 -fa on -p 512 -n 128 -d 0,8192,32768 for
#      f16/f16, q8_0/q8_0, q8_0/turbo3, turbo4/turbo4, turbo3/turbo3, and the issue's speed
#      targets (turbo3/turbo3 against q8_0/q8_0) computed from it;
#   5. docs/results/cuda-<gpu>.md: each step's result, the tables, the commands.
#
# Every step runs even when an earlier one failed (except those that need a build that
# failed); its log goes to $LOGS, its tail is printed when it fails, and the summary says
# PASS/FAIL per step. Exit status 1 if any step failed.
#
# Time, estimated (not yet measured on a GPU machine): the build is about 100 CPU-minutes on
# this project's 2-core machine for one architecture (ggml-cuda's 151 objects: mmq 60 s,
# fattn-mma 90 s, fattn-tile 70 s each), so 5-7 minutes on 16 cores; the tests, the
# selftest and the bench 2-4 minutes.
#
# Environment:
#   MODEL        GGUF to test (default ~/.cache/pyturbo/models/SmolLM2-135M-Instruct.Q4_1.gguf)
#   JOBS         build jobs (default: nproc)
#   BUILD        build folder (default build/cuda-gpu, ignored by git)
#   PYTHON       interpreter with numpy, tqdm, cffi and gguf (default python3)
#   WHEELS       folder of wheels to install first into a private site folder, for machines
#                without network or those packages (default .whl/ when it exists)
#   CUDA_ARCH    architecture to build, e.g. 90 (default: the first GPU's compute_cap)
#   RESULTS      the results file (default docs/results/cuda-<gpu>.md)
#   PYTURBO_LLAMA_CPP_DIR / PYTURBO_CACHE: where vendor/materialize.py finds the pinned
#                llama.cpp without network (an unpatched tree, or a cache holding the sdist);
#                LLAMA_CPP_TARBALL, an unpatched tree as .tar.xz, is unpacked and used as
#                PYTURBO_LLAMA_CPP_DIR (tests/gpu/kit.sh makes one)
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
ROOT=$PWD
PHASE=${1:-all}
case "$PHASE" in
    all|build|test) ;;
    *) echo "usage: bash tests/gpu/cuda.sh [all|build|test]" >&2; exit 2 ;;
esac

MODEL=${MODEL:-$HOME/.cache/pyturbo/models/SmolLM2-135M-Instruct.Q4_1.gguf}
JOBS=${JOBS:-$(nproc)}
BUILD=${BUILD:-$ROOT/build/cuda-gpu}
PYTHON=${PYTHON:-python3}
LOGS=$BUILD/gpu-logs
BENCH_PAIRS=(f16/f16 q8_0/q8_0 q8_0/turbo3 turbo4/turbo4 turbo3/turbo3)
BACKEND_OPS=(SET_ROWS CPY GET_ROWS MUL_MAT FLASH_ATTN_EXT)

mkdir -p "$LOGS"
script_start=$(date +%s)
summary=()
failed=0
build_ok=0

# record NAME RESULT DETAIL SECONDS
record() {
    summary+=("| $1 | $2 | $3 | $4 s |")
    [ "$2" = PASS ] || failed=1
}

# run_step NAME LOG CMD...: CMD's output into LOG; sets step_rc and step_seconds,
# prints the log's tail when CMD fails
run_step() {
    local name=$1 log=$2
    shift 2
    echo "== $name"
    local t0
    t0=$(date +%s)
    step_rc=0
    "$@" >"$log" 2>&1 || step_rc=$?
    step_seconds=$(( $(date +%s) - t0 ))
    if [ "$step_rc" -ne 0 ]; then
        echo "   FAILED (exit $step_rc) after ${step_seconds}s; last lines of $log:"
        tail -n 30 "$log" | sed 's/^/   | /'
    else
        echo "   ok (${step_seconds}s)"
    fi
}

die() {
    echo "cuda.sh: $*" >&2
    exit 1
}

# ---- the machine -----------------------------------------------------------------------
command -v nvidia-smi >/dev/null || die "no nvidia-smi: this script needs an NVIDIA GPU"
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)
GPU_CC=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1)
DRIVER=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n 1)
if [ -z "$GPU_NAME" ] || [ -z "$GPU_CC" ]; then
    die "nvidia-smi lists no GPU"
fi
CUDA_ARCH=${CUDA_ARCH:-${GPU_CC//./}}
GPU_SLUG=$(echo "$GPU_NAME" | tr '[:upper:]' '[:lower:]' | sed -e 's/^nvidia //' -e 's/[^a-z0-9]\{1,\}/-/g' -e 's/^-//' -e 's/-$//')
RESULTS=${RESULTS:-$ROOT/docs/results/cuda-$GPU_SLUG.md}
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
[ -x "$NVCC" ] || die "no nvcc (CUDA toolkit) found"
echo "GPU: $GPU_NAME (compute capability $GPU_CC, driver $DRIVER); building for sm_$CUDA_ARCH with $JOBS jobs"

if [ -n "${LLAMA_CPP_TARBALL:-}" ]; then
    unpacked=$BUILD/llama.cpp-unpatched
    rm -rf "$unpacked"
    mkdir -p "$unpacked"
    tar -xJf "$LLAMA_CPP_TARBALL" -C "$unpacked" || die "could not unpack $LLAMA_CPP_TARBALL"
    export PYTURBO_LLAMA_CPP_DIR=$unpacked
fi

WHEELS=${WHEELS:-$ROOT/.whl}
if [ -d "$WHEELS" ] && compgen -G "$WHEELS/*.whl" >/dev/null; then
    site=$BUILD/site-packages
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$WHEELS"/*.whl ||
        die "could not install the wheels in $WHEELS"
    export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi

# ---- 1. build -------------------------------------------------------------------------
CONFIGURE=(cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release
           -DGGML_CUDA=ON -DCMAKE_CUDA_COMPILER="$NVCC" -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCH-real"
           -DGGML_CUDA_FA_QUANTS=q8_0-q8_0 -DGGML_CUDA_NCCL=OFF -DPYTURBO_DEV_TOOLS=ON)
BUILD_CMD=(cmake --build "$BUILD" -j "$JOBS" --target llama ggml test-backend-ops)
TURBO_PAIRS_LINE="pyturbo: CUDA flash-attention turbo K-V pairs: turbo2-turbo2;turbo3-turbo3;turbo4-turbo4;q8_0-turbo2;q8_0-turbo3;q8_0-turbo4"
build_and_check() {
    "${CONFIGURE[@]}" || return
    # the configure output (in this step's log) must name all six turbo pairs
    grep -qF "$TURBO_PAIRS_LINE" "$LOGS/build.log" || { echo "cuda.sh: the configure did not select the six turbo pairs"; return 1; }
    "${BUILD_CMD[@]}"
}
BIN=$BUILD/bin
BUILD_ROW=$LOGS/build.row   # the build's summary row, for a later "test" run's results
if [ "$PHASE" != test ]; then
    run_step "build (sm_$CUDA_ARCH)" "$LOGS/build.log" build_and_check
    if [ "$step_rc" -eq 0 ]; then
        build_ok=1
        record "build: GGML_CUDA=ON, sm_$CUDA_ARCH, FA instances f16-f16, q8_0-q8_0 + 6 turbo pairs" PASS "" "$step_seconds"
    else
        record "build: GGML_CUDA=ON, sm_$CUDA_ARCH" FAIL "exit $step_rc, see $LOGS/build.log" "$step_seconds"
    fi
    echo "${summary[-1]}" >"$BUILD_ROW"
    if [ "$PHASE" = build ]; then
        echo "== build: ${summary[-1]}"
        exit "$failed"
    fi
else
    if [ -x "$BIN/test-backend-ops" ] && compgen -G "$BIN/libggml-cuda.*" >/dev/null; then
        build_ok=1
    else
        echo "cuda.sh: no CUDA build in $BUILD (run: bash tests/gpu/cuda.sh build)"
    fi
    if [ -f "$BUILD_ROW" ]; then
        summary+=("$(cat "$BUILD_ROW")")
        grep -q '| PASS |' "$BUILD_ROW" || failed=1
    else
        record "build in $BUILD (not from this run)" "$([ "$build_ok" -eq 1 ] && echo PASS || echo FAIL)" "" 0
    fi
fi

# ---- 2. test-backend-ops ---------------------------------------------------------------
backend_tables=""
for op in "${BACKEND_OPS[@]}"; do
    log=$LOGS/test-backend-ops-$op.log
    if [ "$build_ok" -ne 1 ]; then
        record "test-backend-ops -b CUDA0 -o $op -p turbo" FAIL "not run: no build" 0
        continue
    fi
    run_step "test-backend-ops $op" "$log" "$BIN/test-backend-ops" test -b CUDA0 -o "$op" -p turbo -j 4
    counts=$(grep -Eo '[0-9]+/[0-9]+ tests passed' "$log" | tail -n 1)
    unsupported=$(grep -c "not supported" "$log" || true)
    failed_cases=$(sed -n '/^Failing tests:/,$p' "$log" | head -n 25)
    # a run that tests nothing passes vacuously: require at least one passed case
    if [ "$step_rc" -eq 0 ] && [ -n "$counts" ] && [ "${counts%%/*}" -gt 0 ]; then
        record "test-backend-ops -b CUDA0 -o $op -p turbo" PASS "$counts, $unsupported not supported" "$step_seconds"
    else
        record "test-backend-ops -b CUDA0 -o $op -p turbo" FAIL "${counts:-no count} (exit $step_rc)" "$step_seconds"
        backend_tables+=$'\n'"Failed $op cases:"$'\n\n```\n'"${failed_cases:-(see $log)}"$'\n```\n'
    fi
done

# ---- pyturbo against the build -----------------------------------------------------------
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
export PYTURBO_LIB_DIR=$BIN
export PYTHONUNBUFFERED=1
python_ok=1
if [ "$build_ok" -ne 1 ]; then
    python_ok=0
elif ! "$PYTHON" -c "import cffi, gguf, numpy, tqdm" 2>"$LOGS/python-imports.log"; then
    python_ok=0
    echo "   $PYTHON lacks pyturbo's dependencies (cffi, gguf, numpy, tqdm): $(tail -n 1 "$LOGS/python-imports.log")"
    echo "   (carry wheels in .whl/ or set WHEELS; see tests/gpu/kit.sh)"
elif [ ! -f "$MODEL" ]; then
    python_ok=0
    echo "   no model at $MODEL (set MODEL)"
fi

# ---- 3. selftest -----------------------------------------------------------------------
SELFTEST=("$PYTHON" -m pyturbo.selftest "$MODEL" -ngl 99)
if [ "$python_ok" -eq 1 ]; then
    run_step "pyturbo.selftest" "$LOGS/selftest.log" "${SELFTEST[@]}"
    if [ "$step_rc" -eq 0 ]; then
        record "python -m pyturbo.selftest MODEL -ngl 99" PASS "" "$step_seconds"
    else
        record "python -m pyturbo.selftest MODEL -ngl 99" FAIL "exit $step_rc" "$step_seconds"
    fi
else
    record "python -m pyturbo.selftest MODEL -ngl 99" FAIL "not run: no build, Python packages or model" 0
fi

# ---- 4. bench --------------------------------------------------------------------------
BENCH_DEPTHS=0,8192,32768
BENCH_ARGS=(-ngl 99 -fa on -p 512 -n 128 -d "$BENCH_DEPTHS")
bench_jsonl=$LOGS/bench.jsonl
: >"$bench_jsonl"
# bench_pair K V OUT: the bench's JSON lines into OUT, its log (progress, errors) on stderr
bench_pair() {
    "$PYTHON" -m pyturbo.bench "$MODEL" "${BENCH_ARGS[@]}" -ctk "$1" -ctv "$2" -o jsonl >"$3"
}
for pair in "${BENCH_PAIRS[@]}"; do
    k=${pair%/*}
    v=${pair#*/}
    if [ "$python_ok" -ne 1 ]; then
        record "pyturbo.bench $pair" FAIL "not run: no build, Python packages or model" 0
        continue
    fi
    log=$LOGS/bench-${k}-${v}.log
    out=$LOGS/bench-${k}-${v}.jsonl
    run_step "pyturbo.bench $pair" "$log" bench_pair "$k" "$v" "$out"
    if [ "$step_rc" -eq 0 ]; then
        cat "$out" >>"$bench_jsonl"
        record "python -m pyturbo.bench MODEL ${BENCH_ARGS[*]} -ctk $k -ctv $v" PASS "" "$step_seconds"
    else
        record "python -m pyturbo.bench MODEL ${BENCH_ARGS[*]} -ctk $k -ctv $v" FAIL "exit $step_rc" "$step_seconds"
    fi
done

# The issue's speed targets: turbo3/turbo3 against q8_0/q8_0.
speed_report() {
    "$PYTHON" - "$bench_jsonl" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
ts = {(r["type_k"], r["type_v"], r["test"]): r["avg_ts"] for r in rows}
tests = sorted({r["test"] for r in rows}, key=lambda t: (int(t.split("@ d")[1]) if "@ d" in t else 0, t))
pairs = list(dict.fromkeys((r["type_k"], r["type_v"]) for r in rows))
print("| K / V | " + " | ".join(tests) + " |")
print("|---|" + "---:|" * len(tests))
for k, v in pairs:
    print(f"| {k} / {v} | " + " | ".join(f"{ts[(k, v, t)]:.1f}" if (k, v, t) in ts else "-" for t in tests) + " |")
print()
targets = [("tg128 @ d8192", 0.90), ("tg128 @ d32768", 1.00), ("pp512 @ d8192", 0.95)]
print("| target: turbo3/turbo3 vs q8_0/q8_0 | ratio | needed | met |")
print("|---|---:|---:|---|")
ok = True
for test, need in targets:
    a, b = ts.get(("turbo3", "turbo3", test)), ts.get(("q8_0", "q8_0", test))
    if a is None or b is None:
        print(f"| {test} | - | {need:.2f} | no data |")
        ok = False
        continue
    met = a / b >= need
    ok &= met
    print(f"| {test} | {a / b:.3f} | {need:.2f} | {'yes' if met else 'NO'} |")
sys.exit(0 if ok else 3)
EOF
}
speed_table=""
if [ -s "$bench_jsonl" ]; then
    speed_rc=0
    speed_table=$(speed_report) || speed_rc=$?
    if [ "$speed_rc" -eq 0 ]; then
        record "speed targets (turbo3/turbo3 vs q8_0/q8_0)" PASS "all met" 0
    elif [ "$speed_rc" -eq 3 ]; then
        record "speed targets (turbo3/turbo3 vs q8_0/q8_0)" FAIL "not all met" 0
    else
        record "speed targets (turbo3/turbo3 vs q8_0/q8_0)" FAIL "could not read the bench results" 0
    fi
else
    record "speed targets (turbo3/turbo3 vs q8_0/q8_0)" FAIL "no bench results" 0
fi

# ---- 5. results ------------------------------------------------------------------------
total_seconds=$(( $(date +%s) - script_start ))
mkdir -p "$(dirname "$RESULTS")"
{
    echo "# CUDA: the turbo KV-cache types on $GPU_NAME"
    echo
    commit=$(git rev-parse --short HEAD 2>/dev/null)
    if [ -z "$commit" ]; then
        commit="unknown (no git metadata)"
    elif ! git diff --quiet HEAD 2>/dev/null; then
        commit="$commit (with local changes)"
    fi
    echo "\`bash tests/gpu/cuda.sh\` on $(date -u +%Y-%m-%d), commit $commit;"
    echo "$GPU_NAME, compute capability $GPU_CC, driver $DRIVER, $("$NVCC" --version | grep -o 'release [0-9.]*'), $(nproc) CPU cores;"
    echo "model $(basename "$MODEL"); ${total_seconds}s in all."
    echo
    echo "| step | result | detail | time |"
    echo "|---|---|---|---|"
    printf '%s\n' "${summary[@]}"
    echo "$backend_tables"
    echo "## Speed (tokens/s, pyturbo.bench, flash attention on, all layers on the GPU)"
    echo
    if [ -n "$speed_table" ]; then
        echo "$speed_table"
    else
        echo "No bench results."
    fi
    echo
    echo "## Selftest (logits on the GPU against the CPU, same cache pair)"
    echo
    if [ -f "$LOGS/selftest.log" ]; then
        echo '```'
        grep -v '^\s*$' "$LOGS/selftest.log" | grep -v 'it/s\]\|s/it\]' | tail -n 40
        echo '```'
    else
        echo "Not run."
    fi
    echo
    echo "## Commands"
    echo
    echo '```'
    echo "${CONFIGURE[*]}"
    echo "${BUILD_CMD[*]}"
    for op in "${BACKEND_OPS[@]}"; do
        echo "$BIN/test-backend-ops test -b CUDA0 -o $op -p turbo -j 4"
    done
    echo "PYTURBO_LIB_DIR=$BIN PYTHONPATH=$ROOT ${SELFTEST[*]}"
    for pair in "${BENCH_PAIRS[@]}"; do
        echo "PYTURBO_LIB_DIR=$BIN PYTHONPATH=$ROOT $PYTHON -m pyturbo.bench $MODEL ${BENCH_ARGS[*]} -ctk ${pair%/*} -ctv ${pair#*/} -o jsonl"
    done
    echo '```'
} >"$RESULTS"

echo
echo "== summary (${total_seconds}s; written to $RESULTS)"
printf '%s\n' "${summary[@]}"
if [ -n "$speed_table" ]; then
    echo
    echo "$speed_table"
fi
exit "$failed"
