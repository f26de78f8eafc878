#!/usr/bin/env bash
# Compile every csrc/*.cu to an object file with nvcc, so the CUDA kernels cannot rot unseen on CI
# machines without a GPU (a CPU build of torch ships the c10/cuda and ATen/cuda headers they need).
#
# The flags are those setup.py's CUDAExtension uses: torch's COMMON_NVCC_FLAGS, torch's C++ standard,
# -DTORCH_API_INCLUDE_EXTENSION_H, -DTORCH_EXTENSION_NAME=_C, -DBDH_WITH_CUDA, -O3 --fmad=false, and the
# -gencode flags torch derives from TORCH_CUDA_ARCH_LIST (default here: 9.0, the H100). Warnings from
# our own files are errors (-Werror all-warnings, host: -Wall; torch's headers come in with -isystem);
# objects go to a temp dir that is deleted.
#
# Usage: .ci/compile_cuda.sh [file.cu ...]      (run from anywhere; uses `python` of the active env)
#   NVCC=/path/to/nvcc      nvcc to use (default: $CUDA_HOME/bin/nvcc, nvcc on PATH, /usr/local/cuda)
#   PYTHON                  the python whose torch gives headers and flags (default: python)
#   TORCH_CUDA_ARCH_LIST    e.g. "8.0;9.0" (default 9.0)
#   NVCC_EXTRA_FLAGS        appended to the command line
# Exit status: 0 when everything compiled or nvcc is absent (skipped, with a message), non-zero on any
# compile error.
set -euo pipefail

args=()
for f in "$@"; do args+=("$(realpath "$f")"); done  # before the cd below
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
PYTHON="${PYTHON:-python}"

nvcc="${NVCC:-}"
if [[ -z "$nvcc" && -n "${CUDA_HOME:-}" && -x "$CUDA_HOME/bin/nvcc" ]]; then nvcc="$CUDA_HOME/bin/nvcc"; fi
if [[ -z "$nvcc" ]]; then nvcc="$(command -v nvcc || true)"; fi
if [[ -z "$nvcc" && -x /usr/local/cuda/bin/nvcc ]]; then nvcc=/usr/local/cuda/bin/nvcc; fi
if [[ -z "$nvcc" ]]; then
  echo "compile_cuda: SKIPPED: nvcc not found (set NVCC or CUDA_HOME, or put nvcc on PATH)"
  exit 0
fi

if [[ ${#args[@]} -gt 0 ]]; then
  sources=("${args[@]}")
else
  shopt -s nullglob
  sources=(csrc/*.cu)
  shopt -u nullglob
fi
if [[ ${#sources[@]} -eq 0 ]]; then
  echo "compile_cuda: no csrc/*.cu to compile"
  exit 0
fi

export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
# One line per flag, computed by torch itself so that the flags follow the installed torch.
mapfile -t torch_flags < <("$PYTHON" - <<'EOF'
import sysconfig
from torch.utils import cpp_extension as ce

flags = list(ce.COMMON_NVCC_FLAGS)
flags += ce._get_cuda_arch_flags()            # -gencode=... from TORCH_CUDA_ARCH_LIST
for inc in ce.include_paths() + [sysconfig.get_paths()["include"]]:
    flags += ["-isystem", inc]                # torch's own warnings are not ours to fix
for f in flags:
    print(f)
EOF
)
if [[ ${#torch_flags[@]} -eq 0 ]]; then
  echo "compile_cuda: FAILED: could not get torch's nvcc flags from $PYTHON" >&2
  exit 1
fi
# the C++ standard torch's extension builder passes to nvcc (-std=c++20 for torch 2.13)
std="$("$PYTHON" -c "
import re, inspect
from torch.utils import cpp_extension as ce
m = re.findall(r\"-std=c\+\+(\d+)\", inspect.getsource(ce))
print('-std=c++' + (max(m, key=int) if m else '17'))")"

obj_dir="$(mktemp -d "${TMPDIR:-/tmp}/bdh_compile_cuda.XXXXXX")"
trap 'rm -rf "$obj_dir"' EXIT

# A CPU wheel of torch ships c10/cuda/*.h but not the header its CUDA build generates,
# c10/cuda/impl/cuda_cmake_macros.h, which only says that c10_cuda is a shared library. Supply that
# one-line header (outside the source tree) when it is missing; a CUDA build of torch has its own.
torch_inc="$("$PYTHON" -c "from torch.utils.cpp_extension import include_paths; print(include_paths()[0])")"
if [[ ! -f "$torch_inc/c10/cuda/impl/cuda_cmake_macros.h" ]]; then
  mkdir -p "$obj_dir/shim/c10/cuda/impl"
  printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' >"$obj_dir/shim/c10/cuda/impl/cuda_cmake_macros.h"
  torch_flags+=(-isystem "$obj_dir/shim")
  echo "compile_cuda: this torch has no c10/cuda/impl/cuda_cmake_macros.h (CPU build): using a shim"
fi

echo "compile_cuda: $("$nvcc" --version | tail -n 2 | head -n 1)"
echo "compile_cuda: TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, objects in $obj_dir (deleted at exit)"
status=0
for src in "${sources[@]}"; do
  obj="$obj_dir/$(basename "${src%.cu}").o"
  cmd=("$nvcc" -c "$src" -o "$obj" "$std" "${torch_flags[@]}" -Icsrc
       -DTORCH_API_INCLUDE_EXTENSION_H -DTORCH_EXTENSION_NAME=_C -DBDH_WITH_CUDA
       -O3 --fmad=false --compiler-options -fPIC
       -Werror all-warnings -Xcompiler -Wall,-Wno-unknown-pragmas
       ${NVCC_EXTRA_FLAGS:-})
  echo "compile_cuda: ${cmd[*]}"
  start=$SECONDS
  if "${cmd[@]}"; then
    echo "compile_cuda: OK $src -> $(basename "$obj") ($(stat -c %s "$obj") bytes, $((SECONDS - start)) s)"
  else
    echo "compile_cuda: FAILED $src" >&2
    status=1
  fi
done
exit $status
