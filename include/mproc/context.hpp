/// \file
/// Start methods and the policies that implement them.
///
/// A start policy turns a "child main" (a callable returning the child's exit code) into
/// a running child process. basic_process<Policy> and the pool are written against the
/// start_policy concept, so the method can be fixed at compile time (fork_policy, ...),
/// chosen at run time (dynamic_policy, which reads process_options::method or the
/// process-wide setting), or supplied by the user.
#pragma once

#include <array>
#include <atomic>
#include <concepts>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <climits>
#include <unistd.h>

#include "detail/posix/fork.hpp"
#include "detail/posix/forkserver.hpp"
#include "detail/posix/spawn.hpp"
#include "detail/posix/forker.hpp"
#include "detail/posix/posix.hpp"
#include "detail/posix/process_calls.hpp"
#include "errors.hpp"

namespace mproc {

/// How a child process starts: see set_start_method() and the start methods guide.
enum class start_method {
  fork,       ///< a copy of the parent (fast; any callable)
  spawn,      ///< a fresh image of this executable, entering through init()
  forkserver  ///< forked by a server started from init(), while single-threaded
};

/// "fork", "spawn" or "forkserver".
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
  std::string name{};                  ///< empty: "Process-N"
  bool daemon = false;                 ///< terminated when the parent exits
  std::optional<start_method> method{};  ///< empty: get_start_method()
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

static_assert(int(start_method::spawn) == start_method_value_spawn &&
              int(start_method::forkserver) == start_method_value_forkserver);

/// What spawn and forkserver re-execute, recorded by init; raises when they cannot be
/// used from this process.
inline std::pair<std::string, std::vector<std::string>> spawn_image(start_method m) {
  bool called;
  std::pair<std::string, std::vector<std::string>> out;
  {
    std::lock_guard lk(bootstrap().m);
    called = bootstrap().called;
    out = {bootstrap().executable, bootstrap().argv};
  }
  check_spawn_allowed(m == start_method::spawn ? "spawn" : "forkserver", called);
  return out;
}

}  // namespace detail

/// What init does besides recording the command line.
struct init_options {
  /// Fork the forkserver now, while the program is single-threaded (it costs one idle
  /// process of about 1 MiB). Off, or when init runs with threads already started, the
  /// first forkserver start spawns the server instead.
  bool start_forkserver = true;
};

/// Records the command line. Call it as the first line of main: it is where children
/// started by spawn enter (there it runs the child's work and never returns), and
/// where the forkserver is forked from, while the program is still single-threaded.
/// With fork it only records what it needs and returns.
inline void init(int argc, char** argv, init_options options = {}) {
  auto& b = detail::bootstrap();
  {
    std::lock_guard lk(b.m);
    b.argv.clear();
    for (int i = 0; i < argc && argv && argv[i]; ++i) b.argv.emplace_back(argv[i]);
    b.executable = detail::own_executable();
    if (b.executable.empty() && !b.argv.empty()) b.executable = b.argv[0];
    b.called = true;
  }
  // A child started by spawn runs its work here and exits.
  detail::enter_if_spawned();
  if (options.start_forkserver) detail::forkserver_start_from_init();
}

/// True once init(argc, argv) has run in this process.
[[nodiscard]] inline bool initialized() {
  std::lock_guard lk(detail::bootstrap().m);
  return detail::bootstrap().called;
}

/// What a policy is asked to start.
struct launch_request {
  std::string_view name;               ///< the process name (for logs and errors)
  bool daemon = false;  ///< started as a daemon (terminated when its parent exits)
  std::optional<start_method> method;  ///< as given in process_options
  /// Runs in the child and returns its exit code; the library's child bootstrap
  /// (name, counters, exception report) is already inside it. Used by fork.
  detail::function_ref<int()> child_main;
  /// The same work in a form another program image can run (spawn, forkserver): a
  /// function of this executable, named by its code offset, called in the child as
  /// entry(payload, fds) with a copy of payload and the descriptors fds (received as
  /// new descriptors; the entry owns them). Null when the work is only a closure.
  detail::entry_fn entry = nullptr;
  /// Bytes entry receives (a copy of them, in the child).
  std::span<const std::byte> payload{};
  /// Descriptors entry receives as new descriptors of its own.
  std::span<const int> fds{};
};

