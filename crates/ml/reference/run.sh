#!/usr/bin/env bash
# Regenerates smollm2_q4_1_reference.json with llama.cpp (through llama-cpp-python) as the
# reference. Builds llama-cpp-python from source into a venv outside the repository on first use
# (about 7 minutes on 2 cores), fetches the model with scripts/fetch-models.sh, then runs
# llama_cpp_reference.py. Extra arguments go to the script, e.g. `run.sh bench` for the decode
# speed measurement quoted in README.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)

llama_cpp_python_version=0.3.36
venv=${OPENLEDGER_TOOLS_DIR:-/var/tmp/openledger-tools}/llamacpp-venv
# A portable CPU build for x86-64-v3 (AVX2, FMA, F16C, BMI2; no AVX-512), the same target the
# Rust engine is built for, so neither side gets instructions the other lacks.
cmake_args="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_VULKAN=OFF"

installed_version() {
    "$venv/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)' 2>/dev/null || true
}

if [ "$(installed_version)" != "$llama_cpp_python_version" ]; then
    echo "==> building llama-cpp-python $llama_cpp_python_version into $venv (CMAKE_ARGS: $cmake_args)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    # numpy is a runtime dependency of llama-cpp-python; installing it first keeps the one
    # source build below the only slow step. FORCE_CMAKE makes a cached wheel built with
    # other flags unusable.
    "$venv/bin/pip" install --quiet numpy
    CMAKE_ARGS="$cmake_args" FORCE_CMAKE=1 CMAKE_BUILD_PARALLEL_LEVEL=2 \
        "$venv/bin/pip" install --no-cache-dir --no-binary llama-cpp-python \
        "llama-cpp-python==$llama_cpp_python_version"
fi

model=$("$repo/scripts/fetch-models.sh" smollm2)
exec "$venv/bin/python" "$here/llama_cpp_reference.py" --model "$model" "$@"
