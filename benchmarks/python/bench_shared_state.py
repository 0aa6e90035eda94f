"""Python twin of bench_shared_state.cpp: one round of each measurement, as JSON.

  value: 2 processes each increment a multiprocessing.Value('i') under its lock,
         timed from their simultaneous release at a start line
  fill:  2 processes fill one half each of a shared_memory.SharedMemory block, on
         fresh pages (first touch) and then again (warm)

Run by bench_shared_state itself between its own rounds. Stdlib only.
Usage: bench_shared_state.py <increments per process> <fill bytes>
"""
import json
import multiprocessing as mp
import sys
import time
from multiprocessing import shared_memory

CHUNK = 1 << 20


def increment(ready, go, counter, n):
    ready.release()
    go.wait()
    for _ in range(n):
        with counter.get_lock():
            counter.value += 1


def fill(shm, offset, length, value):
    pattern = bytes([value]) * CHUNK
    buf = shm.buf
    end = offset + length
    while offset < end:
        k = min(CHUNK, end - offset)
        buf[offset:offset + k] = pattern[:k]
        offset += k
    del buf


def fill_worker(shm, offset, length, ready, done, go_first, go_warm):
    ready.release()
    go_first.wait()
    fill(shm, offset, length, 1)
    done.release()
    go_warm.wait()
    fill(shm, offset, length, 2)
    done.release()


def main():
    increments = int(sys.argv[1])
    size = int(sys.argv[2])
    ctx = mp.get_context("fork")

    counter = ctx.Value("i", 0)
    ready, go = ctx.Semaphore(0), ctx.Event()
    procs = [ctx.Process(target=increment, args=(ready, go, counter, increments)) for _ in range(2)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
    t = time.perf_counter()
    go.set()
    for p in procs:
        p.join()
    value_s = time.perf_counter() - t
    if counter.value != 2 * increments:
        raise SystemExit(f"lost updates: {counter.value}")

    shm = shared_memory.SharedMemory(create=True, size=size)
    try:
        half = size // 2
        ready, done = ctx.Semaphore(0), ctx.Semaphore(0)
        go_first, go_warm = ctx.Event(), ctx.Event()
        procs = [ctx.Process(target=fill_worker, args=(shm, off, n, ready, done, go_first, go_warm))
                 for off, n in ((0, half), (half, size - half))]
        for p in procs:
            p.start()
        for _ in procs:
            ready.acquire()

        def phase(go):
            t = time.perf_counter()
            go.set()
            for _ in procs:
                done.acquire()
            return time.perf_counter() - t

        first = phase(go_first)
        warm = phase(go_warm)
        for p in procs:
            p.join()
        ok = shm.buf[0] == 2 and shm.buf[size - 1] == 2 and all(p.exitcode == 0 for p in procs)
    finally:
        shm.close()
        shm.unlink()
    if not ok:
        raise SystemExit("fill not visible")
    print(json.dumps({"value_s": value_s, "fill_first_s": first, "fill_warm_s": warm}))


if __name__ == "__main__":
    main()
