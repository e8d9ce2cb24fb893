#!/usr/bin/env bash
# Packs what tests/gpu/cuda.sh needs on a lent GPU machine that reaches no network and
# starts bare (run this here, where pip and the pinned sdist are at hand):
#
#   .whl/                 wheels of pyturbo's dependencies its image lacks: cffi (CPython
#                         3.12, manylinux x86-64), pycparser, gguf
#   .dev/gpu-kit/         llama.cpp.tar.xz: the pinned llama.cpp, unpatched, without docs,
#                         models and examples (about 8 MB; cuda.sh unpacks it and points
#                         vendor/materialize.py at it)
#   .dev/gpu-model-a/, .dev/gpu-model-b/
#                         the model in two halves: the device tool carries 64 MiB a call
#
# .whl/ and .dev/ are ignored by git. Then two device calls, the second issued at once
# after the first (a lent machine stays warm 30 s; what it built and copied stays there),
# each under the 10-minute limit of one command:
#
#   run(carry=[".dev/gpu-model-a", ".dev/gpu-kit", ".whl"], timeout_s=600, command=
#       "mkdir -p /tmp/kit && cp .dev/gpu-model-a/part /tmp/kit/part-a &&
#        LLAMA_CPP_TARBALL=.dev/gpu-kit/llama.cpp.tar.xz bash tests/gpu/cuda.sh build;
#        cp build/cuda-gpu/gpu-logs/build.log $OUT/")
#   run(carry=[".dev/gpu-model-b", ".whl"], timeout_s=600, command=
#       "cat /tmp/kit/part-a .dev/gpu-model-b/part > /tmp/model.gguf &&
#        MODEL=/tmp/model.gguf bash tests/gpu/cuda.sh test;
#        cp docs/results/cuda-*.md $OUT/; tar -czf $OUT/gpu-logs.tar.gz -C build/cuda-gpu gpu-logs")
#
# Environment: MODEL (default ~/.cache/pyturbo/models/SmolLM2-135M-Instruct.Q4_1.gguf),
# PYTHON (for pip, default python3), PYTURBO_CACHE (where the sdist is cached, as for
# vendor/materialize.py).
set -euo pipefail
cd "$(dirname "$0")/../.." || exit 1
ROOT=$PWD
MODEL=${MODEL:-$HOME/.cache/pyturbo/models/SmolLM2-135M-Instruct.Q4_1.gguf}
PYTHON=${PYTHON:-python3}

[ -f "$MODEL" ] || { echo "kit.sh: no model at $MODEL" >&2; exit 1; }

# wheels for the device's Python (3.12)
mkdir -p .whl
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "cffi>=1.15" pycparser "gguf>=0.10"

# the pinned llama.cpp, unpatched: what the patched build and test-backend-ops need
sdist=$("$PYTHON" -c "
import sys; sys.path.insert(0, 'vendor')
import materialize
print(materialize.fetch_sdist(materialize.read_pin()))")
subdir=$("$PYTHON" -c "
import sys; sys.path.insert(0, 'vendor')
import materialize
print(materialize.read_pin()['sdist_subdir'].rstrip('/'))")
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
depth=$(echo "$subdir" | awk -F/ '{print NF}')
tar -xzf "$sdist" -C "$staging" --strip-components="$depth" \
    "$subdir/CMakeLists.txt" "$subdir/cmake" "$subdir/ggml" "$subdir/src" "$subdir/include" \
    "$subdir/common" "$subdir/tests" "$subdir/tools" "$subdir/vendor" "$subdir/licenses"
mkdir -p .dev/gpu-kit
tar -cJf .dev/gpu-kit/llama.cpp.tar.xz -C "$staging" .

# the model in two halves
size=$(stat -c %s "$MODEL")
half=$(( (size + 1) / 2 ))
mkdir -p .dev/gpu-model-a .dev/gpu-model-b
head -c "$half" "$MODEL" >.dev/gpu-model-a/part
tail -c "+$(( half + 1 ))" "$MODEL" >.dev/gpu-model-b/part
cat .dev/gpu-model-a/part .dev/gpu-model-b/part | cmp -s - "$MODEL" || { echo "kit.sh: the halves do not add up to $MODEL" >&2; exit 1; }

du -sh .whl .dev/gpu-kit .dev/gpu-model-a .dev/gpu-model-b
echo "kit.sh: ready in $ROOT (the two device calls are in this script's header)"
