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

failed=()
for src in "${sources[@]}"; do
  name=$(basename "$src" .cpp)
  exe="$build_dir/examples/$name"
  echo
  echo "=== $name"
  if timeout --kill-after=5 120 "$exe"; then
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
echo "demo: all ${#sources[@]} examples ran"
