/// \file
/// mproc::Process: run a callable in a child process (Python's multiprocessing.Process).
///
/// Every started child is kept in a per-process registry until it is reaped, so a
/// Process object may be destroyed while its child runs: the child is reaped later
/// (on later starts, by active_children(), and at exit, where daemon children are
/// terminated and the others joined, as in Python). Children are waited for through a
/// pidfd, so join(timeout) sleeps in the kernel and signals go to the right process
/// even if its pid could be reused.
#pragma once

#include <algorithm>
#include <climits>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include <cxxabi.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "context.hpp"
#include "detail/callable.hpp"
#include "detail/handle_passing.hpp"
#include "detail/posix/tracker.hpp"
#include "detail/log.hpp"
#include "detail/posix/fork.hpp"
#include "detail/posix/posix.hpp"
#include "detail/posix/process_calls.hpp"
#include "detail/process_registry.hpp"
#include "detail/posix/sockets.hpp"
#include "errors.hpp"
#include "version.hpp"

namespace mproc {

/// What current_process() / parent_process() / active_children() report.
struct process_info {
  pid_t pid = 0;  ///< the process id
  std::string name;  ///< the process name ("MainProcess", "Process-N", "PoolWorker-N", ...)
};

namespace detail {

struct target_base {
  virtual ~target_base() = default;
  virtual void run() = 0;
  /// For spawn/forkserver: the entry that rebuilds this target in a fresh program
  /// image, null when the target cannot cross (a closure, unserializable arguments).
  [[nodiscard]] virtual entry_fn entry() const noexcept { return nullptr; }
  /// Writes the callable and the arguments for entry(); handles add descriptors.
  virtual void encode_portable(vector_writer&, fd_collector&) const {}
};

template <class F, class... Args>
int process_entry(std::span<const std::byte> payload, std::span<const int> fds);

/// Whether target(args...) can be rebuilt in another program image.
template <class F, class... Args>
inline constexpr bool portable_target = [] {
  if constexpr (portable_callable<F> && (spawn_passable<Args> && ...))
    return std::is_invocable_v<F&, spawn_arg_t<Args>&...>;
  else
    return false;
}();

template <class F, class... Args>
struct target_impl final : target_base {
  F f;
  std::tuple<Args...> args;
  template <class FF, class... AA>
  explicit target_impl(FF&& ff, AA&&... aa) : f(std::forward<FF>(ff)), args(std::forward<AA>(aa)...) {}
  // The target runs once per child: arguments go in as lvalues (so `T&` parameters
  // bind), or as rvalues when only that works (move-only arguments taken by value).
  void run() override {
    if constexpr (std::is_invocable_v<F&, Args&...>)
      std::apply([this](auto&... a) { std::invoke(f, a...); }, args);
    else
      std::apply([this](auto&... a) { std::invoke(std::move(f), std::move(a)...); }, args);
  }
  [[nodiscard]] entry_fn entry() const noexcept override {
    if constexpr (portable_target<F, Args...>) return &process_entry<F, Args...>;
    else return nullptr;
  }
  void encode_portable(vector_writer& w, fd_collector& c) const override {
    if constexpr (portable_target<F, Args...>) {
      encode_callable(w, f);
      std::apply([&](const auto&... a) { (encode_spawn_arg(w, c, a), ...); }, args);
    }
  }
};

template <class F, class... Args>
concept process_target = std::is_invocable_v<std::decay_t<F>&, std::decay_t<Args>&...> ||
                         std::is_invocable_v<std::decay_t<F>, std::decay_t<Args>...>;

/// The body of every Process child: set up the child's state, run the target, join
/// the child's own children, and return the Python-style exit code.
inline int run_child(const std::string& name, const std::vector<int>& identity, bool daemon,
                     target_base& target) {
  enter_child(name, identity, daemon);
  at_exit_with_status(&child_exit_hook, nullptr);
  log(log_level::info, "child process calling target");
  int code = 0;
  try {
    target.run();
  } catch (...) {
    report_uncaught(name);
    code = 1;
  }
  join_children_at_exit();
  log(log_level::info, "process exiting with exitcode %d", code);
  return code;
}

/// What a spawn/forkserver child of a Process runs (through init): rebuild the
/// library's per-process state, the target and its arguments (handles adopt the
/// received descriptors), then run it like a forked child would.
template <class F, class... Args>
int process_entry(std::span<const std::byte> payload, std::span<const int> fds) {
  reader r{payload.data(), payload.data() + payload.size()};
  std::string name, parent_name;
  std::vector<int> identity;
  bool daemon = false;
  std::int32_t parent_pid = 0;
  decode(r, name);
  decode(r, identity);
  decode(r, daemon);
  decode(r, parent_pid);
  decode(r, parent_name);
  std::int32_t parent_fd = -1;
  decode(r, parent_fd);
  std::int32_t tracker_fd = -1, tracker_pid = -1;
  decode(r, tracker_fd);
  decode(r, tracker_pid);
  if (tracker_fd >= 0)
    resource_tracker::instance().adopt_fd(dup_received(fds, std::uint32_t(tracker_fd)).release(),
                                          pid_t(tracker_pid));
  {
    auto& g = process_registry();
    std::lock_guard lk(g.m);
    g.parent = parent_record{pid_t(parent_pid), parent_name};
    close_fd(g.parent_fd);
    g.parent_fd = parent_fd >= 0 ? dup_received(fds, std::uint32_t(parent_fd)).release() : -1;
    g.parent_is_ppid = detail::parent_pid() == pid_t(parent_pid);
    g.self_pid = current_pid();
  }
  F f = decode_callable<F>(r);
  // Braces: the arguments are decoded left to right.
  target_impl<F, spawn_arg_t<Args>...> target{std::move(f), decode_spawn_arg<Args>(r, fds)...};
  for (int fd : fds) close_fd(fd);  // the handles hold their own duplicates
  return run_child(name, identity, daemon, target);
}

}  // namespace detail

/// A child process running `target(args...)`. Arguments are copied into the child as
/// they are (with fork, handles such as Value, Lock, Queue, Connection and
/// SharedMemory are the same objects there). Movable, not copyable; used from one
/// thread at a time.
template <start_policy Policy>
class basic_process {
 public:
  /// A process that will run `target(args...)`, with default options.
  template <class F, class... Args>
    requires detail::process_target<F, Args...>
  explicit basic_process(F&& target, Args&&... args)
      : basic_process(process_options{}, std::forward<F>(target), std::forward<Args>(args)...) {}