namespace detail {
/// A spawn whose image is starting up, with the work it is to be handed: a copy of the
/// payload, and the descriptors by number (the caller keeps them open until confirmed).
struct deferred_spawn {
  spawn_start start;
  entry_fn entry = nullptr;
  std::vector<std::byte> payload;
  std::vector<int> fds;
};
}  // namespace detail

/// What a policy returns: the child's pid and, if it has one, a pidfd for it (the
/// library opens one itself when this is empty).
struct launched_child {
  pid_t pid = -1;  ///< the child's process id
  detail::unique_fd pidfd;  ///< a pidfd for the child, or empty
  /// For a child that is not this process's own (forkserver): a socket on which its
  /// exit code (int32) arrives when it is reaped. Empty for direct children.
  detail::unique_fd status{};
  /// Set by a deferred launch (see launch_deferred): the fresh image is starting up and
  /// has not yet received its work; confirm_launch() completes it. Dropped before that,
  /// the child is killed and reaped.
  std::unique_ptr<detail::deferred_spawn> unconfirmed{};
};

/// A start policy: `static launched_child launch(const launch_request&)` starts a
/// child that runs request.child_main() and exits with its result. It must never
/// return in the child.
template <class P>
concept start_policy = requires(const launch_request& r) {
  { P::launch(r) } -> std::same_as<launched_child>;
};

/// fork(): the child is a copy of the parent; any callable works. The child gets
/// SIGKILL when the parent dies (forks from non-main threads are done by a long-lived
/// service thread so that the death signal follows the process, not the thread).
struct fork_policy {
  /// The method this policy implements.
  static constexpr start_method method = start_method::fork;
  /// Whether it can be used in this build.
  static constexpr bool available = true;
  /// Starts a child running `r.child_main()` (fork).
  static launched_child launch(const launch_request& r) {
    pid_t pid = detail::fork_child_stable(r.child_main);
    return {pid, {}};  // the caller opens a pidfd if and when it needs one
  }
};

namespace detail {
[[noreturn]] inline void throw_closure_only(start_method m) {
  throw start_method_error(
      std::string("mproc: the '") + to_string(m) +
      "' start method runs the child in a fresh program image that shares no memory with this "
      "process; this launch request has only a closure (no entry point and payload). A Process "
      "target must be a portable callable (free function, captureless lambda, stateless or "
      "serializable function object) callable with its arguments as they arrive there "
      "(serializable values, C strings as std::string, or handles); otherwise use "
      "start_method::fork");
}
}  // namespace detail

/// posix_spawn of this program's executable with the same argv; the child enters
/// through init(argc, argv) and runs request.entry(payload, fds). Needs init as the
/// first line of main.
struct spawn_policy {
  /// The method this policy implements.
  static constexpr start_method method = start_method::spawn;
  /// Whether it can be used in this build.
  static constexpr bool available = true;
  /// Starts a fresh image of this executable that runs `r.entry(r.payload, r.fds)`.
  static launched_child launch(const launch_request& r) {
    if (!r.entry) detail::throw_closure_only(method);
    detail::check_spawn_request_size(r.payload.size(), r.fds.size(), "spawn");
    // Not a structured binding: clang 14 cannot capture those in the lambda.
    const auto image = detail::spawn_image(method);
    detail::spawn_start s;
    detail::run_on_stable_thread([&] { s = detail::spawn_begin(image.first, image.second); });
    // The payload goes straight from the request (a deferred launch keeps a copy).
    detail::spawned c = detail::spawn_finish(s, r.entry, r.payload, r.fds);
    return {c.pid, std::move(c.pidfd), {}};
  }
  /// As launch(), but returns while the image is still starting up (exec, dynamic
  /// linking, static initialisation: milliseconds); confirm_launch() hands it its work.
  /// Starting several children this way and then confirming each overlaps their
  /// start-ups. The descriptors `r.fds` must stay open until then.
  static launched_child launch_deferred(const launch_request& r) {
    if (!r.entry) detail::throw_closure_only(method);
    detail::check_spawn_request_size(r.payload.size(), r.fds.size(), "spawn");
    // Not a structured binding: clang 14 cannot capture those in the lambda.
    const auto image = detail::spawn_image(method);
    auto d = std::make_unique<detail::deferred_spawn>();
    d->entry = r.entry;
    d->payload.assign(r.payload.begin(), r.payload.end());
    d->fds.assign(r.fds.begin(), r.fds.end());
    detail::run_on_stable_thread([&] { d->start = detail::spawn_begin(image.first, image.second); });
    launched_child c{d->start.pid, std::move(d->start.pidfd), {}};
    c.unconfirmed = std::move(d);
    return c;
  }
  /// Completes a launch_deferred() child: waits until it has entered init and sends it
  /// its work. On failure the child is killed and reaped, and start_method_error raised.
  static void confirm_launch(launched_child& c) {
    if (!c.unconfirmed) return;
    const std::unique_ptr<detail::deferred_spawn> d = std::move(c.unconfirmed);
    (void)detail::spawn_finish(d->start, d->entry, d->payload, d->fds);
  }
};

