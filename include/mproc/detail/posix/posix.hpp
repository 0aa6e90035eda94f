// Thin POSIX wrappers used across the library. Every platform specific call lives
// under detail/posix/ so the rest reads as plain C++.
#pragma once

#include <cerrno>
#include <climits>
#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "../deadline.hpp"
#include "child_calls.hpp"

namespace mproc::detail {

/// Raises std::system_error naming the failed call.
[[noreturn]] inline void throw_errno(const char* call, int err = errno) {
  throw std::system_error(err, std::generic_category(), call);
}

/// Checks the result of a call returning -1 on failure.
inline long check(long rc, const char* call) {
  if (rc == -1) throw_errno(call);
  return rc;
}

/// Retries a call that failed with EINTR; returns its last result.
template <class F>
auto retry_eintr(F&& f) -> decltype(f()) {
  decltype(f()) rc;
  do {
    rc = f();
  } while (rc == -1 && errno == EINTR);
  return rc;
}

/// Closes fd unless it is negative. Never retried on EINTR: on Linux the descriptor
/// is gone either way. Async-signal-safe.
/// n bytes from the kernel's CSPRNG into p (getrandom, resumed after EINTR and short reads).
inline void fill_random(void* p, std::size_t n) {
  auto* out = static_cast<unsigned char*>(p);
  std::size_t got = 0;
  while (got < n) {
    const ssize_t r = ::getrandom(out + got, n - got, 0);
    if (r == -1) {
      if (errno == EINTR) continue;
      throw_errno("getrandom");
    }
    got += std::size_t(r);
  }
}

/// n bytes from the kernel's CSPRNG (keys, nonces, unique names).
inline std::string random_bytes(std::size_t n) {
  std::string out(n, '\0');
  fill_random(out.data(), n);
  return out;
}

/// Lower-case hex digits of bytes (names made of random bytes, digests in logs and tests).
inline std::string hex(std::string_view bytes) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string s;
  s.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    s.push_back(digits[c >> 4]);
    s.push_back(digits[c & 15]);
  }
  return s;
}

inline bool is_terminal(int fd) noexcept { return ::isatty(fd) == 1; }
inline std::size_t page_size() noexcept { return static_cast<std::size_t>(::sysconf(_SC_PAGESIZE)); }
inline std::uint64_t physical_memory_bytes() noexcept {
  return std::uint64_t(::sysconf(_SC_PHYS_PAGES)) * std::uint64_t(::sysconf(_SC_PAGESIZE));
}

/// Closes every descriptor in [first, last] (close_range).
inline void close_fd_range(unsigned first, unsigned last) noexcept { ::close_range(first, last, 0); }

/// The calling thread's stack: its lowest address and size; false when unknown.
inline bool thread_stack(void** low, std::size_t* size) noexcept {
  pthread_attr_t attr;
  if (::pthread_getattr_np(::pthread_self(), &attr) != 0) return false;
  const int rc = ::pthread_attr_getstack(&attr, low, size);
  ::pthread_attr_destroy(&attr);
  return rc == 0 && *low != nullptr;
}

/// Commits pages [p, p + n) for writing now (MADV_POPULATE_WRITE, Linux 5.14); false
/// when the kernel cannot, and the caller touches them itself.
inline bool populate_for_write(void* p, std::size_t n) noexcept {
#ifdef MADV_POPULATE_WRITE
  return ::madvise(p, n, MADV_POPULATE_WRITE) == 0;
#else
  (void)p;
  (void)n;
  return false;
#endif
}

inline void close_fd(int fd) noexcept {
  if (fd >= 0) ::close(fd);
}

/// This process's id. Async-signal-safe.
inline pid_t current_pid() noexcept { return ::getpid(); }

