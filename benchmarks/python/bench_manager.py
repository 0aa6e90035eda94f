"""Python side of benchmarks/bench_manager.cpp: 2 processes x N dict sets through a
multiprocessing Manager. Prints "<name> <ops per second>" lines (medians)."""
import statistics
import sys
import time
from multiprocessing import Manager, Process


def setter(d, wid, n):
    for i in range(n):
        d[f"k{wid}-{i % 100}"] = i


def updater(d, lock, n):
    for _ in range(n):
        with lock:
            d["counter"] = d.get("counter", 0) + 1


def timed(target, args_list):
    ps = [Process(target=target, args=a) for a in args_list]
    t0 = time.perf_counter()
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    return time.perf_counter() - t0


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
    sets, updates = [], []
    with Manager() as m:
        for _ in range(rounds):
            d = m.dict()
            sets.append(2 * n / timed(setter, [(d, w, n) for w in range(2)]))
            d = m.dict()
            lock = m.Lock()
            # get+set under a manager Lock is Python's nearest to an atomic update
            updates.append(2 * (n // 10) / timed(updater, [(d, lock, n // 10) for _ in range(2)]))
    print(f"python_dict_set {statistics.median(sets):.1f}")
    print(f"python_locked_update {statistics.median(updates):.1f}")


if __name__ == "__main__":
    main()
