#!/usr/bin/env bash
# Builds mproc and runs every example, printing each one's name and output.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
build_dir=${BUILD_DIR:-build}
jobs=$(nproc 2>/dev/null || echo 2)

bash scripts/setup.sh

cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
shopt -s nullglob
sources=(examples/*.cpp)
if ((${#sources[@]} == 0)); then
  echo "demo: no examples found in examples/"
  exit 1
fi
# Only the examples are needed here; the tests are scripts/test.sh's business.
cmake --build "$build_dir" -j "$jobs" --target mproc_examples

# MPI examples run with the root and two worker ranks, as ctest runs them. Open MPI
# wants these to run as root and to start more ranks than there are cores.
mpirun=()
if command -v mpirun >/dev/null 2>&1; then
  mpirun=(mpirun -np 3)
  if mpirun --version 2>/dev/null | grep -q "Open MPI"; then
    mpirun+=(--oversubscribe)
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    export OMPI_MCA_btl=self,vader,tcp OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo
  fi
fi

failed=()
skipped=()
for src in "${sources[@]}"; do
  name=$(basename "$src" .cpp)
  exe="$build_dir/examples/$name"
  echo
  echo "=== $name"
  launch=()
  if [[ "$name" == mpi_* ]]; then
    if [[ ! -x "$exe" ]]; then
      echo "(skipped: the MPI backend is not available in this build)"
      skipped+=("$name")
      continue
    fi
    launch=("${mpirun[@]}")
  fi
  if timeout --kill-after=5 120 "${launch[@]}" "$exe"; then
    :
  else
    rc=$?
    echo "=== $name FAILED (exit status $rc)"
    failed+=("$name")
  fi
done

echo
if ((${#failed[@]})); then
  echo "demo: ${#failed[@]} example(s) failed: ${failed[*]}"
  exit 1
fi
if ((${#skipped[@]})); then
  echo "demo: $((${#sources[@]} - ${#skipped[@]})) examples ran; skipped: ${skipped[*]}"
else
  echo "demo: all ${#sources[@]} examples ran"
fi
