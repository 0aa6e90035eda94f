#!/usr/bin/env bash
# Builds mproc and runs every test and example: what CI runs, and what a new user runs.
#   scripts/test.sh                 # build/ (RelWithDebInfo, g++): tests, examples, docs
#   BUILD_DIR=out scripts/test.sh   # another build directory
#   scripts/test.sh --clang         # then the clang16 preset too
#   scripts/test.sh --sanitizers    # then the asan and tsan presets too
# CI=true implies both. Other arguments go to the first ctest, e.g. scripts/test.sh
# -L unit  or  -R test_queue
#
# The extra steps configure, build and test the CMakePresets.json presets, all with
# clang 16: clang16 (unit, MPI, packaging and compile-fail tests), asan (ASan+UBSan:
# unit tests and examples, then each fuzzer for MPROC_FUZZ_SECONDS) and tsan (TSan:
# unit tests but the MPI ones). The first build tests the header-only mode (the
# default); the presets the compiled one (MPROC_COMPILED=ON), so both run every test.
# Their trees are build-<preset>/, or $SANITIZER_BUILD_ROOT/build-<preset>.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
build_dir=${BUILD_DIR:-build}
jobs=$(nproc 2>/dev/null || echo 2)

sanitizers=0
clang=0
[[ "${CI:-}" == "true" ]] && sanitizers=1 && clang=1
ctest_args=()
for arg in "$@"; do
  case "$arg" in
    --sanitizers) sanitizers=1 ;;
    --no-sanitizers) sanitizers=0 ;;
    --clang) clang=1 ;;
    --no-clang) clang=0 ;;
    *) ctest_args+=("$arg") ;;
  esac
done

bash scripts/setup.sh

timings=()
# Runs a step, timing it; the script goes on after a failure and fails at the end.
status=0
step() {
  local name=$1
  shift
  local start=$SECONDS rc=0
  echo "==== $name"
  "$@" || rc=$?
  timings+=("$(printf '%-28s %4ds  %s' "$name" $((SECONDS - start)) "$([[ $rc == 0 ]] && echo ok || echo "FAILED ($rc)")")")
  if ((rc != 0)); then status=1; fi
  return 0
}

# Line tables only (-g1): enough for backtraces with file and line; full -g made g++
# spend half as long again on every file (test_pool.cpp: 31 s against 23 s), most of
# CI's time being this header-only build.
step "configure" cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O2 -g1 -DNDEBUG"
step "build" cmake --build "$build_dir" -j "$jobs"
# Tests start processes of their own, so one test per core is plenty; per-test
# timeouts (ctest TIMEOUT) stop anything that hangs.
step "test" ctest --test-dir "$build_dir" --output-on-failure --no-tests=error -j "$jobs" \
  ${ctest_args[@]+"${ctest_args[@]}"}

presets=()
((clang)) && presets+=(clang16)
((sanitizers)) && presets+=(asan tsan)
for preset in ${presets[@]+"${presets[@]}"}; do
  dir_args=()
  if [[ -n "${SANITIZER_BUILD_ROOT:-}" ]]; then
    dir_args=(-B "$SANITIZER_BUILD_ROOT/build-$preset")
    dir="$SANITIZER_BUILD_ROOT/build-$preset"
  else
    dir="build-$preset"
  fi
  step "$preset: configure" cmake --preset "$preset" ${dir_args[@]+"${dir_args[@]}"}
  # Only what the preset's tests need (see its description in CMakePresets.json).
  step "$preset: build" cmake --build "$dir" -j "$jobs"
  # The same selection as `ctest --preset $preset`.
  case $preset in
    clang16)
      # The docs are the same whatever the compiler: the first build checks them.
      step "$preset: tests" ctest --test-dir "$dir" --output-on-failure --no-tests=error \
        -j "$jobs" -LE docs ;;
    asan)
      step "$preset: unit tests, examples" ctest --test-dir "$dir" --output-on-failure \
        --no-tests=error -j "$jobs" -L "unit|example"
      step "$preset: fuzzers" ctest --test-dir "$dir" --output-on-failure --no-tests=error \
        -j "$jobs" -L fuzz ;;
    tsan)
      # No MPI under tsan: Open MPI itself is not built with TSan.
      step "$preset: unit tests" ctest --test-dir "$dir" --output-on-failure --no-tests=error \
        -j "$jobs" -L unit -LE mpi ;;
  esac
done

echo "==== timings"
printf '%s\n' "${timings[@]}"
exit "$status"