/// A small single-threaded server, forked from init (or spawned on first use when init
/// ran with threads started), forks each child over an authenticated Unix socket; the
/// child runs request.entry(payload, fds). The child is the server's: its exit code
/// arrives over launched_child::status.
struct forkserver_policy {
  /// The method this policy implements.
  static constexpr start_method method = start_method::forkserver;
  /// Whether it can be used in this build.
  static constexpr bool available = true;
  /// Asks the forkserver for a child that runs `r.entry(r.payload, r.fds)`.
  static launched_child launch(const launch_request& r) {
    if (!r.entry) detail::throw_closure_only(method);
    auto [exe, args] = detail::spawn_image(method);
    detail::forkserver_child c = detail::forkserver_launch(exe, args, r.entry, r.payload, r.fds);
    return {c.pid, std::move(c.pidfd), std::move(c.status)};
  }
};

/// Sets the method used when process_options::method (or pool_options::method) is empty.
inline void set_start_method(start_method m) {
  detail::default_start_method_value().store(int(m));
}

/// The method used when no option names one (fork unless set_start_method() changed it).
[[nodiscard]] inline start_method get_start_method() noexcept {
  return static_cast<start_method>(detail::default_start_method_value().load());
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
  /// Starts the child with the policy of `r.method`, or of get_start_method() when unset.
  static launched_child launch(const launch_request& r) {
    switch (r.method.value_or(get_start_method())) {
      case start_method::fork: return fork_policy::launch(r);
      case start_method::spawn: return spawn_policy::launch(r);
      case start_method::forkserver: return forkserver_policy::launch(r);
    }
    throw start_method_error("mproc: unknown start method");
  }
  /// As launch(); a spawn returns still starting up (see spawn_policy::launch_deferred).
  static launched_child launch_deferred(const launch_request& r) {
    if (r.method.value_or(get_start_method()) == start_method::spawn) return spawn_policy::launch_deferred(r);
    return launch(r);
  }
  /// Completes a launch_deferred() child (nothing to do unless it was a spawn).
  static void confirm_launch(launched_child& c) { spawn_policy::confirm_launch(c); }
};

namespace detail {
/// Policy::launch_deferred where the policy has one (its children start up together),
/// Policy::launch otherwise.
template <class Policy>
launched_child launch_deferred(const launch_request& r) {
  if constexpr (requires { Policy::launch_deferred(r); })
    return Policy::launch_deferred(r);
  else
    return Policy::launch(r);
}
/// Completes a child from detail::launch_deferred<Policy> (see spawn_policy::confirm_launch).
template <class Policy>
void confirm_launch(launched_child& c) {
  if constexpr (requires { Policy::confirm_launch(c); }) Policy::confirm_launch(c);
}
}  // namespace detail

static_assert(start_policy<fork_policy> && start_policy<spawn_policy> &&
              start_policy<forkserver_policy> && start_policy<dynamic_policy>);

}  // namespace mproc
