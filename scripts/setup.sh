#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages mproc needs to build, test and run its examples.
# Idempotent: installs only what is missing, and touches apt only when it must.
set -euo pipefail

packages=(
  build-essential cmake pkg-config python3
  libboost-dev libboost-serialization-dev catch2
  libssl-dev libcurl4-openssl-dev libgumbo-dev
  libboost-mpi-dev openmpi-bin libopenmpi-dev
  clang-16 libclang-rt-16-dev
  # llvm-symbolizer-16: sanitizer reports name functions and lines, in CI too
  llvm-16
  doxygen graphviz chromium
  # the peers benchmarks/run.py measures mproc against
  python3-joblib python3-pebble python3-mpi4py libzmq3-dev cppzmq-dev libtbb-dev
)

missing=()
for pkg in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  if [[ "$status" != "install ok installed" ]]; then
    missing+=("$pkg")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "setup: all ${#packages[@]} required packages are installed"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: missing packages: ${missing[*]}" >&2
  echo "setup: this script knows only apt-get (Debian 12 / Ubuntu); install them by hand" >&2
  exit 1
fi

sudo=()
if ((EUID != 0)); then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "setup: need root (or sudo) to install: ${missing[*]}" >&2
    exit 1
  fi
  sudo=(sudo)
fi

echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "setup: done"
