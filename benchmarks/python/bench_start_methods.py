"""Python twin of bench_start_methods.cpp: multiprocessing.Process start()+join() under
the spawn and forkserver start methods.

usage: bench_start_methods.py METHOD [COUNT]
Prints one JSON line: {"start_join_us": <mean microseconds per start+join>}.
"""
import json
import multiprocessing as mp
import sys
import time


def nothing():
    pass


def main():
    method = sys.argv[1] if len(sys.argv) > 1 else "spawn"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    ctx = mp.get_context(method)
    p = ctx.Process(target=nothing)  # warm up (starts the forkserver)
    p.start()
    p.join()
    t0 = time.perf_counter()
    for _ in range(count):
        p = ctx.Process(target=nothing)
        p.start()
        p.join()
    dt = time.perf_counter() - t0
    print(json.dumps({"start_join_us": dt / count * 1e6}))


if __name__ == "__main__":
    main()
