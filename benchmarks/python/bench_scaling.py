"""Python twin of bench_scaling.cpp: cost growth of Pool.map and of Queue and Pipe
messages from 8 B to 64 MiB, with multiprocessing. Stdlib only.

usage: bench_scaling.py MAX_TASKS VOLUME_BYTES
Prints "series/impl/x seconds" lines, one per point (x = tasks or message bytes;
impl python, or python_into for Pipe.recv_bytes_into a reused bytearray).
Pool.map runs 10^3 tasks and up, by powers of ten, to MAX_TASKS.
"""
import multiprocessing as mp
import sys
import time


def identity(x):
    return x


def message_sizes():
    sizes, s = [], 8
    while s <= 16 << 20:
        sizes.append(s)
        s *= 8
    return sizes + [64 << 20]


def message_count(size, volume):
    return min(max(volume // size, 3), 20_000)


def produce_queue(go, q, size, count):
    payload = bytes(size)
    go.get()
    for _ in range(count):
        q.put(payload)


def produce_pipe(go, tx, size, count):
    payload = bytes(size)
    go.recv()
    for _ in range(count):
        tx.send_bytes(payload)


def time_queue(size, count):
    go, q = mp.Queue(), mp.Queue()
    p = mp.Process(target=produce_queue, args=(go, q, size, count))
    p.start()
    time.sleep(0.03)  # the child builds its payload off the clock, as on the C++ side
    t = time.perf_counter()
    go.put(1)
    for _ in range(count):
        if len(q.get()) != size:
            raise SystemExit("queue: wrong size")
    dt = time.perf_counter() - t
    p.join()
    return dt


def time_pipe(size, count, into=False):
    rx, tx = mp.Pipe(duplex=False)
    go_a, go_b = mp.Pipe()
    p = mp.Process(target=produce_pipe, args=(go_b, tx, size, count))
    p.start()
    tx.close()
    buf = bytearray(size) if into else None  # allocated off the clock, as on the C++ side
    time.sleep(0.03)
    t = time.perf_counter()
    go_a.send(1)
    for _ in range(count):
        n = rx.recv_bytes_into(buf) if into else len(rx.recv_bytes())
        if n != size:
            raise SystemExit("pipe: wrong size")
    dt = time.perf_counter() - t
    p.join()
    return dt


def main():
    max_tasks = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000
    volume = int(sys.argv[2]) if len(sys.argv) > 2 else 256 << 20
    max_outstanding = int(sys.argv[3]) if len(sys.argv) > 3 else 1_000_000
    mp.set_start_method("fork")
    with mp.Pool(2) as pool:
        pool.map(identity, range(1000))  # warm
        n = 1000
        while n <= max_tasks:
            data = [1] * n
            reps = max(1, 100_000 // n)  # small points repeated: not one timer tick
            t = time.perf_counter()
            for _ in range(reps):
                out = pool.map(identity, data)
            dt = (time.perf_counter() - t) / reps
            if len(out) != n:
                raise SystemExit("pool_map: wrong result")
            print(f"pool_map/python/{n} {dt}", flush=True)
            n *= 10
        n = 1000
        while n <= max_outstanding:
            reps = max(1, 100_000 // n)
            t = time.perf_counter()
            for _ in range(reps):
                rs = [pool.apply_async(identity, (1,)) for _ in range(n)]
                total = sum(r.get() for r in rs)
            dt = (time.perf_counter() - t) / reps
            if total != n:
                raise SystemExit("pool_async: wrong result")
            print(f"pool_async/python/{n} {dt}", flush=True)
            n *= 10
    for size in message_sizes():
        count = message_count(size, volume)
        print(f"queue_msg/python/{size} {time_queue(size, count)}", flush=True)
        print(f"pipe_msg/python/{size} {time_pipe(size, count)}", flush=True)
        print(f"pipe_msg/python_into/{size} {time_pipe(size, count, into=True)}", flush=True)


if __name__ == "__main__":
    main()