  /// A process with `options` (name, daemon, start method) that will run `target(args...)`.
  template <class F, class... Args>
    requires detail::process_target<F, Args...>
  basic_process(process_options options, F&& target, Args&&... args)
      : options_(std::move(options)),
        target_(std::make_unique<detail::target_impl<std::decay_t<F>, std::decay_t<Args>...>>(
            std::forward<F>(target), std::forward<Args>(args)...)),
        identity_(detail::next_process_identity()) {
    name_ = options_.name.empty() ? "Process-" + detail::identity_suffix(identity_) : options_.name;
    if constexpr (std::is_same_v<Policy, spawn_policy> || std::is_same_v<Policy, forkserver_policy>) {
      detail::require_portable_callable<std::decay_t<F>>();
      static_assert((detail::spawn_passable<std::decay_t<Args>> && ...),
                    "mproc: with spawn/forkserver every Process argument must be serializable or "
                    "a handle (Value, Array, RawValue, RawArray, Lock, RLock, Semaphore, "
                    "BoundedSemaphore, Event, Condition, Barrier, Connection, SharedMemory, "
                    "Queue, JoinableQueue, SimpleQueue)");
    }
  }

  /// Moves the child's handle; the moved-from object is empty.
  basic_process(basic_process&&) noexcept = default;
  /// Moves the child's handle; the moved-from object is empty.
  basic_process& operator=(basic_process&&) noexcept = default;
  basic_process(const basic_process&) = delete;
  basic_process& operator=(const basic_process&) = delete;
  // A child still running is left in the registry and reaped later.
  ~basic_process() = default;

