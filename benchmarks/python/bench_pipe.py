"""Python twin of bench_pipe.cpp: multiprocessing.Pipe ping-pong and 64 KiB streaming.

usage: bench_pipe.py ROUND_TRIPS BLOCKS
Prints one JSON line: {"pingpong_us": <microseconds per round trip>,
                       "stream_mib_s": <MiB/s of 64 KiB send_bytes/recv_bytes>}.
"""
import json
import multiprocessing as mp
import sys
import time

BLOCK = 64 * 1024


def echo(conn):
    while True:
        v = conn.recv()
        if v < 0:
            break
        conn.send(v + 1)


def stream(go, tx, blocks):
    payload = bytes(BLOCK)
    go.recv()
    for _ in range(blocks):
        tx.send_bytes(payload)


def main():
    mp.set_start_method("fork")
    trips = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    blocks = int(sys.argv[2]) if len(sys.argv) > 2 else 4096

    a, b = mp.Pipe()
    p = mp.Process(target=echo, args=(b,))
    p.start()
    a.send(0)
    a.recv()
    t0 = time.perf_counter()
    v = 0
    for _ in range(trips):
        a.send(v)
        v = a.recv()
    dt = time.perf_counter() - t0
    a.send(-1)
    p.join()
    pingpong_us = dt / trips * 1e6

    rx, tx = mp.Pipe(duplex=False)
    go_a, go_b = mp.Pipe()
    p = mp.Process(target=stream, args=(go_b, tx, blocks))
    p.start()
    time.sleep(0.05)
    t0 = time.perf_counter()
    go_a.send(1)
    for _ in range(blocks):
        rx.recv_bytes()
    dt = time.perf_counter() - t0
    p.join()
    print(json.dumps({"pingpong_us": pingpong_us,
                      "stream_mib_s": blocks * BLOCK / dt / (1 << 20)}))


if __name__ == "__main__":
    main()
