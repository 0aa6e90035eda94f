// The resource tracker (Python's resource_tracker): a small process that removes
// /dev/shm entries the program created and never unlinked, when the program ends,
// however it ends.
//
// The program holds one end of a SOCK_SEQPACKET socket pair; the tracker holds the
// other and does nothing but read "REGISTER"/"UNREGISTER" records. When every copy of
// the program's end is closed (the program and its forked children have exited, or
// were killed) the tracker reads end-of-file, unlinks what is still registered, warns
// about each on stderr and exits. It is started lazily, by double fork so it is never
// the program's child (no zombie, not in waitpid(-1)), ignores SIGINT/SIGTERM (a
// Ctrl-C of the process group must not stop the cleanup) and keeps no descriptor but
// its socket and stderr.
#pragma once

#include <cstddef>
#include <mutex>
#include <new>
#include <string_view>
#include <utility>

#include <sys/types.h>

#include "../../version.hpp"
#include "fork.hpp"
#include "posix.hpp"

namespace mproc::detail {

class resource_tracker {
 public:
  /// Largest record: kind, name (NAME_MAX) and framing fit in one atomic message.
  static constexpr std::size_t max_record = 512;

  static resource_tracker& instance();

  /// In a forked child: the lock may have been held by a thread the child does not
  /// have (one registering a segment at the instant of fork).
  static void after_fork_child() noexcept { new (&instance().mu_) std::mutex; }

  /// Records that this program created `name` (a /dev/shm entry, with its leading
  /// slash) of the given kind ("shared_memory", "semaphore").
  void register_name(std::string_view kind, std::string_view name) { send("REGISTER", kind, name); }
  void unregister_name(std::string_view kind, std::string_view name) {
    send("UNREGISTER", kind, name);
  }

  /// Starts the tracker now if it is not running (e.g. before forking workers, so they
  /// share it). Returns the tracker's pid.
  pid_t ensure_running();
  /// The descriptor a spawned child can inherit to share this tracker (-1 if none).
  [[nodiscard]] int fd() const noexcept { return fd_; }
  /// The running tracker's descriptor and pid, or {-1, -1} when none was started.
  [[nodiscard]] std::pair<int, pid_t> running();
  /// Adopts a tracker descriptor received from the parent (in a spawn or forkserver
  /// child), so the child's segments are tracked with the program's, as after fork.
  void adopt_fd(int fd, pid_t pid) noexcept;

 private:
  resource_tracker() = default;

  void send(const char* op, std::string_view kind, std::string_view name);

  void start_locked();

  /// stderr without stdio: a FILE lock held by another thread of the program at fork
  /// time would otherwise be held forever here.
  [[gnu::format(printf, 1, 2)]] static void say(const char* fmt, ...);

  /// The tracker's whole life. Only async-signal-safe calls until the socket is set
  /// up, then plain reads; it never returns.
  [[noreturn]] static void run(int sock, int program_end);

  std::mutex mu_;
  int fd_ = -1;
  pid_t pid_ = -1;
};

}  // namespace mproc::detail

#if MPROC_HEADER_ONLY
#include "tracker_impl.hpp"
#endif