  /// Starts the child. Raises state_error if already started or closed, and
  /// start_method_error if the policy's start method cannot be used.
  void start() {
    check_usable("start");
    if (state_) throw state_error("mproc: cannot start process '" + name_ + "' twice");
    detail::reap_finished(/*only_abandoned=*/true);
    detail::ensure_exit_handler();
    // Everything the parent needs is allocated before fork(): pages the parent writes
    // while the child still shares them are copied (copy-on-write).
    auto st = std::make_shared<detail::process_state>();
    st->owner = detail::current_pid();
    st->name = name_;
    st->daemon = options_.daemon;
    auto& g = detail::process_registry();
    {
      std::lock_guard lk(g.m);
      g.children.reserve(g.children.size() + 1);
    }
    auto child_main = [this]() -> int {
      return detail::run_child(name_, identity_, options_.daemon, *target_);
    };
    launch_request req{name_, options_.daemon, options_.method, child_main};
    // The work in a form a fresh program image can run, unless fork is certain.
    std::vector<std::byte> payload;
    detail::fd_collector fds;
    detail::unique_fd self_pidfd;
    bool portable_needed = !std::is_same_v<Policy, fork_policy>;
    if constexpr (std::is_same_v<Policy, dynamic_policy>)
      portable_needed = options_.method.value_or(get_start_method()) != start_method::fork;
    if (portable_needed && target_->entry()) {
      detail::vector_writer w{&payload};
      std::int32_t self = detail::current_pid();
      std::string self_name = detail::process_name_storage();
      detail::encode(w, name_);
      detail::encode(w, identity_);
      detail::encode(w, options_.daemon);
      detail::encode(w, self);
      detail::encode(w, self_name);
      // A pidfd of this process: the child's parent_process() watches it (a forkserver
      // child's real parent is the server).
      self_pidfd = detail::try_pidfd_open(self);
      std::int32_t parent_index = self_pidfd ? std::int32_t(fds.add(self_pidfd.get())) : -1;
      detail::encode(w, parent_index);
      // The child shares the program's resource tracker, as a forked child does; it is
      // started now (as Python does for spawn), or a segment the child creates would be
      // tracked by a tracker of the child's own and removed when the child exits.
      detail::resource_tracker::instance().ensure_running();
      auto [tracker_fd, tracker_pid] = detail::resource_tracker::instance().running();
      std::int32_t tracker_index = tracker_fd >= 0 ? std::int32_t(fds.add(tracker_fd)) : -1;
      detail::encode(w, tracker_index);
      detail::encode(w, std::int32_t(tracker_pid));
      target_->encode_portable(w, fds);
      req.entry = target_->entry();
      req.payload = payload;
      req.fds = fds.fds;
    }
    launched_child child = Policy::launch(req);
    st->pid = child.pid;
    if (child.status) st->status_fd.store(child.status.release());
    if (child.pidfd) st->pidfd.store(child.pidfd.release());  // else opened when needed
    {
      std::lock_guard lk(g.m);
      g.children.push_back(st);
    }
    state_ = std::move(st);
    // As Python: the parent drops its copy of the target and arguments, so handles
    // passed to the child (a Pipe end, say) are no longer held open by this object.
    target_.reset();
    detail::log(log_level::info, "started %s (pid %d)", name_.c_str(), int(child.pid));
  }

  /// Waits for the child to exit.
  void join() {
    check_started("join");
    detail::wait_child(*state_, -1);
  }

