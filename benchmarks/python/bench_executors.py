"""The Python process pools a user would pick instead of mproc, one round each, as JSON.

    bench_executors.py EXECUTORS METRICS [--quick]

EXECUTORS: comma-separated from mp_pool (multiprocessing.Pool), ppe
(concurrent.futures.ProcessPoolExecutor), loky (joblib.externals.loky's reusable
executor), pebble (pebble.ProcessPool); METRICS from map_cs1, map_cs1000, apply_rt,
primes, create, serial_primes. Prints {"<executor>_<metric>": value, ...}; a peer whose
module is missing prints {"<executor>_missing": 1} and nothing else, so the C++ side
shows a missing column instead of a fake one.

Run by bench_pool between its own rounds (so every side sees the same machine state).
The same work as bench_pool.cpp: identity over ints (chunksize 1 over 100,000 ints,
20,000 for the executors that move one task per message through a manager thread; and
chunksize 1000 over 100,000), 1,000 sequential submit/get round trips, the primes below
2,000,000 by trial division in 64 chunks, two workers started, one trivial task, shut
down. Every pool has 2 workers and starts them with fork, except loky, whose workers
are always fresh interpreters.
"""
import json
import sys
import time

from workloads import count_primes, identity, peer_installed, prime_bounds

CS1_ITEMS = {"mp_pool": 100_000, "ppe": 20_000, "loky": 20_000, "pebble": 20_000}
CS1000_ITEMS = 100_000


class Peer:
    """One executor behind a common face: map(f, items, chunksize), call(f, x),
    shutdown()."""

    def __init__(self, name, fresh=False):
        self.name = name
        if name == "mp_pool":
            import multiprocessing as mp
            self.ex = mp.get_context("fork").Pool(2)
        elif name == "ppe":
            import concurrent.futures as cf
            import multiprocessing as mp
            self.ex = cf.ProcessPoolExecutor(2, mp_context=mp.get_context("fork"))
        elif name == "loky":
            from joblib.externals import loky
            # The reusable executor is what joblib and its users get; creating one fresh
            # (for the start-up figure) is loky's own ProcessPoolExecutor.
            self.ex = loky.ProcessPoolExecutor(2) if fresh else loky.get_reusable_executor(max_workers=2)
        elif name == "pebble":
            import multiprocessing as mp
            import pebble
            self.ex = pebble.ProcessPool(max_workers=2, context=mp.get_context("fork"))
        else:
            raise ValueError(f"unknown executor {name}")

    def map(self, f, items, chunksize):
        if self.name == "mp_pool":
            return self.ex.map(f, items, chunksize=chunksize)
        if self.name == "pebble":
            return list(self.ex.map(f, items, chunksize=chunksize).result())
        return list(self.ex.map(f, items, chunksize=chunksize))

    def call(self, f, x):
        if self.name == "mp_pool":
            return self.ex.apply_async(f, (x,)).get()
        if self.name == "pebble":
            return self.ex.schedule(f, args=(x,)).result()
        return self.ex.submit(f, x).result()

    def shutdown(self):
        if self.name in ("mp_pool", "pebble"):
            self.ex.close()
            self.ex.join()
        else:
            self.ex.shutdown(wait=True)


def measure(name, want, quick, out):
    limit = 200_000 if quick else 2_000_000
    if "create" in want:
        t = time.perf_counter()
        p = Peer(name, fresh=True)
        p.call(identity, 1)
        p.shutdown()
        out[f"{name}_create"] = (time.perf_counter() - t) * 1e3
    if not want & {"map_cs1", "map_cs1000", "apply_rt", "primes"}:
        return
    p = Peer(name)
    try:
        p.map(identity, range(100), 1)  # warm: workers started, code loaded
        if "map_cs1" in want:
            n = CS1_ITEMS[name] // (5 if quick else 1)
            data = list(range(n))
            t = time.perf_counter()
            r = p.map(identity, data, 1)
            out[f"{name}_map_cs1"] = n / (time.perf_counter() - t)
            assert r[-1] == n - 1
        if "map_cs1000" in want:
            data = list(range(CS1000_ITEMS))
            t = time.perf_counter()
            r = p.map(identity, data, 1000)
            out[f"{name}_map_cs1000"] = CS1000_ITEMS / (time.perf_counter() - t)
            assert r[-1] == CS1000_ITEMS - 1
        if "apply_rt" in want:
            n = 200 if quick else 1000
            t = time.perf_counter()
            for i in range(n):
                p.call(identity, i)
            out[f"{name}_apply_rt"] = (time.perf_counter() - t) / n * 1e6
        if "primes" in want:
            t = time.perf_counter()
            counts = p.map(count_primes, prime_bounds(limit), 1)
            out[f"{name}_primes"] = time.perf_counter() - t
            out[f"{name}_prime_count"] = sum(counts)
    finally:
        # loky's reusable executor stays up for the next round, as it would in a program.
        if name != "loky":
            p.shutdown()


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    names = [n for n in sys.argv[1].split(",") if n]
    want = set(sys.argv[2].split(","))
    quick = "--quick" in sys.argv[3:]
    out = {}
    bounds = prime_bounds(200_000 if quick else 2_000_000)
    serial = []

    def time_serial():
        t = time.perf_counter()
        out["serial_prime_count"] = sum(count_primes(b) for b in bounds)
        serial.append(time.perf_counter() - t)

    if "serial_primes" in want:
        time_serial()
    for name in names:
        if not peer_installed(name):
            out[f"{name}_missing"] = 1
            continue
        measure(name, want, quick, out)
    if "serial_primes" in want:
        # Serial Python again after the executors, and the mean of both: on a shared
        # machine the speed drifts over the minute a round takes (serial runs of the
        # same code differ by 20% here), and a baseline taken at one end only gave
        # speedups above 2 on 2 cores.
        time_serial()
        out["serial_primes"] = sum(serial) / len(serial)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
