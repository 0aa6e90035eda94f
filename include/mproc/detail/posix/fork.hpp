// Forking a child that can never outlive its parent.
#pragma once

#include <csignal>
#include <cstdlib>
#include <cstdio>
#include <exception>
#include <iostream>
#include <typeinfo>

#if defined(__GLIBCXX__)
#include <ext/stdio_sync_filebuf.h>
#endif

#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fork_hooks.hpp"
#include "posix.hpp"
#include "process_calls.hpp"

namespace mproc::detail {

/// Python-style exit code from a waitpid status: the exit status, or -signum.
inline int exitcode_from_status(int status) noexcept {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return -WTERMSIG(status);
  return 255;
}

/// Called in every freshly forked child before anything else: the child gets SIGKILL
/// when the parent dies. The parent may already have died between fork() and prctl();
/// comparing getppid() with the pid recorded before fork closes that race.
inline void die_with_parent(pid_t expected_parent) noexcept {
  set_parent_death_signal(SIGKILL);
  if (parent_pid() != expected_parent) exit_now(128 + SIGKILL);
}

/// Flushes std::cout, std::cerr and every stdio stream. When the iostreams are
/// synchronised with stdio (the default) they hold no buffer of their own and the
/// stdio flush covers them; skipping their flush() then matters in a fresh child,
/// where touching the iostream objects costs copy-on-write page faults.
inline void flush_all_output() noexcept {
  try {
    // mproc::init may run from a static initializer (a spawned child enters there)
    // before this program's iostreams exist; an Init object guarantees they do. One
    // kept for good rather than one per call: constructing and destroying it writes
    // libstdc++'s counters and flushes every stream, three copy-on-write page faults
    // in each forked child. A forked child finds it already constructed: fork_child
    // flushes in the forking thread before it forks.
    static const std::ios_base::Init streams_exist;
#if defined(__GLIBCXX__)
    // typeid compares inline; dynamic_cast would run library code whose pages a fresh
    // child has not mapped yet (one more page fault per child).
    using sync_buf = __gnu_cxx::stdio_sync_filebuf<char>;
    auto synced = [](std::ostream& os) {
      auto* b = os.rdbuf();
      return b && typeid(*b) == typeid(sync_buf);
    };
    if (!synced(std::cout)) std::cout.flush();
    if (!synced(std::cerr)) std::cerr.flush();
#else
    std::cout.flush();
    std::cerr.flush();
#endif
  } catch (...) {
  }
  std::fflush(nullptr);
}

/// Forks; the child runs body() and _exit()s with its int result (an exception
/// escaping body gives exit code 1). Returns the child's pid to the parent.
/// PR_SET_PDEATHSIG fires when the *thread* that forked exits, so long-lived threads
/// (the caller's, or a pool's own service thread) should do the forking.
template <class Body>
pid_t fork_child(Body&& body) {
  const pid_t parent = ::getpid();
  // Unflushed output would otherwise be written twice: once by each process.
  flush_all_output();
  pid_t pid = ::fork();
  if (pid == -1) throw_errno("fork");
  if (pid == 0) {
    die_with_parent(parent);
    int code = 1;
    try {
      code = body();
    } catch (...) {
      code = 1;
    }
    // _exit skips the parent's atexit handlers and static destructors, which belong
    // to the parent; the child's own output still has to reach its destination.
    flush_all_output();
    exit_now(code);
  }
  return pid;
}

/// A pollable descriptor that becomes readable when the process exits (Linux 5.3+).
inline unique_fd pidfd_open(pid_t pid) {
  int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (fd == -1) throw_errno("pidfd_open");
  return unique_fd(fd);
}

/// waitpid that retries on EINTR; returns 0 if not yet exited with WNOHANG.
inline pid_t waitpid_eintr(pid_t pid, int* status, int flags) {
  return retry_eintr([&] { return ::waitpid(pid, status, flags); });
}

}  // namespace mproc::detail
