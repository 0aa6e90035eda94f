// mproc: Python's multiprocessing for C++20. This header pulls in the whole library
// except the MPI backend (<mproc/mpi.hpp>, target mproc::mpi).
#pragma once

#include <mproc/version.hpp>
#include <mproc/errors.hpp>
#include <mproc/serialization.hpp>
