// The C library calls that a freshly forked child makes before its parent has made
// them, reached through pointers the dynamic linker fills when the program loads.
//
// Why: a direct call from the program goes through a PLT slot that is bound on its
// first call. A slot the parent never used is still unbound in every child it forks,
// so each child looks the symbol up again, reading the symbol tables of every loaded
// library into its fresh address space. Measured: a Process start+join took 44 page
// faults against 29 for a bare fork+waitpid+_exit, and a sixth of its CPU time went
// to those look-ups; a pool worker bound seven more symbols as it started, and each
// child of the forkserver one (fcntl, which the server itself never calls). Filled at
// load in a position-independent executable (the default), the pointers need no
// look-up in any process; constinit: they exist before any static initializer runs
// (mproc::init may run from one). They are not const, so that the compiler cannot
// turn the calls back into direct ones.
#pragma once

#include <csignal>
#include <ctime>

#include <fcntl.h>
#include <link.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <unistd.h>

namespace mproc::detail {

struct child_call_table {
  decltype(&::prctl) prctl;
  decltype(&::getppid) getppid;
  decltype(&::on_exit) on_exit;
  decltype(&::_exit) exit;
  decltype(&::signal) signal;
  decltype(&::sigemptyset) sigemptyset;
  decltype(&::pthread_sigmask) pthread_sigmask;
  decltype(&::clock_gettime) clock_gettime;
  decltype(&::write) write;
  decltype(&::sched_yield) sched_yield;
  decltype(&::dl_iterate_phdr) dl_iterate_phdr;
  decltype(&::fcntl) fcntl;
};

inline constinit child_call_table child_calls{
    &::prctl,           &::getppid,       &::on_exit, &::_exit,
    &::signal,          &::sigemptyset,   &::pthread_sigmask,
    &::clock_gettime,   &::write,         &::sched_yield,
    &::dl_iterate_phdr, &::fcntl};

}  // namespace mproc::detail
