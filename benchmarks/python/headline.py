"""Python twin of headline.cpp: the sum of the primes below 10,000,000 (segmented sieve,
40 chunks) and the factorials of 1..2000 (Python ints, returned to the parent), serially
with multiprocessing.Pool (fork), and with the other Python executors where they are
installed (concurrent.futures.ProcessPoolExecutor, loky, pebble): the fastest of those
is reported as "best".

usage: headline.py [PROCESSES [RUNS]]
Each variant runs RUNS times (default 3); the run with the median total is reported.
Prints "name value" lines: {serial,pool,best}_{start,primes,factorials} in seconds,
{serial,pool,best}_prime_sum and {serial,pool,best}_fact_checksum (sum of n! mod
1,000,000,007), and best_executor (0 multiprocessing.Pool, 1 ProcessPoolExecutor,
2 loky, 3 pebble).
"""
import itertools
import math
import multiprocessing as mp
import sys
import time

from workloads import peer_installed

LIMIT = 10_000_000
CHUNKS = 40
FACTORIALS = 2000
P = 1_000_000_007


def sum_primes_in(bounds):
    lo, hi = bounds
    if hi <= 2 or lo >= hi:
        return 0
    lo = max(lo, 2)
    root = math.isqrt(hi - 1)
    small = bytearray([1]) * (root + 1)
    seg = bytearray([1]) * (hi - lo)
    for p in range(2, root + 1):
        if not small[p]:
            continue
        small[p * p::p] = bytes(len(range(p * p, root + 1, p)))
        first = max(p * p, (lo + p - 1) // p * p)
        if first < hi:
            seg[first - lo::p] = bytes(len(range(first - lo, hi - lo, p)))
    return sum(itertools.compress(range(lo, hi), seg))


def factorial(n):
    r = 1
    for i in range(2, n + 1):
        r *= i
    return r


def chunks():
    return [(LIMIT * k // CHUNKS, LIMIT * (k + 1) // CHUNKS) for k in range(CHUNKS)]


def checksum(facts):
    return sum(f % P for f in facts) % P


def report(prefix, start, primes, facts_s, prime_sum, facts):
    print(f"{prefix}_start {start}")
    print(f"{prefix}_primes {primes}")
    print(f"{prefix}_factorials {facts_s}")
    print(f"{prefix}_prime_sum {prime_sum}")
    print(f"{prefix}_fact_checksum {checksum(facts)}")


def run_serial(ns):
    t = time.perf_counter()
    prime_sum = sum(sum_primes_in(c) for c in chunks())
    primes = time.perf_counter() - t
    t = time.perf_counter()
    facts = [factorial(n) for n in ns]
    return 0.0, primes, time.perf_counter() - t, prime_sum, facts


def run_pool(processes, ns):
    t = time.perf_counter()
    pool = mp.Pool(processes)
    start = time.perf_counter() - t
    t = time.perf_counter()
    prime_sum = sum(pool.map(sum_primes_in, chunks(), chunksize=1))
    primes = time.perf_counter() - t
    t = time.perf_counter()
    facts = pool.map(factorial, ns)
    facts_s = time.perf_counter() - t
    t = time.perf_counter()
    pool.close()
    pool.join()
    start += time.perf_counter() - t
    return start, primes, facts_s, prime_sum, facts


def run_executor(name, processes, ns):
    """The same work on another executor: create, both maps (default chunking, as a
    user would call them), shut down."""
    t = time.perf_counter()
    if name == "ppe":
        import concurrent.futures as cf
        ex = cf.ProcessPoolExecutor(processes, mp_context=mp.get_context("fork"))
    elif name == "loky":
        from joblib.externals import loky
        ex = loky.ProcessPoolExecutor(processes)
    else:
        import pebble
        ex = pebble.ProcessPool(max_workers=processes, context=mp.get_context("fork"))

    def run_map(f, items):
        if name == "pebble":
            return list(ex.map(f, items).result())
        return list(ex.map(f, items))

    # The executors start their workers on first use: one trivial task counts as start.
    if name == "pebble":
        ex.schedule(factorial, args=(1,)).result()
    else:
        ex.submit(factorial, 1).result()
    start = time.perf_counter() - t
    t = time.perf_counter()
    prime_sum = sum(run_map(sum_primes_in, chunks()))
    primes = time.perf_counter() - t
    t = time.perf_counter()
    facts = run_map(factorial, ns)
    facts_s = time.perf_counter() - t
    t = time.perf_counter()
    if name == "pebble":
        ex.close()
        ex.join()
    else:
        ex.shutdown(wait=True)
    start += time.perf_counter() - t
    return start, primes, facts_s, prime_sum, facts


def median_run(runs):
    runs = sorted(runs, key=lambda r: r[0] + r[1] + r[2])
    return runs[len(runs) // 2]


def main():
    processes = int(sys.argv[1]) if len(sys.argv) > 1 else mp.cpu_count()
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    mp.set_start_method("fork")
    ns = range(1, FACTORIALS + 1)
    report("serial", *median_run([run_serial(ns) for _ in range(runs)]))
    pool = median_run([run_pool(processes, ns) for _ in range(runs)])
    report("pool", *pool)
    best, best_id = pool, 0
    for i, name in enumerate(("ppe", "loky", "pebble"), start=1):
        if not peer_installed(name):
            continue
        r = median_run([run_executor(name, processes, ns) for _ in range(runs)])
        if sum(r[:3]) < sum(best[:3]):
            best, best_id = r, i
    report("best", *best)
    print(f"best_executor {best_id}")


if __name__ == "__main__":
    main()