  /// Waits at most `timeout`; true when the child has exited.
  template <class Rep, class Period>
  bool join(std::chrono::duration<Rep, Period> timeout) {
    check_started("join");
    return detail::wait_child(*state_, detail::to_ns(timeout));
  }

  /// True between start() and the child's exit (reaps it when it has exited).
  [[nodiscard]] bool is_alive() {
    check_usable("is_alive");
    if (!state_) return false;
    check_owner("is_alive");
    return !detail::reap_nohang(*state_);
  }

  /// The child's pid (raises state_error before start()).
  [[nodiscard]] pid_t pid() const {
    check_usable("pid");
    if (!state_) throw state_error("mproc: process '" + name_ + "' has not been started");
    return state_->pid;
  }

  /// The name given in process_options, or "Process-N".
  [[nodiscard]] const std::string& name() const noexcept { return name_; }
  /// Renames the process (as seen by the parent; the child keeps the name it started with).
  void set_name(std::string name) { name_ = std::move(name); }
  /// Whether the child is terminated when the parent exits.
  [[nodiscard]] bool daemon() const noexcept { return options_.daemon; }
  /// Sets daemon(); raises state_error once started.
  void set_daemon(bool d) {
    if (state_) throw state_error("mproc: cannot set daemon on a started process");
    options_.daemon = d;
  }

  /// 0 after a normal return, N after std::exit(N), 1 after an uncaught exception,
  /// -signum when killed; empty while running or before start().
  [[nodiscard]] std::optional<int> exitcode() {
    check_usable("exitcode");
    if (!state_) return std::nullopt;
    check_owner("exitcode");
    detail::reap_nohang(*state_);
    std::lock_guard lk(state_->m);
    return state_->exitcode;
  }

  /// A descriptor that becomes readable when the child exits (a pidfd), for poll or
  /// select; owned by this object and valid until close() or destruction, also
  /// after join().
  [[nodiscard]] int sentinel() const {
    check_started("sentinel");
    return detail::sentinel_fd(*state_);
  }

  /// SIGTERM (a no-op once the child has been reaped).
  void terminate() { send(SIGTERM, "terminate"); }
  /// SIGKILL.
  void kill() { send(SIGKILL, "kill"); }

  /// Releases the process's resources; raises state_error if the child still runs.
  void close() {
    if (closed_) return;
    if (state_) {
      check_owner("close");
      if (!detail::reap_nohang(*state_))
        throw state_error("mproc: cannot close process '" + name_ +
                          "' while it is still running; join() or terminate() it first");
      detail::release_fds(*state_);
    }
    target_.reset();
    closed_ = true;
  }

 private:
  void check_usable(const char* what) const {
    if (closed_)
      throw state_error(std::string("mproc: ") + what + "() on closed process '" + name_ + "'");
    if (!state_ && !target_)
      throw state_error(std::string("mproc: ") + what + "() on a moved-from process");
  }
  void check_owner(const char* what) const {
    if (state_->owner != detail::current_pid())
      throw state_error(std::string("mproc: ") + what + "(): process '" + name_ +
                        "' is not a child of this process");
  }
  void check_started(const char* what) const {
    check_usable(what);
    if (!state_)
      throw state_error(std::string("mproc: ") + what + "() before start() on process '" + name_ +
                        "'");
    check_owner(what);
  }
  void send(int sig, const char* what) {
    check_started(what);
    detail::log(log_level::info, "sending %s to %s (pid %d)", ::sigabbrev_np(sig), name_.c_str(),
                int(state_->pid));
    detail::signal_child(*state_, sig);
  }

