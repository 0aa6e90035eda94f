/// \file
/// The MPI backend: the Pool API over MPI ranks instead of local worker processes.
///
///   int main(int argc, char** argv) {
///     mproc::mpi::environment env(argc, argv);  // worker ranks serve tasks and exit here
///     mproc::mpi::Pool pool;                    // on the root rank (rank 0) only
///     auto v = pool.map(f, inputs);
///   }
///
/// Run with `mpirun -np N ./program`: rank 0 runs main, ranks 1..N-1 are workers. Tasks
/// name their function and carry their arguments exactly as with mproc::Pool (see
/// detail/callable.hpp and serialization.hpp), so every rank must run the same
/// executable.
///
/// Layout: each worker rank serves its chunks through a local mproc::Pool on its host
/// (pool_options::local_processes; its processes are forked by the forkserver that
/// environment forks before MPI_Init, so none carries MPI state). The chunk travels as
/// the local pool's own task message and runs through pool/relay.hpp, so crashes,
/// timeouts and max_tasks_per_child behave as locally. With local_processes = -1 the
/// rank runs tasks itself. With no worker ranks (-np 1, or no mpirun) the root serves
/// the chunks through a local pool of its own (or, with -1, on its engine thread).
///
/// Threading: MPI is initialised with MPI_THREAD_SERIALIZED. After initialisation only
/// one thread makes MPI calls at a time: the pool's engine thread while a pool exists,
/// the main thread before and after (environment's destructor); on a worker rank, its
/// main thread (the local pool's threads hand finished chunks over). Hence one
/// mpi::Pool at a time.
///
/// Scheduling: each worker rank holds up to `chunks_in_flight` chunks (default 2) per
/// local process; the engine sends the next chunk to a rank as soon as one of its
/// results arrives, so hosts are fed by their capacity and uneven tasks balance.
///
/// Failure: a task's exception comes back as with mproc::Pool; a task that kills its
/// local process fails alone with worker_died. A rank that dies takes the job down:
/// mpirun aborts every rank (the root included) and exits non-zero. MPI call failures
/// that are reported instead raise mproc::error naming the call.
#pragma once

/// The Pool API over the ranks of an MPI job (mpirun): see mpi::environment and mpi::Pool.
namespace mproc::mpi {}

#include "mpi/environment.hpp"
#include "mpi/pool.hpp"
