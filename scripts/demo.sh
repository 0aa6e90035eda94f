#!/usr/bin/env bash
# The main job: installs what the build needs, builds the headline demo and runs it.
# It computes the sum of the primes below 10,000,000 and the factorials of 1..2000
# serially, with mproc::Pool under fork, spawn and forkserver, and with Python's
# multiprocessing, shows mproc's progress bar, then a table of times and speedups;
# it fails if any variant's results differ from the serial ones.
#   scripts/demo.sh                 # build/ (RelWithDebInfo)
#   BUILD_DIR=out scripts/demo.sh   # another build directory
# The examples are built and checked by scripts/test.sh (ctest runs each one);
# the full benchmark table is python3 benchmarks/run.py.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
build_dir=${BUILD_DIR:-build}
jobs=$(nproc 2>/dev/null || echo 2)

bash scripts/setup.sh

cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMPROC_BUILD_BENCHMARKS=ON >/dev/null
# Only the demo is needed here; tests and examples are scripts/test.sh's business.
cmake --build "$build_dir" -j "$jobs" --target bench_headline

echo
timeout --kill-after=5 300 "$build_dir/benchmarks/headline" "$@"
