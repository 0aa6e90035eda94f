#!/usr/bin/env bash
# Builds mproc and runs every test and example: what CI runs, and what a new user runs.
#   scripts/test.sh                 # build/ (RelWithDebInfo)
#   BUILD_DIR=out scripts/test.sh   # another build directory
# Extra arguments go to ctest, e.g. scripts/test.sh -L unit  or  -R test_queue
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
build_dir=${BUILD_DIR:-build}
jobs=$(nproc 2>/dev/null || echo 2)

bash scripts/setup.sh

cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build "$build_dir" -j "$jobs"

# Tests start processes of their own, so one test per core is plenty; per-test
# timeouts (ctest TIMEOUT) stop anything that hangs.
set +e
ctest --test-dir "$build_dir" --output-on-failure --no-tests=error -j "$jobs" "$@"
status=$?
set -e
exit "$status"
