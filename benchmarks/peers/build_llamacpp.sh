#!/usr/bin/env bash
# llama.cpp's speculative-decoding program, built from the llama.cpp sources vendored in the pinned
# llama-cpp-python sdist (the same sources the `peers` extra compiles into the Python binding).
#   bash benchmarks/peers/build_llamacpp.sh SCRATCH   # -> SCRATCH/llama.cpp-build/bin/llama-speculative
set -euo pipefail
scratch=${1:?usage: build_llamacpp.sh SCRATCH_FOLDER}
version=0.3.36
here=$(cd "$(dirname "$0")/../.." && pwd)
py=${PYTHON:-$here/.venv/bin/python}
mkdir -p "$scratch" && cd "$scratch"
[ -f "llama_cpp_python-$version.tar.gz" ] || \
  "$py" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$version" -d .
[ -d "llama_cpp_python-$version" ] || tar xzf "llama_cpp_python-$version.tar.gz"
cmake -S "llama_cpp_python-$version/vendor/llama.cpp" -B llama.cpp-build -DCMAKE_BUILD_TYPE=Release \
  -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=ON > cmake.log
cmake --build llama.cpp-build -j "$(nproc)" --target llama-speculative llama-completion > build.log
ls -la llama.cpp-build/bin/llama-speculative llama.cpp-build/bin/llama-completion
