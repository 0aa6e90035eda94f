#!/usr/bin/env python3
"""Builds every mproc benchmark, runs each beside its Python multiprocessing twin, the
raw limit and the peers a user would pick instead (the Python executors
concurrent.futures, loky and pebble; Boost.Interprocess and ZeroMQ; TBB), and reports
one table with the best peer of each row, plus what every pool does when a worker is
killed, a task overruns or Ctrl-C arrives: printed, written to benchmarks/RESULTS.md
with the machine it ran on, and drawn in benchmarks/results.svg.

    python3 benchmarks/run.py            # full run (with the peers about 20 minutes on 2 cores)
    python3 benchmarks/run.py --quick    # fewer rounds, smaller sizes (about 5 minutes)

Each program (benchmarks/bench_*.cpp) interleaves its mproc, raw and Python rounds
and prints medians as JSON lines (--json); the program itself decides whether a
target is met. This script only builds, runs, collects and presents. Stdlib only.
"""
import argparse
import datetime
import html
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Order: cheap and foundational first; the cost-growth sweep last.
PROGRAMS = ["compile", "process", "pipe", "queue", "shared_state", "start_methods", "pool", "manager", "crash",
            "mpi", "scaling"]
# Rounds of a full run: more than each program's own default, so that the medians hold
# on a shared machine. The peers (Python executors, crash scenarios, MPI) make a full run about
# 20 minutes on 2 cores.
FULL_ROUNDS = {"compile": 3, "process": 11, "pipe": 9, "queue": 7, "shared_state": 9, "start_methods": 9, "pool": 7,
               "manager": 7, "mpi": 5, "scaling": 5}
# Modules the Python peers need (Debian: python3-joblib python3-pebble python3-mpi4py).
PEER_MODULES = "import joblib.externals.loky, pebble"
SERIES_TITLES = {
    "pool_map": "Pool.map(identity): time for n tasks",
    "pool_async": "Pool.apply_async: time for n outstanding results",
    "queue_msg": "Queue: time per message of n bytes",
    "pipe_msg": "Pipe: time per message of n bytes",
}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


PYTHON = None  # the interpreter the twins run with (main() picks it)


def peer_python():
    """An interpreter that has the Python peers' modules: this one, else Debian's own
    (which is where python3-joblib and python3-pebble install, and which a pyenv or
    venv python3 first on PATH does not see). None when there is none."""
    for cand in (sys.executable, "/usr/bin/python3", shutil.which("python3")):
        if not cand or not os.path.exists(cand):
            continue
        try:
            if subprocess.run([cand, "-c", PEER_MODULES], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=60).returncode == 0:
                return cand
        except (OSError, subprocess.TimeoutExpired):
            pass
    return None


# ------------------------------------------------------------------ build and run

