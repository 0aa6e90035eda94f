"""Python twin of bench_pool.cpp: one round of every Pool measurement, printed as JSON.

Run by bench_pool itself between its own rounds, so both sides see the same machine
state. Stdlib only.
"""
import json
import multiprocessing as mp
import statistics
import sys
import time

from workloads import count_primes, identity

CREATE_SAMPLES = 5  # bench_pool.cpp's create_samples


def factorial(n):
    r = 1
    for i in range(2, n + 1):
        r *= i
    return r


def main():
    which = set(sys.argv[1].split(",")) if len(sys.argv) > 1 else None
    want = lambda k: which is None or k in which
    mp.set_start_method("fork")
    out = {}
    n = 100_000
    data = list(range(n))
    with mp.Pool(2) as pool:
        pool.map(identity, range(100))  # warm
        if want("map_cs1"):
            t = time.perf_counter()
            pool.map(identity, data, chunksize=1)
            out["map_cs1"] = n / (time.perf_counter() - t)
        if want("map_default"):
            t = time.perf_counter()
            pool.map(identity, data)
            out["map_default"] = n / (time.perf_counter() - t)
        if want("apply_rt"):
            t = time.perf_counter()
            for i in range(1000):
                pool.apply_async(identity, (i,)).get()
            out["apply_rt"] = (time.perf_counter() - t) / 1000 * 1e6
        if want("primes"):
            limit, chunks = 2_000_000, 64
            step = limit // chunks
            bounds = [(i * step, limit if i == chunks - 1 else (i + 1) * step) for i in range(chunks)]
            t = time.perf_counter()
            pool.map(count_primes, bounds, chunksize=1)
            out["primes"] = time.perf_counter() - t
        if want("factorials"):
            t = time.perf_counter()
            pool.map(factorial, range(1, 2001))
            out["factorials"] = time.perf_counter() - t
    # As bench_pool.cpp: the median of a few start-ups per round.
    def median_ms_of_create(ctx):
        times = []
        for _ in range(CREATE_SAMPLES):
            t = time.perf_counter()
            p = ctx.Pool(2)
            p.close()
            p.join()
            times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times)

    if want("create"):
        out["create"] = median_ms_of_create(mp)
    for method in ("spawn", "forkserver"):
        if want("create_" + method):
            ctx = mp.get_context(method)
            if method == "forkserver":  # started on first use; mproc's is warm too
                ctx.Pool(1).close()
            out["create_" + method] = median_ms_of_create(ctx)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
