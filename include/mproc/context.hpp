// Start methods and the policies that implement them.
//
// A start policy turns a "child main" (a callable returning the child's exit code) into
// a running child process. basic_process<Policy> and the pool are written against the
// start_policy concept, so the method can be fixed at compile time (fork_policy, ...),
// chosen at run time (dynamic_policy, which reads process_options::method or the
// process-wide setting), or supplied by the user.
#pragma once

#include <array>
#include <atomic>
#include <concepts>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <climits>
#include <unistd.h>

#include "detail/posix/fork.hpp"
#include "detail/posix/forker.hpp"
#include "detail/posix/posix.hpp"
#include "errors.hpp"

namespace mproc {

enum class start_method { fork, spawn, forkserver };

[[nodiscard]] constexpr const char* to_string(start_method m) noexcept {
  switch (m) {
    case start_method::fork: return "fork";
    case start_method::spawn: return "spawn";
    case start_method::forkserver: return "forkserver";
  }
  return "unknown";
}

/// Options of a Process. Fields stay in this order (designated initializers).
struct process_options {
  std::string name{};                  // empty: "Process-N"
  bool daemon = false;                 // terminated when the parent exits
  std::optional<start_method> method{};  // empty: get_start_method()
};

namespace detail {

struct bootstrap_state {
  std::mutex m;
  bool called = false;
  std::vector<std::string> argv;
  std::string executable;  // /proc/self/exe at init time: what spawn will re-execute
};

inline bootstrap_state& bootstrap() {
  static bootstrap_state* s = new bootstrap_state;  // leaked: used until the very end
  return *s;
}

inline std::atomic<start_method>& default_start_method() {
  static std::atomic<start_method> m{start_method::fork};
  return m;
}

[[noreturn]] inline void throw_unavailable(start_method m) {
  bool called;
  {
    std::lock_guard lk(bootstrap().m);
    called = bootstrap().called;
  }
  throw start_method_error(
      std::string("mproc: the '") + to_string(m) +
      "' start method needs mproc::init(argc, argv) as the first line of main" +
      (called ? " (init was called)" : " (init was not called)") +
      ", and it is not available in this build yet; use start_method::fork");
}

}  // namespace detail

/// Records the command line. Call it as the first line of main: it is where children
/// started by spawn or forkserver enter (there it runs the child's work and never
/// returns). In the parent, and with fork, it only records what it needs and returns.
inline void init(int argc, char** argv) {
  auto& b = detail::bootstrap();
  std::lock_guard lk(b.m);
  b.argv.clear();
  for (int i = 0; i < argc && argv && argv[i]; ++i) b.argv.emplace_back(argv[i]);
  char buf[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  b.executable = n > 0 ? std::string(buf, std::size_t(n)) : (b.argv.empty() ? "" : b.argv[0]);
  b.called = true;
}

/// True once init(argc, argv) has run in this process.
[[nodiscard]] inline bool initialized() {
  std::lock_guard lk(detail::bootstrap().m);
  return detail::bootstrap().called;
}

/// What a policy is asked to start.
struct launch_request {
  std::string_view name;               // the process name (for logs and errors)
  bool daemon = false;
  std::optional<start_method> method;  // as given in process_options
  /// Runs in the child and returns its exit code; the library's child bootstrap
  /// (name, counters, exception report) is already inside it.
  detail::function_ref<int()> child_main;
};

/// What a policy returns: the child's pid and, if it has one, a pidfd for it (the
/// library opens one itself when this is empty).
struct launched_child {
  pid_t pid = -1;
  detail::unique_fd pidfd;
};

/// A start policy: `static launched_child launch(const launch_request&)` starts a
/// child that runs request.child_main() and exits with its result. It must never
/// return in the child.
template <class P>
concept start_policy = requires(const launch_request& r) {
  { P::launch(r) } -> std::same_as<launched_child>;
};

namespace detail {
inline unique_fd try_pidfd_open(pid_t pid) noexcept {
  int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  return unique_fd(fd >= 0 ? fd : -1);  // old kernels: the library falls back to polling
}
}  // namespace detail

/// fork(): the child is a copy of the parent; any callable works. The child gets
/// SIGKILL when the parent dies (forks from non-main threads are done by a long-lived
/// service thread so that the death signal follows the process, not the thread).
struct fork_policy {
  static constexpr start_method method = start_method::fork;
  static constexpr bool available = true;
  static launched_child launch(const launch_request& r) {
    pid_t pid = detail::fork_child_stable(r.child_main);
    return {pid, detail::try_pidfd_open(pid)};
  }
};

/// posix_spawn of this program, entering through init(): not available in this build.
struct spawn_policy {
  static constexpr start_method method = start_method::spawn;
  static constexpr bool available = false;
  [[noreturn]] static launched_child launch(const launch_request&) {
    detail::throw_unavailable(start_method::spawn);
  }
};

/// A clean server forked early by init() forks the children: not available in this build.
struct forkserver_policy {
  static constexpr start_method method = start_method::forkserver;
  static constexpr bool available = false;
  [[noreturn]] static launched_child launch(const launch_request&) {
    detail::throw_unavailable(start_method::forkserver);
  }
};

/// Sets the method used when process_options::method (or pool_options::method) is empty.
inline void set_start_method(start_method m) {
  detail::default_start_method().store(m);
}

[[nodiscard]] inline start_method get_start_method() noexcept {
  return detail::default_start_method().load();
}

/// The methods usable in this build, the default first.
[[nodiscard]] inline std::vector<start_method> get_all_start_methods() {
  std::vector<start_method> v{start_method::fork};
  if constexpr (spawn_policy::available) v.push_back(start_method::spawn);
  if constexpr (forkserver_policy::available) v.push_back(start_method::forkserver);
  return v;
}

/// Chooses at run time: the request's method, else get_start_method().
struct dynamic_policy {
  static launched_child launch(const launch_request& r) {
    switch (r.method.value_or(get_start_method())) {
      case start_method::fork: return fork_policy::launch(r);
      case start_method::spawn: return spawn_policy::launch(r);
      case start_method::forkserver: return forkserver_policy::launch(r);
    }
    throw start_method_error("mproc: unknown start method");
  }
};

static_assert(start_policy<fork_policy> && start_policy<spawn_policy> &&
              start_policy<forkserver_policy> && start_policy<dynamic_policy>);

}  // namespace mproc