  process_options options_;
  std::unique_ptr<detail::target_base> target_;
  std::vector<int> identity_;
  std::string name_;
  std::shared_ptr<detail::process_state> state_;
  bool closed_ = false;
};

/// The process most programs use: its start method is process_options::method, else
/// get_start_method(). See basic_process.
using Process = basic_process<dynamic_policy>;

/// This process: pid and name ("MainProcess" in the main process).
[[nodiscard]] inline process_info current_process() {
  return {detail::current_pid(), detail::process_name_storage()};
}

namespace detail {

/// A descriptor that becomes readable when this process's parent ends (-1: no parent,
/// or no pidfd support). Opened on first need and kept for the process's lifetime.
inline int parent_sentinel() {
  auto& g = process_registry();
  std::lock_guard lk(g.m);
  if (!g.parent) return -1;
  if (g.parent_fd >= 0) return g.parent_fd;
  int fd = try_pidfd_open(g.parent->pid).release();
  // Still our parent after the pidfd was opened: it is that process, alive then. A
  // process that was reparented has lost its parent (its pid may be reused since).
  if (g.parent_is_ppid && parent_pid() != g.parent->pid) {
    close_fd(fd);
    fd = make_eventfd(1, EFD_CLOEXEC, "eventfd(parent sentinel)").release();
  }
  g.parent_fd = fd;
  return fd;
}

/// Waits up to timeout_ns (-1: forever) for the parent to end; true when it has.
inline bool wait_parent(std::int64_t timeout_ns) {
  const int fd = parent_sentinel();
  const deadline_t deadline = deadline_after(timeout_ns);
  pid_t pid;
  bool is_ppid;
  {
    auto& g = process_registry();
    std::lock_guard lk(g.m);
    if (!g.parent) return true;
    pid = g.parent->pid;
    is_ppid = g.parent_is_ppid;
  }
  for (;;) {
    const std::int64_t left = ns_left(deadline);  // -1: no deadline
    if (fd >= 0) {
      pollfd p{fd, POLLIN, 0};
      const int rc = poll_until(&p, 1, deadline);
      if (rc < 0) throw_errno("ppoll(parent sentinel)");
      return rc > 0;
    }
    // No pidfd (kernel before 5.3): check now and then.
    if (is_ppid ? parent_pid() != pid : !pid_exists(pid)) return true;
    if (left == 0) return false;
    sleep_ns(left >= 0 ? std::min<std::int64_t>(left, 10'000'000) : 10'000'000);
  }
}

}  // namespace detail

/// What parent_process() returns (Python's parent_process()): the parent's pid and
/// name, and whether it still runs. Also for a parent that is not the real parent (a
/// forkserver child's parent is the process that asked for it).
struct parent_process_info : process_info {
  /// True while the parent runs.
  [[nodiscard]] bool is_alive() const { return !detail::wait_parent(0); }
  /// Waits for the parent to end.
  void join() const { (void)detail::wait_parent(-1); }
  /// Waits at most `timeout` for the parent to end; true when it has.
  template <class Rep, class Period>
  bool join(std::chrono::duration<Rep, Period> timeout) const {
    return detail::wait_parent(detail::to_ns(timeout));
  }
};

/// The process that started this one; empty in the main process.
[[nodiscard]] inline std::optional<parent_process_info> parent_process() {
  auto& g = detail::process_registry();
  std::lock_guard lk(g.m);
  if (!g.parent) return std::nullopt;
  parent_process_info out;
  out.pid = g.parent->pid;
  out.name = g.parent->name;
  return out;
}

/// Children of this process that are still running (finished ones are reaped).
[[nodiscard]] inline std::vector<process_info> active_children() {
  detail::reap_finished();
  std::vector<process_info> out;
  for (auto& c : detail::children_snapshot()) {
    std::lock_guard lk(c->m);
    if (!c->finished()) out.push_back({c->pid, c->name});
  }
  return out;
}

/// CPUs this process may run on (sched_getaffinity), at least 1.
[[nodiscard]] inline int cpu_count() noexcept {
  if (int n = detail::affinity_cpu_count(); n > 0) return n;
  unsigned h = std::thread::hardware_concurrency();
  return h ? int(h) : 1;
}

}  // namespace mproc

#if MPROC_HEADER_ONLY
#include "detail/process_impl.hpp"
#endif