/// Owning file descriptor.
class unique_fd {
 public:
  unique_fd() noexcept = default;
  explicit unique_fd(int fd) noexcept : fd_(fd) {}
  unique_fd(unique_fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  unique_fd& operator=(unique_fd&& o) noexcept {
    if (this != &o) reset(std::exchange(o.fd_, -1));
    return *this;
  }
  unique_fd(const unique_fd&) = delete;
  unique_fd& operator=(const unique_fd&) = delete;
  ~unique_fd() { reset(); }

  [[nodiscard]] int get() const noexcept { return fd_; }
  [[nodiscard]] explicit operator bool() const noexcept { return fd_ >= 0; }
  int release() noexcept { return std::exchange(fd_, -1); }
  void reset(int fd = -1) noexcept {
    close_fd(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

// Futex on a 32-bit word in memory shared between processes (hence no
// FUTEX_PRIVATE_FLAG). wait returns false on timeout.
inline bool futex_wait(const void* addr, std::uint32_t expected, std::int64_t timeout_ns = -1) {
  timespec ts{};
  timespec* tsp = nullptr;
  if (timeout_ns >= 0) {
    ts.tv_sec = timeout_ns / 1'000'000'000;
    ts.tv_nsec = timeout_ns % 1'000'000'000;
    tsp = &ts;
  }
  long rc = ::syscall(SYS_futex, addr, FUTEX_WAIT, expected, tsp, nullptr, 0);
  if (rc == -1) {
    if (errno == ETIMEDOUT) return false;
    if (errno == EAGAIN || errno == EINTR) return true;  // caller re-checks its condition
    throw_errno("futex(FUTEX_WAIT)");
  }
  return true;
}

inline void futex_wake(const void* addr, int count = INT32_MAX) noexcept {
  ::syscall(SYS_futex, addr, FUTEX_WAKE, count, nullptr, nullptr, 0);
}

/// Waits for an event on fds, the deadline (deadline_t; no_deadline: none) or an
/// error: the one fd wait every other waits through. EINTR waits again for what is
/// left of the time, so a signal neither ends the wait early nor restarts it in full.
/// Returns poll's result (0: the deadline passed).
inline int poll_until(pollfd* fds, nfds_t n, deadline_t deadline) {
  for (;;) {
    timespec ts{};
    timespec* tsp = nullptr;
    if (deadline != no_deadline) {
      const std::int64_t left = ns_left(deadline);
      ts = {time_t(left / 1'000'000'000), long(left % 1'000'000'000)};
      tsp = &ts;
    }
    const int rc = ::ppoll(fds, n, tsp, nullptr);
    if (rc >= 0 || errno != EINTR) return rc;
  }
}

/// Waits until fd is ready for `events` (or has an error or hang-up, which the next
/// call on it reports); false when the deadline passes first.
inline bool wait_fd(int fd, short events, deadline_t deadline) {
  pollfd p{fd, events, 0};
  const int rc = poll_until(&p, 1, deadline);
  if (rc < 0) throw_errno("ppoll");
  return rc > 0;
}

/// For the library's own threads (a pool's service thread): asynchronous signals
/// belong to the program, so they go to the program's threads and never interrupt
/// ours. Faults (SIGSEGV, SIGBUS, ...) stay deliverable: they are this thread's own.
inline void block_async_signals() noexcept {
  sigset_t s;
  ::sigfillset(&s);
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS, SIGABRT}) ::sigdelset(&s, sig);
  ::pthread_sigmask(SIG_BLOCK, &s, nullptr);
}

/// Signal state of a pool worker, whatever the start method and whatever the thread
/// that forked it had blocked: nothing blocked, and SIGINT / SIGTERM ignored. Ctrl-C
/// reaches the whole process group and a service manager may signal every process
/// of the program; the parent decides, and its workers end with the pool (SIGKILL)
/// or with the parent (parent-death signal), never one by one with a trace each.
inline void pool_worker_signals() noexcept {
  child_calls.signal(SIGINT, SIG_IGN);
  child_calls.signal(SIGTERM, SIG_IGN);
  sigset_t none;
  child_calls.sigemptyset(&none);
  child_calls.pthread_sigmask(SIG_SETMASK, &none, nullptr);
}

/// One read() of up to n bytes, retried on EINTR; returns what read returns.
inline ssize_t read_eintr(int fd, void* p, std::size_t n) noexcept {
  return retry_eintr([&] { return ::read(fd, p, n); });
}

/// Writes [p, p + n) whole, retrying on EINTR and after a short write; stops at the
/// first error (best effort: diagnostics, wake-ups). False when it stopped early.
/// Async-signal-safe.
inline bool write_fully(int fd, const void* p, std::size_t n) noexcept {
  for (auto* c = static_cast<const char*>(p); n > 0;) {
    const ssize_t rc = child_calls.write(fd, c, n);
    if (rc < 0 && errno == EINTR) continue;
    if (rc <= 0) return false;
    c += rc;
    n -= std::size_t(rc);
  }
  return true;
}

/// poll() retried on EINTR with the same timeout (ms, -1: none); returns its result.
inline int poll_eintr(pollfd* fds, nfds_t n, int timeout_ms) noexcept {
  return retry_eintr([&] { return ::poll(fds, n, timeout_ms); });
}

/// True unless a zero-timeout poll finds fd not yet readable: an error counts as
/// ready, for the next call on fd to report.
inline bool readable_now(int fd) noexcept {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 0) != 0;
}

/// A close-on-exec duplicate of fd; throws naming `what` on failure.
inline unique_fd dup_cloexec(int fd, const char* what) {
  unique_fd d(child_calls.fcntl(fd, F_DUPFD_CLOEXEC, 0));
  if (!d) throw_errno(what);
  return d;
}

/// fstat(fd); throws naming `what` on failure.
inline struct stat file_stat(int fd, const char* what) {
  struct stat st {};
  check(::fstat(fd, &st), what);
  return st;
}

/// True when both descriptors refer to one file (false if either cannot be queried).
inline bool same_file(int a, int b) noexcept {
  struct stat sa {}, sb {};
  return ::fstat(a, &sa) == 0 && ::fstat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
         sa.st_ino == sb.st_ino;
}

/// Sets or clears O_NONBLOCK on fd; errors are ignored (the fd is ours and open).
inline void set_nonblocking(int fd, bool on) noexcept {
  const int flags = child_calls.fcntl(fd, F_GETFL);
  if (flags >= 0) child_calls.fcntl(fd, F_SETFL, on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK);
}

/// A pipe, {read end, write end}, with `flags` (O_CLOEXEC, ...).
inline std::pair<unique_fd, unique_fd> make_pipe(int flags) {
  int p[2];
  check(::pipe2(p, flags), "pipe2");
  return {unique_fd(p[0]), unique_fd(p[1])};
}

/// An eventfd with counter `initial` and `flags` (EFD_CLOEXEC, ...); throws naming
/// `what` on failure. One with initial 1 is always readable: a ready-made sentinel.
inline unique_fd make_eventfd(unsigned initial, int flags, const char* what) {
  unique_fd fd(::eventfd(initial, flags));
  if (!fd) throw_errno(what);
  return fd;
}

/// Gives the core to another runnable thread, if any (sched_yield).
inline void yield_cpu() noexcept { child_calls.sched_yield(); }

/// Adds 1 to an eventfd's counter (a wake-up); failures are ignored: the counter
/// is then already non-zero. Async-signal-safe.
inline void eventfd_signal(int fd) noexcept {
  std::uint64_t one = 1;
  [[maybe_unused]] auto rc = child_calls.write(fd, &one, sizeof one);
}

/// Resets a non-blocking eventfd's counter (after its wake-up was seen).
inline void eventfd_drain(int fd) noexcept {
  std::uint64_t v;
  [[maybe_unused]] auto rc = ::read(fd, &v, sizeof v);
}

/// A descriptor open read-only on path, close-on-exec (invalid on failure).
inline unique_fd open_readonly(const char* path) noexcept {
  return unique_fd(::open(path, O_RDONLY | O_CLOEXEC));
}

inline void set_cloexec(int fd) {
  int flags = static_cast<int>(check(child_calls.fcntl(fd, F_GETFD), "fcntl(F_GETFD)"));
  check(child_calls.fcntl(fd, F_SETFD, flags | FD_CLOEXEC), "fcntl(F_SETFD)");
}

}  // namespace mproc::detail
