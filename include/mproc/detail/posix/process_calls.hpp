// Calls on processes by pid or pidfd: signalling, liveness, leaving, parent death.
#pragma once

#include <cerrno>
#include <climits>
#include <cstddef>
#include <string>

#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "child_calls.hpp"
#include "posix.hpp"

namespace mproc::detail {

/// A pidfd for pid, or an invalid one: old kernels (before 5.3) have none, and the
/// library then falls back to polling.
inline unique_fd try_pidfd_open(pid_t pid) noexcept {
  int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  return unique_fd(fd >= 0 ? fd : -1);
}

/// pidfd_send_signal(2); returns its result (-1 and errno on failure).
inline long pidfd_send_signal(int pidfd, int sig) noexcept {
  return ::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0);
}

/// Sends sig through pidfd when there is one (a recycled pid can never be hit), else
/// (or on a kernel without pidfd_send_signal) to pid. A process already gone (ESRCH)
/// is not an error; any other failure throws.
inline void signal_process(int pidfd, pid_t pid, int sig) {
  long rc = pidfd >= 0 ? pidfd_send_signal(pidfd, sig) : ::kill(pid, sig);
  if (rc == -1 && errno == ENOSYS) rc = ::kill(pid, sig);
  if (rc == -1 && errno != ESRCH) throw_errno("pidfd_send_signal");
}

/// kill(pid, sig), the result ignored: for a worker that may already be gone.
/// Async-signal-safe.
inline void kill_quietly(pid_t pid, int sig) noexcept { ::kill(pid, sig); }

/// True while a process with this pid exists (also one we may not signal).
inline bool pid_exists(pid_t pid) noexcept { return ::kill(pid, 0) == 0 || errno == EPERM; }

/// Leaves the process at once with `status`: no atexit handlers, no static
/// destructors, no stdio flush. Async-signal-safe.
[[noreturn]] inline void exit_now(int status) noexcept {
  child_calls.exit(status);
  __builtin_unreachable();
}

/// Asks for `sig` when the thread that forked this process ends. Async-signal-safe.
inline void set_parent_death_signal(int sig) noexcept { child_calls.prctl(PR_SET_PDEATHSIG, sig); }

/// Blocks sig in the calling thread (threads it starts later inherit the mask) and
/// returns a close-on-exec signalfd that becomes readable when sig arrives (-1 on
/// failure).
inline int signalfd_for(int sig) noexcept {
  sigset_t set;
  ::sigemptyset(&set);
  ::sigaddset(&set, sig);
  ::pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return ::signalfd(-1, &set, SFD_CLOEXEC);
}

/// This process's parent (1 or a subreaper once it has died).
inline pid_t parent_pid() noexcept { return child_calls.getppid(); }
inline uid_t effective_uid() noexcept { return ::geteuid(); }
/// Leaves the caller's process group for one of its own.
inline void own_process_group() noexcept { ::setpgid(0, 0); }
inline void ignore_signal(int sig) noexcept { ::signal(sig, SIG_IGN); }
/// Registers fn to run at exit() with the exit status (glibc's on_exit).
inline void at_exit_with_status(void (*fn)(int, void*), void* arg) noexcept {
  child_calls.on_exit(fn, arg);
}

/// Blocks until child pid has exited, leaving it unreaped (WNOWAIT).
inline void wait_exited_unreaped(pid_t pid) noexcept {
  siginfo_t info{};
  retry_eintr([&] { return ::waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT); });
}

/// CPUs this process may run on; 0 when the affinity mask cannot be read.
inline int affinity_cpu_count() noexcept {
  cpu_set_t set;
  CPU_ZERO(&set);
  return ::sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 0;
}

/// The executable this process runs (/proc/self/exe); empty when unreadable.
inline std::string own_executable() {
  char buf[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, std::size_t(n)) : std::string();
}

}  // namespace mproc::detail
