#!/usr/bin/env python3
"""Run an example and check its stdout against an .expected file.

Each line of the expected file is a Python regular expression that must fullmatch the
corresponding line of the program's stdout (so a pid can be written \\d+). The line
counts must agree and the program must exit 0. On a mismatch a readable side-by-side
report is printed. The program runs in its own process group, which is killed on
timeout so no stray children outlive the check.

usage: check_output.py [--timeout SECONDS] PROGRAM EXPECTED [ARGS...]
"""
import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time


def kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def group_alive(pgid, grace):
    deadline = time.monotonic() + grace
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.05)


def compare(actual, expected):
    """Returns a list of problem descriptions (empty when everything matches)."""
    problems = []
    for i in range(max(len(actual), len(expected))):
        want = expected[i] if i < len(expected) else None
        got = actual[i] if i < len(actual) else None
        if want is None:
            problems.append((i + 1, "<no more lines expected>", got))
            continue
        if got is None:
            problems.append((i + 1, want, "<missing line>"))
            continue
        try:
            ok = re.fullmatch(want, got) is not None
        except re.error as e:
            problems.append((i + 1, want, f"<invalid regex in expected file: {e}>"))
            continue
        if not ok:
            problems.append((i + 1, want, got))
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=float, default=115.0)
    ap.add_argument("program")
    ap.add_argument("expected")
    ap.add_argument("args", nargs=argparse.REMAINDER)
    opts = ap.parse_args()

    with open(opts.expected, encoding="utf-8") as f:
        expected = f.read().splitlines()

    name = os.path.basename(opts.program)
    try:
        proc = subprocess.Popen([opts.program, *opts.args], stdout=subprocess.PIPE,
                                start_new_session=True)
    except OSError as e:
        print(f"FAIL {name}: cannot run {opts.program}: {e}")
        return 1
    # Read stdout on a thread and wait for the program itself: a leftover child that
    # inherited stdout must not make the check wait for EOF.
    chunks = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stdout.read1(65536), b"")),
                              daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=opts.timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        kill_group(proc)
        proc.wait()
    # Children the example left behind must not keep running after the check. They
    # get a moment to notice their parent is gone (parent-death signals are async).
    if not timed_out and group_alive(proc.pid, grace=2.0):
        print(f"warning: {name} left processes running after it exited; killing them",
              file=sys.stderr)
        kill_group(proc)
    reader.join(timeout=5)
    out = b"".join(chunks)
    if timed_out:
        sys.stdout.write(out.decode("utf-8", "replace"))
        print(f"\nFAIL {name}: no exit after {opts.timeout:g} s; killed its process group")
        return 1

    text = out.decode("utf-8", "replace")
    actual = text.splitlines()
    problems = compare(actual, expected)
    rc = proc.returncode

    if not problems and rc == 0:
        sys.stdout.write(text)
        print(f"PASS {name}: {len(actual)} lines match {os.path.basename(opts.expected)}")
        return 0

    print(f"FAIL {name}")
    if rc != 0:
        how = f"was killed by signal {-rc}" if rc < 0 else f"exited with code {rc}"
        print(f"  program {how} (expected exit code 0)")
    if len(actual) != len(expected):
        print(f"  {len(actual)} output lines, {len(expected)} expected")
    for lineno, want, got in problems[:20]:
        print(f"  line {lineno}:")
        print(f"    expected (regex): {want}")
        print(f"    actual:           {got}")
    if len(problems) > 20:
        print(f"  ... and {len(problems) - 20} more mismatching lines")
    print("  full output:")
    for line in actual:
        print(f"    | {line}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
