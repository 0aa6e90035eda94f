/// \file
/// Pool: a fixed set of worker processes running tasks.
///
/// The task path: the caller's inputs are serialized once, in chunks, by the pool's
/// service thread and streamed into a shared-memory ring per worker; the worker
/// decodes each item in place, calls the function and writes the result straight into
/// its result ring; the service thread decodes it straight into its slot of the output
/// (or the AsyncResult). Wake-ups are futexes (worker side) and one eventfd (service
/// side), each taken only after a short spin finds nothing to do.
///
/// Crash containment: every worker publishes which item it is running. When a worker
/// dies, that one item fails with worker_died (or timeout_error when the pool killed it
/// for overrunning task_timeout); every other item it held is sent again to a
/// replacement worker.
///
/// The code lives in include/mproc/pool/, one file per stage of a task's life; read them
/// in this order to follow one item from map() to a worker and back:
///   1. pool/options.hpp       pool_options, map_options, callbacks, progress_bar
///   2. pool/async_result.hpp  AsyncResult, wait, as_completed: where an outcome waits
///   3. pool/wire.hpp          shared control blocks, task and result message headers
///   4. pool/worker.hpp        the worker process: its item loop and result writer
///   5. pool/jobs.hpp          a call on the parent side: input chunks, gathering results
///   6. pool/imap_range.hpp    the lazy result sequence of imap / imap_unordered
///   7. pool/interface.hpp     pool_interface: map, imap, apply, submit, close, join,
///                             terminate; submission and run state (every backend)
///   8. pool/engine.hpp        basic_pool / Pool: worker slots, scheduling, service loop
///   9. pool/supervision.hpp   worker launch, crash recovery, shutdown
/// A backend other than local processes (mpi.hpp; pool/relay.hpp for the chunks it
/// relays) supplies transport and launch only: pool_interface's four hooks.
/// The files have plain names, not number prefixes: the order is kept here (and each
/// file names the stages before and after it), so that splitting or inserting a stage
/// later renames nothing and no include line changes.
#pragma once

#include "pool/options.hpp"
#include "pool/async_result.hpp"
#include "pool/wire.hpp"
#include "pool/worker.hpp"
#include "pool/jobs.hpp"
#include "pool/imap_range.hpp"
#include "pool/interface.hpp"
#include "pool/engine.hpp"
#include "pool/supervision.hpp"
