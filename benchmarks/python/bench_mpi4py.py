"""mpi4py.futures, the Python peer of mproc::mpi::Pool: one round of the same work, as
JSON from rank 0. Run under `mpirun -np 3` (the root and two worker ranks), as
bench_mpi is:

    mpirun -np 3 python3 bench_mpi4py.py [--quick]

Before the executor starts, a raw mpi4py ping-pong of an int between ranks 0 and 1
(comm.send/recv): the floor under the executor's round trip. Then
MPICommExecutor(COMM_WORLD, root=0) serves from ranks 1 and 2: identity over 20,000
ints with chunksize 1 and over 100,000 with chunksize 1000 (tasks/s), 200 sequential
submit/result round trips (us), the primes below 2,000,000 by trial division in 64
chunks (seconds, and serial Python's on rank 0 for the speedup, timed while the
worker ranks sleep).
"""
import json
import sys
import time

from mpi4py import MPI
from mpi4py.futures import MPICommExecutor

from workloads import count_primes, identity, prime_bounds


def main():
    quick = "--quick" in sys.argv[1:]
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    out = {}
    trips = 2000
    comm.Barrier()
    if rank == 0 and comm.Get_size() >= 2:
        comm.send(0, dest=1)
        comm.recv(source=1)
        t = time.perf_counter()
        for i in range(trips):
            comm.send(i, dest=1)
            comm.recv(source=1)
        out["raw_pingpong_us"] = (time.perf_counter() - t) / trips * 1e6
    elif rank == 1:
        for _ in range(trips + 1):
            comm.send(comm.recv(source=0), dest=0)
    comm.Barrier()
    limit = 200_000 if quick else 2_000_000
    with MPICommExecutor(comm, root=0) as ex:
        if ex is None:  # a worker rank: it served until the root closed the executor
            # Sleep while the root times serial Python, as mproc's idle ranks do: a
            # rank that left for MPI_Finalize could poll and take the root's core.
            req = comm.Ibarrier()
            while not req.Test():
                time.sleep(0.001)
            return
        list(ex.map(identity, range(100)))  # warm
        n = 4_000 if quick else 20_000
        t = time.perf_counter()
        r = list(ex.map(identity, range(n), chunksize=1))
        out["map_cs1"] = n / (time.perf_counter() - t)
        assert r[-1] == n - 1
        n = 100_000
        t = time.perf_counter()
        r = list(ex.map(identity, range(n), chunksize=1000))
        out["map_cs1000"] = n / (time.perf_counter() - t)
        assert r[-1] == n - 1
        trips = 200
        t = time.perf_counter()
        for i in range(trips):
            ex.submit(identity, i).result()
        out["apply_rt"] = (time.perf_counter() - t) / trips * 1e6
        t = time.perf_counter()
        counts = list(ex.map(count_primes, prime_bounds(limit), chunksize=1))
        out["primes"] = time.perf_counter() - t
        out["prime_count"] = sum(counts)
    t = time.perf_counter()
    out["serial_prime_count"] = sum(count_primes(b) for b in prime_bounds(limit))
    out["serial_primes"] = time.perf_counter() - t
    comm.Ibarrier().Wait()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
