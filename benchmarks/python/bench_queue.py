"""Python twin of bench_queue.cpp: the same transfers through multiprocessing.Queue.

usage: bench_queue.py [SCENARIO,...]   scenarios: ints, 64k, 256m
Prints one "name value" line per scenario (msgs/s or bytes/s), timed from the
producer's go signal to the last get(), as the C++ side does.
"""
import multiprocessing as mp
import sys
import time

INTS = 200_000
BLOCK = 64 * 1024
BLOCKS = 10_000
BIG = 256 * 1024 * 1024


def produce_ints(go, q):
    go.get()
    for i in range(INTS):
        q.put(i)


def produce_blocks(go, q):
    payload = bytes(BLOCK)
    go.get()
    for _ in range(BLOCKS):
        q.put(payload)


def produce_big(go, q):
    payload = bytes(BIG)
    go.get()
    q.put(payload)


def run(target, count):
    go, q = mp.Queue(), mp.Queue()
    p = mp.Process(target=target, args=(go, q))
    p.start()
    time.sleep(0.05)  # let the child build its payload before the clock starts
    t0 = time.perf_counter()
    go.put(1)
    for _ in range(count):
        q.get()
    dt = time.perf_counter() - t0
    p.join()
    return dt


def main():
    mp.set_start_method("fork")
    which = sys.argv[1].split(",") if len(sys.argv) > 1 else ["ints", "64k", "256m"]
    for w in which:
        if w == "ints":
            print("ints", INTS / run(produce_ints, INTS))
        elif w == "64k":
            print("64k", BLOCK * BLOCKS / run(produce_blocks, BLOCKS))
        elif w == "256m":
            print("256m", BIG / run(produce_big, 1))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
