/// \file
/// mproc: Python's multiprocessing for C++20. This header pulls in the whole library
/// except the MPI backend (<mproc/mpi.hpp>, target mproc::mpi).
#pragma once

#include <mproc/version.hpp>

#include <mproc/errors.hpp>
#include <mproc/serialization.hpp>

#include <mproc/context.hpp>
#include <mproc/process.hpp>
#include <mproc/connection.hpp>
#include <mproc/queue.hpp>
#include <mproc/sharedctypes.hpp>
#include <mproc/synchronize.hpp>
#include <mproc/shared_memory.hpp>
#include <mproc/pool.hpp>
#include <mproc/managers.hpp>
#include <mproc/supervisor.hpp>

/// Python's multiprocessing and concurrent.futures for C++20: Process, Pool, Queue,
/// Pipe, Value/Array, SharedMemory, locks, Manager and the start methods.
namespace mproc {}
