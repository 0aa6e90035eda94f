// Small helpers the process-level tests share: joining a forked child with a deadline
// (so no test can hang) and counting this process's open descriptors (leak checks).
#pragma once

#include <mproc/context.hpp>
#include <mproc/detail/posix/fork.hpp>
#include <mproc/detail/posix/posix.hpp>
#include <mproc/process.hpp>

#include <chrono>
#include <csignal>
#include <cstddef>
#include <utility>
#include <string>

#include <dirent.h>
#include <poll.h>

#if defined(__SANITIZE_ADDRESS__)
#define MPROC_TEST_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__)
#define MPROC_TEST_TSAN 1
#endif
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MPROC_TEST_ASAN 1
#endif
#if __has_feature(thread_sanitizer)
#define MPROC_TEST_TSAN 1
#endif
#endif

namespace mproc_test {

/// Built with ThreadSanitizer / AddressSanitizer: some sizes shrink there (never what
/// is asserted).
#if defined(MPROC_TEST_TSAN)
inline constexpr bool under_tsan = true;
#else
inline constexpr bool under_tsan = false;
#endif
#if defined(MPROC_TEST_ASAN)
inline constexpr bool under_asan = true;
#else
inline constexpr bool under_asan = false;
#endif

/// join_child's result when the child overran its deadline (and was killed).
inline constexpr int kTimedOut = 1000;

/// Waits for a forked child with a timeout; kills it if it overruns. Returns its exit
/// code (-signum when killed by a signal) or kTimedOut.
inline int join_child(pid_t pid, std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
  namespace d = mproc::detail;
  d::unique_fd pfd = d::pidfd_open(pid);
  pollfd p{pfd.get(), POLLIN, 0};
  int rc = d::retry_eintr([&] { return ::poll(&p, 1, static_cast<int>(timeout.count())); });
  int status = 0;
  if (rc == 0) {
    ::kill(pid, SIGKILL);
    d::waitpid_eintr(pid, &status, 0);
    return kTimedOut;
  }
  d::waitpid_eintr(pid, &status, 0);
  return d::exitcode_from_status(status);
}

/// Descriptors open in this process.
inline std::size_t count_fds() {
  std::size_t n = 0;
  DIR* dir = ::opendir("/proc/self/fd");
  while (dirent* e = ::readdir(dir)) n += e->d_name[0] != '.';
  ::closedir(dir);
  return n - 1;  // the DIR's own descriptor
}

/// Runs the enclosing TEST_CASE once per start method (a Catch2 generator: the body is
/// written once). Spawn and forkserver need mproc::init first (spawn_entry.hpp's
/// ensure_init()).
#define MPROC_TEST_EACH_START_METHOD()                                          \
  GENERATE(mproc::start_method::fork, mproc::start_method::spawn,              \
           mproc::start_method::forkserver)

/// Options starting a Process with start method m.
inline mproc::process_options with_method(mproc::start_method m, std::string name = {}) {
  return {.name = std::move(name), .daemon = false, .method = m};
}

/// Joins a Process with a timeout, killing it if it overruns. Returns its exit code or
/// kTimedOut.
inline int join_process(mproc::Process& p, std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
  if (!p.join(timeout)) {
    p.kill();
    (void)p.join(std::chrono::seconds(10));
    return kTimedOut;
  }
  return p.exitcode().value_or(kTimedOut);
}

}  // namespace mproc_test
