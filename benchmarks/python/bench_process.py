"""Python twin of bench_process.cpp: multiprocessing.Process start()+join() (fork).

usage: bench_process.py [COUNT]
Prints one JSON line: {"start_join_us": <mean microseconds per start+join>}.
"""
import json
import multiprocessing as mp
import sys
import time


def nothing():
    pass


def main():
    mp.set_start_method("fork")
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    p = mp.Process(target=nothing)  # warm up
    p.start()
    p.join()
    t0 = time.perf_counter()
    for _ in range(count):
        p = mp.Process(target=nothing)
        p.start()
        p.join()
    dt = time.perf_counter() - t0
    print(json.dumps({"start_join_us": dt / count * 1e6}))


if __name__ == "__main__":
    main()