def build(source, build_dir, programs, jobs):
    cache = build_dir / "CMakeCache.txt"
    if not cache.exists():
        log(f"run.py: configuring {build_dir}")
        subprocess.run(["cmake", "-S", str(source), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                        "-DMPROC_BUILD_TESTS=OFF", "-DMPROC_BUILD_EXAMPLES=OFF", "-DMPROC_BUILD_BENCHMARKS=ON"],
                       check=True, stdout=subprocess.DEVNULL)
    targets = [f"bench_bench_{p}" for p in programs if p not in ("mpi", "compile")]
    if targets:  # none with --only mpi or --only compile
        log(f"run.py: building {', '.join(targets)}")
        subprocess.run(["cmake", "--build", str(build_dir), "-j", str(jobs), "--target", *targets], check=True,
                       stdout=subprocess.DEVNULL)
    if "mpi" in programs:
        # Only where the MPI backend is available; its absence is reported when it runs.
        subprocess.run(["cmake", "--build", str(build_dir), "-j", str(jobs), "--target", "bench_bench_mpi"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_program(exe, args, timeout):
    """Runs one benchmark with --json; its rows, points and notes. stderr (round
    progress) goes straight to the terminal."""
    t0 = time.monotonic()
    proc = subprocess.run([str(exe), "--json", *args], stdout=subprocess.PIPE, text=True, timeout=timeout,
                          env=dict(os.environ, **({"MPROC_BENCHMARK_PYTHON": PYTHON} if PYTHON else {})))
    secs = time.monotonic() - t0
    items = []
    for line in proc.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            items.append(json.loads(line))
    if proc.returncode != 0:
        raise RuntimeError(f"{exe.name} exited with status {proc.returncode}")
    if not items:
        raise RuntimeError(f"{exe.name} printed no results")
    return items, secs


# ------------------------------------------------------------------ MPI

def median(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def parse_numbers(text):
    """"key value" lines and flat JSON objects, as bench_common.hpp's parse_numbers."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.update({k: v for k, v in json.loads(line).items() if isinstance(v, (int, float))})
            except ValueError:
                pass
        else:
            parts = line.split()
            if len(parts) == 2:
                try:
                    out[parts[0]] = float(parts[1])
                except ValueError:
                    pass
    return out


def run_mpi(build_dir, rounds, quick):
    """mproc::mpi::Pool beside mpi4py.futures under the same `mpirun -np 3`, in
    interleaved rounds (each side one round per mpirun, then the other), with a raw
    MPI ping-pong between the same two ranks as the round trip's floor. Returns the
    rows, as the C++ programs print them."""
    exe = build_dir / "benchmarks" / "bench_mpi"
    mpirun = shutil.which("mpirun") or shutil.which("mpiexec")
    if not exe.exists() or not mpirun:
        raise RuntimeError("bench_mpi or mpirun not available (MPI backend not built)")
    version = subprocess.run([mpirun, "--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             timeout=60).stdout
    env = dict(os.environ)
    cmd = [mpirun, "-np", "3"]
    if "Open MPI" in version or "OpenRTE" in version:
        # As tests/mpi: as root if need be, 3 ranks on fewer cores, loopback only.
        cmd.append("--oversubscribe")
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_btl="self,vader,tcp",
                   OMPI_MCA_btl_tcp_if_include="lo", OMPI_MCA_oob_tcp_if_include="lo")
    have_mpi4py = PYTHON and subprocess.run([PYTHON, "-c", "import mpi4py.futures"], stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, timeout=60).returncode == 0
    if not have_mpi4py:
        log("run.py: no mpi4py (python3-mpi4py) for the MPI peer; its column stays empty")
    q = ["--quick"] if quick else []

    def one(argv):
        p = subprocess.run(cmd + argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=600,
                           env=env)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:2])} under mpirun exited with status {p.returncode}")
        return parse_numbers(p.stdout)

    m, raw, py = {}, [], {}
    for r in range(rounds):
        log(f"run.py: mpi round {r + 1}/{rounds}")
        for k, v in one([str(exe), "--json", *q]).items():
            m.setdefault(k, []).append(v)
        raw.append(one([str(exe), "--raw-pingpong"]).get("raw_pingpong_us"))
        if have_mpi4py:
            for k, v in one([PYTHON, str(HERE / "python" / "bench_mpi4py.py"), *q]).items():
                py.setdefault(k, []).append(v)
    M = {k: median(v) for k, v in m.items()}
    P = {k: median(v) for k, v in py.items()}
    raw_rt = median(raw)

    def row(metric, params, unit, better, mine, peer, target, met, raw_v=None, raw_label=""):
        r = {"kind": "row", "bench": "mpi", "issue": "17", "metric": metric, "params": params, "unit": unit,
             "better": better, "mproc": mine, "python": None, "raw": raw_v, "raw_label": raw_label,
             "vs_python": None, "target": target, "met": met, "rounds": rounds,
             "peers": {"mpi4py.futures": peer}}
        r["vs_limit"] = vs(r, raw_v)
        return r

    def ahead(r):
        v = vs(r, r["peers"]["mpi4py.futures"])
        return None if v is None else v > 1

    speed = lambda ser, par: ser / par if ser and par else None  # noqa: E731
    rows = [
        row("mpi::Pool.map(identity), chunksize=1, tasks/s",
            f"mpirun -np 3 (2 worker ranks, 1 local process each), {'4,000' if quick else '20,000'} ints", "tasks/s", "higher",
            M.get("map_cs1"), P.get("map_cs1"), "ahead of mpi4py.futures", None),
        row("mpi::Pool.map(identity), chunksize=1000, tasks/s", "mpirun -np 3 (2 worker ranks), 100,000 ints",
            "tasks/s", "higher", M.get("map_cs1000"), P.get("map_cs1000"), "ahead of mpi4py.futures", None),
        row("mpi::Pool apply round trip, us", "mpirun -np 3, 200 sequential calls", "us", "lower",
            M.get("apply_rt"), P.get("apply_rt"), "ahead of mpi4py.futures, <= 2x raw MPI ping-pong", None,
            raw_rt, "MPI_Send/MPI_Recv ping-pong, ranks 0-1"),
        row("mpi::Pool primes by trial division, speedup over serial",
            "mpirun -np 3, below 2,000,000, 64 chunks; mpi4py: over serial Python"
            + (" (below 200,000 with --quick)" if quick else ""), "x", "higher",
            speed(M.get("serial_primes"), M.get("primes")), speed(P.get("serial_primes"), P.get("primes")),
            "ahead of mpi4py.futures", None),
    ]
    for r in rows:
        r["met"] = ahead(r)
    # Tasks run in the ranks themselves (local_processes = -1): what the local processes'
    # crash containment costs on the same work.
    in_rank_speed = speed(M.get("serial_primes"), M.get("primes_in_rank"))
    local_speed = rows[3]["mproc"]
    rows.append({"kind": "row", "bench": "mpi", "issue": "17",
                 "metric": "mpi::Pool primes, local processes vs tasks in the ranks (speedup ratio)",
                 "params": "as above; local_processes = 1 (one rank per core) / local_processes = -1", "unit": "x",
                 "better": "higher", "mproc": local_speed / in_rank_speed if local_speed and in_rank_speed else None,
                 "python": None, "raw": None, "raw_label": "", "vs_python": None, "vs_limit": None,
                 "target": "within 10% (>= 0.9)", "rounds": rounds, "peers": {},
                 "met": None if not (local_speed and in_rank_speed) else local_speed / in_rank_speed >= 0.9})
    rows.append(row("mpi::Pool apply round trip, tasks in the ranks, us", "mpirun -np 3, 200 sequential calls, "
                    "local_processes = -1", "us", "lower", M.get("apply_rt_in_rank"), P.get("apply_rt"),
                    "report", None, raw_rt, "MPI_Send/MPI_Recv ping-pong, ranks 0-1"))
    rows[-1]["met"] = None
    rt = rows[2]
    if rt["met"] is not None and raw_rt and rt["mproc"] is not None:
        rt["met"] = rt["met"] and rt["mproc"] <= 2 * raw_rt
    if P.get("raw_pingpong_us"):
        rows.append({"kind": "note", "bench": "mpi",
                     "text": f"mpi4py comm.send/recv ping-pong between ranks 0 and 1: {num(P['raw_pingpong_us'])} us"})
    return rows


def run_compile(source, rounds):
    """CPU seconds (user + system) g++ -O2 takes to compile one Pool.map of three ints,
    beside its std::async twin: the whole library (mproc.hpp) and the Pool alone
    (pool.hpp), header-only (the default) and against the compiled library
    (MPROC_HEADER_ONLY=0, what mproc::mproc built with MPROC_COMPILED=ON sets). The
    programs are benchmarks/compile/*.cpp; the cases run interleaved, median reported."""
    import resource
    import tempfile
    cxx = shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise RuntimeError("no g++ for the compile-time rows")
    inc = source / "include"
    src = {"std": HERE / "compile" / "std_twin.cpp", "mproc": HERE / "compile" / "umbrella.cpp",
           "pool": HERE / "compile" / "pool_only.cpp"}
    cases = [("std", "std", []), ("mproc", "mproc", []), ("pool", "pool", []),
             ("mproc_lib", "mproc", ["-DMPROC_HEADER_ONLY=0"]), ("pool_lib", "pool", ["-DMPROC_HEADER_ONLY=0"])]
    times = {k: [] for k, _, _ in cases}
    lines = {}

    def cpu():
        u = resource.getrusage(resource.RUSAGE_CHILDREN)
        return u.ru_utime + u.ru_stime

    with tempfile.TemporaryDirectory() as tmp:
        for prog in ("std", "mproc", "pool"):
            pre = subprocess.run([cxx, "-std=c++20", f"-I{inc}", "-E", str(src[prog])], stdout=subprocess.PIPE,
                                 check=True, timeout=600).stdout
            lines[prog] = pre.count(b"\n")
        for r in range(rounds):
            log(f"run.py: compile round {r + 1}/{rounds}")
            for key, prog, flags in cases:
                t0 = cpu()
                subprocess.run([cxx, "-std=c++20", "-O2", f"-I{inc}", *flags, "-c", str(src[prog]), "-o",
                                f"{tmp}/{key}.o"], check=True, timeout=600)
                times[key].append(cpu() - t0)
        t0 = cpu()
        subprocess.run([cxx, "-std=c++20", "-O2", f"-I{inc}", "-DMPROC_HEADER_ONLY=0", "-c",
                        str(source / "src" / "mproc.cpp"), "-o", f"{tmp}/libmproc.o"], check=True, timeout=600)
        lib_once = cpu() - t0
    T = {k: median(v) for k, v in times.items()}
    twin = T["std"]

    def row(metric, params, mine, target, met):
        return {"kind": "row", "bench": "compile", "issue": "16", "metric": metric, "params": params,
                "unit": "s", "better": "lower", "mproc": mine, "python": None, "raw": twin,
                "raw_label": f"std::async twin ({lines['std']:,} preprocessed lines)", "vs_python": None,
                "vs_limit": twin / mine if mine else None, "target": target, "met": met, "rounds": rounds,
                "peers": {}}

    rows = []
    for prog, header in (("mproc", "<mproc/mproc.hpp>"), ("pool", "<mproc/pool.hpp>")):
        ho, lib = T[prog], T[prog + "_lib"]
        rows.append(row(f"compile one Pool.map, {header}, header-only: CPU s",
                        f"g++ -O2 -c, {lines[prog]:,} preprocessed lines; {ho / twin:.1f}x the std-only twin",
                        ho, "<= 3x the std-only twin", ho <= 3 * twin))
        rows.append(row(f"compile one Pool.map, {header}, compiled library: CPU s",
                        f"MPROC_HEADER_ONLY=0 (MPROC_COMPILED=ON); {lib / twin:.1f}x the std-only twin",
                        lib, "below header-only", lib < ho))
    rows.append({"kind": "note", "bench": "compile",
                 "text": f"the compiled library itself (src/mproc.cpp, g++ -O2) compiles once in {lib_once:.1f} CPU s"})
    return rows


# ------------------------------------------------------------------ machine

def read_first(path, pattern):
    try:
        for line in Path(path).read_text().splitlines():
            m = re.match(pattern, line)
            if m:
                return m.group(1).strip()
    except OSError:
        pass
    return None


def compiler_of(build_dir):
    cxx = read_first(build_dir / "CMakeCache.txt", r"CMAKE_CXX_COMPILER:\w+=(.*)")
    if not cxx:
        return "unknown"
    try:
        out = subprocess.run([cxx, "--version"], stdout=subprocess.PIPE, text=True, check=True).stdout
        return out.splitlines()[0]
    except (OSError, subprocess.CalledProcessError):
        return cxx


def python_version():
    if not PYTHON:
        return platform.python_version()
    try:
        return subprocess.run([PYTHON, "-c", "import platform; print(platform.python_version())"],
                              stdout=subprocess.PIPE, text=True, timeout=60).stdout.strip() + f" ({PYTHON})"
    except (OSError, subprocess.TimeoutExpired):
        return PYTHON


def machine(build_dir):
    mem_kib = read_first("/proc/meminfo", r"MemTotal:\s+(\d+)")
    return {
        "cpu": read_first("/proc/cpuinfo", r"model name\s*:\s*(.*)") or platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "memory": f"{int(mem_kib) / (1 << 20):.0f} GiB" if mem_kib else "unknown",
        "os": read_first("/etc/os-release", r'PRETTY_NAME="?([^"]*)"?') or platform.system(),
        "kernel": platform.release(),
        "compiler": compiler_of(build_dir) + ", -O2",
        "python": python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


# ------------------------------------------------------------------ formatting

def num(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    a = abs(v)
    if a >= 1e9:
        return f"{v / 1e9:.3g} G"
    if a >= 1e6:
        return f"{v / 1e6:.3g} M"
    if a >= 1e4:
        return f"{v / 1e3:.3g} k"
    if a >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}"


def ratio(v):
    if v is None:
        return "-"
    return f"{v:.0f}x" if v >= 10 else f"{v:.2f}x"


def met_text(m):
    return "-" if m is None else ("yes" if m else "**no**")


def cell(s):
    return str(s).replace("|", "\\|")


def best_peer(r):
    """(name, figure) of the row's best peer, by its direction; None without peers."""
    peers = [(k, v) for k, v in (r.get("peers") or {}).items() if v is not None]
    if not peers:
        return None
    pick = max if r["better"] == "higher" else min
    return pick(peers, key=lambda kv: kv[1])


def vs(r, other):
    """How many times better mproc is than `other` (above 1: mproc faster)."""
    m = r["mproc"]
    if m is None or other is None or m == 0 or other == 0:
        return None
    return m / other if r["better"] == "higher" else other / m


def add_peer_ratios(rows):
    for r in rows:
        bp = best_peer(r)
        r["best_peer"] = bp
        r["vs_peer"] = vs(r, bp[1]) if bp else None


def markdown_table(rows):
    out = ["| metric | parameters | mproc | Python | raw limit | best peer | mproc/Python | mproc/limit | "
           "mproc/best peer | target | met |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        raw = num(r["raw"])
        if r["raw"] is not None and r.get("raw_label"):
            raw += f" ({r['raw_label']})"
        bp = r.get("best_peer")
        peer = f"{num(bp[1])} ({bp[0]})" if bp else "-"
        out.append("| " + " | ".join(cell(c) for c in [
            r["metric"], r["params"], num(r["mproc"]), num(r["python"]), raw, peer, ratio(r["vs_python"]),
            ratio(r["vs_limit"]), ratio(r.get("vs_peer")), r["target"], met_text(r["met"])]) + " |")
    return "\n".join(out)


def peers_table(rows):
    """Every peer's figure, row by row (the main table shows only the best)."""
    out = ["| metric | peer | peer's figure | mproc | mproc/peer |", "|---|---|---|---|---|"]
    for r in rows:
        for name, v in (r.get("peers") or {}).items():
            out.append("| " + " | ".join(cell(c) for c in [
                r["metric"], name, num(v), num(r["mproc"]), ratio(vs(r, v))]) + " |")
    return "\n".join(out) if len(out) > 2 else ""


SCENARIO_TEXT = {"kill": "worker SIGKILLed at item 500 of 1,000 (chunksize 10)",
                 "timeout": "task overruns a 1 s timeout",
                 "sigint": "Ctrl-C (SIGINT to the process group)"}


def crash_table(crashes):
    out = ["| scenario | pool | the caller gets | after | results lost | afterwards |", "|---|---|---|---|---|---|"]
    for sc in ("kill", "timeout", "sigint"):
        for c in crashes:
            if c.get("scenario") != sc:
                continue
            secs = c.get("seconds")
            after = "-" if secs is None else dur(secs)
            out.append("| " + " | ".join(cell(x) for x in [
                SCENARIO_TEXT.get(sc, sc), c.get("impl", "?"), c.get("got", "?"), after, c.get("lost", "-"),
                c.get("usable", "-")]) + " |")
    return "\n".join(out) if len(out) > 2 else ""


IMPL_NAMES = {"mproc": "mproc", "mproc_into": "mproc recv_bytes_into", "python": "Python",
              "python_into": "Python recv_bytes_into", "raw": "raw limit"}


def growth_tables(points):
    """One table per series: work, then time per item for each side measured."""
    out = []
    for series, title in SERIES_TITLES.items():
        pts = [p for p in points if p["series"] == series]
        if not pts:
            continue
        xs = sorted({p["x"] for p in pts})
        impls = [i for i in IMPL_NAMES if any(p["impl"] == i for p in pts)]
        by = {(p["impl"], p["x"]): p for p in pts}
        per = "task" if series.startswith("pool_") else "message"
        unit_x = "tasks" if series.startswith("pool_") else "bytes"
        out.append(f"**{title}** (time per {per}; medians)\n")
        out.append(f"| {unit_x} | " + " | ".join(IMPL_NAMES[i] for i in impls) + " | mproc/Python |")
        out.append("|---" * (len(impls) + 2) + "|")
        for x in xs:
            def per_item(impl):
                p = by.get((impl, x))
                return None if p is None else p["seconds"] / p["items"]
            m, py = per_item("mproc"), per_item("python")
            label = num(x) if series.startswith("pool_") else size_text(x)
            out.append(f"| {label} | " + " | ".join(dur(per_item(i)) for i in impls) +
                       f" | {ratio(py / m) if m and py else '-'} |")
        out.append("")
    return "\n".join(out)


def size_text(b):
    for unit, k in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= k:
            return f"{b / k:g} {unit}"
    return f"{b:g} B"


def dur(s):
    if s is None:
        return "-"
    for unit, k in (("s", 1), ("ms", 1e-3), ("us", 1e-6)):
        if s >= k:
            return f"{s / k:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


# ------------------------------------------------------------------ SVG chart

COLORS = {"mproc": "#1f77b4", "python": "#d62728", "raw": "#7f7f7f", "mproc_into": "#17becf",
          "python_into": "#ff9896", "vs_python": "#2ca02c", "vs_limit": "#1f77b4", "vs_peer": "#ff7f0e"}
BAR_KEYS = ("vs_python", "vs_limit", "vs_peer")
BAR_NAMES = {"vs_python": "mproc/Python", "vs_limit": "mproc/limit", "vs_peer": "mproc/best peer"}


def svg_chart(rows, points, title):
    """Horizontal bars of mproc/Python and mproc/limit on a log scale, then the cost
    growth sweeps as log-log lines. Hand-written SVG: no plotting library needed."""
    bars = [r for r in rows if any(r.get(k) is not None for k in BAR_KEYS)]
    width, label_w, plot_w = 1000, 460, 480
    bar_h, gap = 9, 8
    lo, hi = 0.1, 1000.0  # the log axis: 0.1x .. 1000x

    def xpos(v):
        v = min(max(v, lo), hi)
        return label_w + (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * plot_w

    parts = []
    y = 76
    top = y
    for r in bars:
        label = r["metric"] if len(r["metric"]) <= 62 else r["metric"][:60] + "..."
        mark = {True: " \u2713", False: " \u2717", None: ""}[r["met"]]  # target met / missed / none
        parts.append(f'<text x="{label_w - 40}" y="{y + bar_h + 2}" text-anchor="end" '
                     f'class="{"lbl miss" if r["met"] is False else "lbl"}">{html.escape(label + mark)}</text>')
        for i, key in enumerate(BAR_KEYS):
            v = r.get(key)
            yy = y + i * (bar_h + 1)
            if v is None:
                continue
            x0, x1 = xpos(1.0), xpos(v)
            parts.append(f'<rect x="{min(x0, x1):.1f}" y="{yy}" width="{abs(x1 - x0):.1f}" height="{bar_h}" '
                         f'fill="{COLORS[key]}"><title>{html.escape(r["metric"])}: '
                         f'{BAR_NAMES[key]}{" (" + r["best_peer"][0] + ")" if key == "vs_peer" else ""} '
                         f'{ratio(v)}</title></rect>')
            tx = max(x0, x1) + 3 if v >= 1 else min(x0, x1) - 3
            anchor = "start" if v >= 1 else "end"
            parts.append(f'<text x="{tx:.1f}" y="{yy + bar_h - 1}" text-anchor="{anchor}" class="val">'
                         f'{ratio(v)}</text>')
        y += len(BAR_KEYS) * (bar_h + 1) + gap
    bottom = y
    axis = []
    for v in (0.1, 0.3, 1, 3, 10, 30, 100, 300, 1000):
        x = xpos(v)
        axis.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{bottom}" '
                    f'class="{"one" if v == 1 else "grid"}"/>')
        axis.append(f'<text x="{x:.1f}" y="{top - 10}" text-anchor="middle" class="val">{v:g}x</text>')
    legend_y = 38
    legend = (f'<rect x="{label_w}" y="{legend_y - 9}" width="12" height="9" fill="{COLORS["vs_python"]}"/>'
              f'<text x="{label_w + 16}" y="{legend_y}" class="lbl">mproc / Python multiprocessing</text>'
              f'<rect x="{label_w + 230}" y="{legend_y - 9}" width="12" height="9" fill="{COLORS["vs_limit"]}"/>'
              f'<text x="{label_w + 246}" y="{legend_y}" class="lbl">mproc / raw limit (1x = at the limit)</text>'
              f'<rect x="{label_w}" y="{legend_y + 5}" width="12" height="9" fill="{COLORS["vs_peer"]}"/>'
              f'<text x="{label_w + 16}" y="{legend_y + 14}" class="lbl">mproc / best peer (Python executors, '
              f'Boost, ZeroMQ, TBB)</text>'
              f'<text x="10" y="{legend_y}" class="lbl">\u2713 target met, <tspan class="miss">\u2717 missed</tspan> '
              f'in this run</text>')

    # Cost growth: one log-log panel per series.
    series = [s for s in SERIES_TITLES if any(p["series"] == s for p in points)]
    panel_w, panel_h, pad = 290, 220, 30
    gy = bottom + 50
    growth = []
    if series:
        growth.append(f'<text x="10" y="{gy - 20}" class="h2">Cost growth (log-log; a straight line of slope 1 '
                      f'is linear growth)</text>')
    for i, s in enumerate(series):
        px = 60 + i * (panel_w + 20)
        py0 = gy
        pts = [p for p in points if p["series"] == s]
        def t_of(p):
            return p["seconds"] if s.startswith("pool_") else p["seconds"] / p["items"]
        xs = [p["x"] for p in pts]
        ts = [t_of(p) for p in pts if t_of(p) > 0]
        if not ts:
            continue
        lx0, lx1 = math.floor(math.log10(min(xs))), math.ceil(math.log10(max(xs)))
        ly0, ly1 = math.floor(math.log10(min(ts))), math.ceil(math.log10(max(ts)))
        ly1 = max(ly1, ly0 + 1)

        def X(v):
            return px + (math.log10(v) - lx0) / (lx1 - lx0) * (panel_w - pad)

        def Y(v):
            return py0 + panel_h - (math.log10(v) - ly0) / (ly1 - ly0) * panel_h

        growth.append(f'<text x="{px}" y="{py0 - 6}" class="lbl">{html.escape(SERIES_TITLES[s])}</text>')
        growth.append(f'<rect x="{px}" y="{py0}" width="{panel_w - pad}" height="{panel_h}" class="frame"/>')
        for e in range(lx0, lx1 + 1):
            growth.append(f'<text x="{X(10 ** e):.1f}" y="{py0 + panel_h + 12}" text-anchor="middle" '
                          f'class="val">1e{e}</text>')
        for e in range(ly0, ly1 + 1):
            growth.append(f'<line x1="{px}" y1="{Y(10 ** e):.1f}" x2="{px + panel_w - pad}" y2="{Y(10 ** e):.1f}" '
                          f'class="grid"/>')
            growth.append(f'<text x="{px - 3}" y="{Y(10 ** e) + 3:.1f}" text-anchor="end" class="val">'
                          f'{dur(10.0 ** e)}</text>')
        for impl in ("raw", "python_into", "python", "mproc_into", "mproc"):
            line = sorted((p["x"], t_of(p)) for p in pts if p["impl"] == impl and t_of(p) > 0)
            if not line:
                continue
            d = " ".join(f"{X(x):.1f},{Y(t):.1f}" for x, t in line)
            dash = ' stroke-dasharray="5,3"' if impl.endswith("_into") else ""
            growth.append(f'<polyline points="{d}" fill="none" stroke="{COLORS[impl]}" stroke-width="2"{dash}/>')
            for x, t in line:
                growth.append(f'<circle cx="{X(x):.1f}" cy="{Y(t):.1f}" r="2.5" fill="{COLORS[impl]}">'
                              f'<title>{impl}: {num(x)} -> {dur(t)}</title></circle>')
        growth.append(f'<text x="{px + (panel_w - pad) / 2:.1f}" y="{py0 + panel_h + 26}" text-anchor="middle" '
                      f'class="val">{"tasks" if s.startswith("pool_") else "message bytes"}</text>')
    total_h = gy + (panel_h + 60 if series else 0)
    if series:
        ly = total_h - 14
        growth.append(f'<text x="60" y="{ly}" class="lbl">'
                      f'<tspan fill="{COLORS["mproc"]}">&#9632; mproc</tspan>   '
                      f'<tspan fill="{COLORS["python"]}">&#9632; Python multiprocessing</tspan>   '
                      f'<tspan fill="{COLORS["raw"]}">&#9632; raw limit</tspan>   '
                      f'<tspan fill="{COLORS["mproc_into"]}">- - mproc recv_bytes_into</tspan>   '
                      f'<tspan fill="{COLORS["python_into"]}">- - Python recv_bytes_into</tspan></text>')
    style = ("<style>.lbl{font:12px sans-serif;fill:#222}.miss{fill:#c00}.val{font:10px sans-serif;fill:#444}"
             ".h1{font:bold 15px sans-serif}.h2{font:bold 13px sans-serif}"
             ".grid{stroke:#ddd;stroke-width:1}.one{stroke:#000;stroke-width:1.2}"
             ".frame{fill:none;stroke:#999}</style>")
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{total_h}" '
        f'viewBox="0 0 {width} {total_h}" font-family="sans-serif">',
        style,
        f'<rect width="{width}" height="{total_h}" fill="#fff"/>',
        f'<text x="10" y="20" class="h1">{html.escape(title)}</text>',
        legend, *axis, *parts, *growth, "</svg>", ""])


# ------------------------------------------------------------------ RESULTS.md

def results_md(rows, points, notes, mach, load_before, load_after, args, durations, failures, crashes):
    met = [r for r in rows if r["met"] is not None]
    n_met = sum(1 for r in met if r["met"])
    mode = "quick" if args.quick else "full"
    lines = [
        "# Benchmark results",
        "",
        f"Written by `python3 benchmarks/run.py{' --quick' if args.quick else ''}` ({mode} run, "
        f"{sum(durations.values()):.0f} s of benchmarks). **{n_met} of {len(met)} targets met.**",
        "",
        "![mproc vs Python multiprocessing vs the raw limit](results.svg)",
        "",
        "## Machine",
        "",
        f"- CPU: {mach['cpu']}, {mach['cores']} cores; memory {mach['memory']}",
        f"- OS: {mach['os']}, kernel {mach['kernel']}",
        f"- Compiler: {mach['compiler']}; Python {mach['python']}",
        f"- Date: {mach['date']}",
        f"- Load average (1/5/15 min) before: {load_before}; after: {load_after}. Other work on the "
        "machine slows every column alike (rounds are interleaved), but it widens the spread of the "
        "medians and of the ratios.",
        "",
        "## How to read it",
        "",
        "Each program runs mproc, the raw limit (bare fork/posix_spawn, socketpair, futex, a bare "
        "shared-memory ring, memcpy, std::threads for CPU work) and its Python `multiprocessing` twin "
        "(`benchmarks/python/`) in interleaved rounds and reports medians. Both ratio columns say how "
        "many times *faster* mproc is, whatever the unit (for times: other/mproc; for rates: "
        "mproc/other):",
        "",
        "- **mproc/Python** above 1: mproc is that many times faster than Python's multiprocessing "
        "doing the same thing with the same parameters.",
        "- **mproc/limit** near 1: mproc is as fast as the raw system calls or memory copies it is "
        "built on; 0.5x means it takes twice as long as the bare mechanism. It can exceed 1 when "
        "mproc avoids a cost the bare mechanism has (e.g. a waiting caller that spins briefly instead "
        "of sleeping in the kernel).",
        "- On 2 cores, a Pool of 2 workers can at best be 2x faster than one process, and only when "
        "the parent does nothing meanwhile; a speedup of 1.9x is 95% of the machine. Ratios against "
        "Python measure overhead per operation (Python pays for pickling and its interpreter on every "
        "message), so they are largest for tiny tasks and shrink as tasks grow.",
        "- **best peer**: the best figure among what a user would pick instead, measured in the same "
        "rounds: the Python executors (`multiprocessing.Pool`, `concurrent.futures.ProcessPoolExecutor`, "
        "loky, pebble; `benchmarks/python/bench_executors.py`), Boost.Interprocess `message_queue` and "
        "ZeroMQ `ipc://` PUSH/PULL, and TBB `parallel_for` on threads for CPU work. **mproc/best peer** "
        "above 1: mproc is ahead of all of them. Speedups of the Python executors are over serial Python; "
        "every peer's figure is in the table after the results.",
        "- `met`: whether the program found the target met in this run; `-`: reported, no target "
        "(or a figure the target needs is missing, e.g. with `--no-python`).",
        "",
        "## Results",
        "",
        markdown_table(rows),
        "",
    ]
    missed = [r for r in met if not r["met"]]
    if missed:
        lines += ["Not met in this run: " + "; ".join(f"{r['metric']} ({r['target']})" for r in missed) + ".", ""]
    if failures:
        lines += ["**Programs that failed in this run:** " + ", ".join(failures), ""]
    if notes:
        lines += ["Notes from the programs:", ""] + [f"- {n['bench']}: {n['text']}" for n in notes] + [""]
    pt = peers_table(rows)
    if pt:
        lines += ["## Every peer", "", pt, ""]
    ct = crash_table(crashes)
    if ct:
        lines += ["## When things go wrong", "", CRASH_INTRO, "", ct, ""]
    if points:
        lines += [
            "## Cost growth",
            "",
            "How time grows with the amount of work (`bench_scaling`): Pool.map over 10^3..10^7 tiny "
            "tasks, and messages of 8 B..64 MiB through a Queue and a Pipe. Growth should be linear, "
            "with no cliff: the rows above fit the log-log slope over the large end and check the "
            "steepest step between neighbouring sizes. The raw limit's own cost per byte rises once "
            "messages no longer fit in the caches; that shows in every column alike.",
            "",
            "A step between 16 and 64 MiB in the message curves of `recv_bytes` and `Queue.get` (mproc's "
            "and Python's) is glibc's, not the transport's: allocations above 32 MiB (glibc's largest "
            "mmap threshold) get fresh pages from mmap every time, so each received message pays page "
            "faults and zeroing on top of the copy, and freeing it unmaps them again; the step disappears "
            "when `MALLOC_MMAP_THRESHOLD_` is raised. The raw limit reads into one reused buffer, and so "
            "does `Connection::recv_bytes_into` (as Python's): its rows show the Pipe without that cost.",
            "",
            growth_tables(points),
        ]
    lines += [
        "## Reproduce",
        "",
        "```sh",
        "python3 benchmarks/run.py --quick   # about 5 minutes: fewer rounds, smaller sizes",
        "python3 benchmarks/run.py           # with the peers about 20 minutes on 2 cores",
        "python3 benchmarks/run.py --only pool,queue   # some programs only (prints; writes no files)",
        "```",
        "",
        "Each program also runs alone and prints its own table, e.g. "
        "`build-bench-release/benchmarks/bench_pool --rounds 5`.",
        "",
        "Run times: " + ", ".join(f"{k} {v:.0f} s" for k, v in durations.items()) + ".",
        "",
    ]
    return "\n".join(lines)


CRASH_INTRO = (
    "Found by doing it (`bench_crash`, `benchmarks/python/bench_crash.py`), each scenario in its own "
    "process group with a hard time limit. Results are taken as each pool's lazy ordered map yields them "
    "(`imap`, `Executor.map`, pebble's map iterator), going on past errors where it lets the caller; "
    "*results lost* counts the items other than the killed one whose result never arrived. "
    "*Afterwards*: for a kill, whether a new small map completes within 5 s; for a timeout, whether both "
    "workers are free again (the overrunning task was stopped); for Ctrl-C, whether any of the program's "
    "processes outlive it by a second.")


def readme_block(table_md, mach, n_met, n_targets, load_before, load_after):
    """What goes between the README's benchmark-table markers."""
    return (f"From the last full run ({mach['date']}; {n_met} of {n_targets} targets met; load average "
            f"{load_before} before and {load_after} after, on {mach['cores']} cores shared with other "
            f"work):\n\n{table_md}")


def update_readme(readme, block, marker="benchmark-table"):
    """Replaces the text between the README's markers, nothing else."""
    text = readme.read_text()
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        log(f"run.py: README has no {marker} markers; left alone")
        return
    readme.write_text(text[:i + len(start)] + "\n" + block + "\n" + text[j:])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer rounds and smaller sizes (about 5 minutes)")
    ap.add_argument("--rounds", type=int,
                    help="rounds per program (default: each program's own with --quick, more in a full run)")
    ap.add_argument("--only", help="comma-separated programs: " + ",".join(PROGRAMS))
    ap.add_argument("--build-dir", type=Path, default=ROOT / "build-bench-release",
                    help="where to build (default: build-bench-release/ in the repository)")
    ap.add_argument("--source", type=Path, default=ROOT, help="the mproc source tree to build")
    ap.add_argument("--no-build", action="store_true", help="run what is already built")
    ap.add_argument("--no-python", action="store_true", help="skip the Python twins")
    ap.add_argument("--results", type=Path,
                    help="markdown report (default: benchmarks/RESULTS.md; not written with --only)")
    ap.add_argument("--svg", type=Path, help="chart (default: benchmarks/results.svg; not written with --only)")
    ap.add_argument("--readme", type=Path, help="also replace the table between this README's markers")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is not met")
    args = ap.parse_args()

    programs = PROGRAMS
    if args.only:
        programs = [p.strip() for p in args.only.split(",") if p.strip()]
        unknown = [p for p in programs if p not in PROGRAMS]
        if unknown:
            ap.error(f"unknown program(s): {', '.join(unknown)}; known: {', '.join(PROGRAMS)}")
    for tool in ("cmake",):
        if not args.no_build and shutil.which(tool) is None:
            sys.exit(f"run.py: {tool} not found (bash scripts/setup.sh installs what the build needs)")

    global PYTHON
    PYTHON = None if args.no_python else peer_python()
    if not args.no_python and not PYTHON:
        log("run.py: no Python interpreter has loky and pebble (bash scripts/setup.sh installs python3-joblib "
            "and python3-pebble); those peers' columns stay empty")
    build_dir = args.build_dir.resolve()
    if not args.no_build:
        build(args.source.resolve(), build_dir, programs, os.cpu_count() or 2)

    extra = []
    if args.quick:
        extra.append("--quick")
    if args.no_python:
        extra.append("--no-python")

    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows, points, notes, durations, failures, crashes = [], [], [], {}, [], []
    started = time.monotonic()
    for p in programs:
        exe = build_dir / "benchmarks" / f"bench_{p}"
        rounds = args.rounds or (None if args.quick else FULL_ROUNDS.get(p))
        prog_args = extra + (["--rounds", str(rounds)] if rounds else [])
        log(f"run.py: bench_{p} {' '.join(prog_args)}")
        try:
            if p == "mpi":
                t0 = time.monotonic()
                items = run_mpi(build_dir, 1 if args.quick else (args.rounds or FULL_ROUNDS["mpi"]), args.quick)
                secs = time.monotonic() - t0
            elif p == "compile":
                t0 = time.monotonic()
                items = run_compile(args.source.resolve(), 1 if args.quick else (args.rounds or FULL_ROUNDS["compile"]))
                secs = time.monotonic() - t0
            else:
                items, secs = run_program(exe, prog_args, timeout=1800)
        except (RuntimeError, OSError, subprocess.TimeoutExpired, subprocess.CalledProcessError, json.JSONDecodeError) as e:
            log(f"run.py: bench_{p} failed: {e}")
            failures.append(f"bench_{p} ({e})")
            continue
        durations[p] = secs
        rows += [i for i in items if i["kind"] == "row"]
        points += [i for i in items if i["kind"] == "point"]
        notes += [i for i in items if i["kind"] == "note"]
        crashes += [i for i in items if i["kind"] == "crash"]
    add_peer_ratios(rows)
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    mach = machine(build_dir)

    table = markdown_table(rows)
    print(table)
    if crashes:
        print("\n" + crash_table(crashes))
    met = [r for r in rows if r["met"] is not None]
    n_met = sum(1 for r in met if r["met"])
    print(f"\n{n_met} of {len(met)} targets met; {time.monotonic() - started:.0f} s; "
          f"load average before {load_before}, after {load_after}")
    if failures:
        print("failed: " + ", ".join(failures))

    # A partial run (--only) does not replace the whole suite's report unless asked to.
    results = args.results or (None if args.only else HERE / "RESULTS.md")
    svg = args.svg or (None if args.only else HERE / "results.svg")
    if results:
        results.write_text(results_md(rows, points, notes, mach, load_before, load_after, args, durations,
                                      failures, crashes))
        log(f"run.py: wrote {results}")
    if svg:
        title = (f"mproc vs Python, the raw limit and the best peer - {mach['cores']} cores, "
                 f"{mach['date'][:10]}{' (quick run)' if args.quick else ''}; bars above 1x: mproc faster")
        svg.write_text(svg_chart(rows, points, title))
        log(f"run.py: wrote {svg}")
    if args.readme:
        update_readme(args.readme, readme_block(table, mach, n_met, len(met), load_before, load_after))
        if crashes:
            update_readme(args.readme, CRASH_INTRO + "\n\n" + crash_table(crashes), marker="crash-table")
    if failures:
        return 1
    if args.strict and n_met < len(met):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
