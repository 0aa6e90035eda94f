// The bodies of process.hpp's process registry and child bookkeeping: included by it in
// the header-only mode, compiled once by src/mproc.cpp otherwise (see MPROC_FUNC).
#pragma once

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include <cxxabi.h>

#include "log.hpp"
#include "posix/fork.hpp"
#include "posix/fork_hooks.hpp"
#include "posix/process_calls.hpp"
#include "posix/sockets.hpp"
#include "process_registry.hpp"

namespace mproc::detail {

MPROC_FUNC process_globals& process_registry() {
  static process_globals* g = new process_globals;  // leaked: needed by the exit handler
  return *g;
}

// fork() copies the registry of the parent; none of those children belong to the new
// process. The registry lock is taken around every fork so the copy is consistent.
MPROC_FUNC void registry_before_fork() noexcept { process_registry().m.lock(); }
MPROC_FUNC void registry_after_fork_parent() noexcept { process_registry().m.unlock(); }
MPROC_FUNC void registry_after_fork_child() noexcept {
  auto& g = process_registry();
  // The forking thread took it in registry_before_fork and is this child's thread:
  // unlocking it (rather than constructing a fresh one) is what ThreadSanitizer
  // can follow, and just as valid.
  g.m.unlock();
  for (auto& c : g.children) {
    close_fd(c->pidfd.exchange(-1));
    close_fd(c->status_fd.exchange(-1));
  }
  g.children.clear();
  g.counter = 0;
  g.parent = parent_record{g.self_pid, process_name_storage()};
  close_fd(g.parent_fd);
  g.parent_fd = -1;
  g.parent_is_ppid = true;
  g.self_pid = current_pid();
}

MPROC_FUNC const int registry_atfork_registered = [] {
  process_registry();
  return set_fork_hook(fork_hook_slot::process_registry,
                       {&registry_before_fork, &registry_after_fork_parent, &registry_after_fork_child});
}();

MPROC_FUNC std::string identity_suffix(const std::vector<int>& id) {
  std::string s;
  for (std::size_t i = 0; i < id.size(); ++i) {
    if (i) s += ':';
    s += std::to_string(id[i]);
  }
  return s;
}

MPROC_FUNC std::vector<int> next_process_identity() {
  auto& g = process_registry();
  std::lock_guard lk(g.m);
  std::vector<int> id = g.identity;
  id.push_back(++g.counter);
  return id;
}

MPROC_FUNC void unregister_child(const process_state* s) {
  auto& g = process_registry();
  std::lock_guard lk(g.m);
  std::erase_if(g.children, [&](const auto& c) { return c.get() == s; });
}

MPROC_FUNC void log_exit(const process_state& s) {
  if (s.lost) {
    log(log_level::warning, "%s (pid %d) was reaped elsewhere; its exit code is lost",
        s.name.c_str(), int(s.pid));
  } else if (*s.exitcode < 0) {
    log(log_level::info, "%s (pid %d) was killed by signal %d (%s)", s.name.c_str(), int(s.pid),
        -*s.exitcode, ::strsignal(-*s.exitcode));
  } else {
    log(log_level::info, "%s (pid %d) exited with exitcode %d", s.name.c_str(), int(s.pid),
        *s.exitcode);
  }
}

MPROC_FUNC bool reap_nohang(process_state& s) {
  {
    std::lock_guard lk(s.m);
    if (s.finished()) return true;
    if (int sfd = s.status_fd.load(); sfd >= 0) {
      // Not our child: it, or the server when it reaps it, sends the exit code.
      if (!s.reported_code) {
        std::int32_t code = 0;
        ssize_t n = recv_eintr(sfd, &code, sizeof code, MSG_DONTWAIT | MSG_WAITALL);
        if (n < 0) {
          if (errno == EAGAIN || errno == EWOULDBLOCK) return false;
          throw_errno("recv(exit status)");
        }
        if (n == sizeof code) {
          s.reported_code = code;
          s.code_reported.store(true);
        } else {
          s.lost = true;  // it and its server ended without reporting
        }
      }
      if (s.reported_code) {
        // Finished once it has really exited (its code may come just before).
        if (int pfd = s.pidfd.load(); pfd >= 0 && !readable_now(pfd)) return false;
        s.exitcode = *s.reported_code;
      }
      // Left open: it is readable from now on, a valid sentinel until close().
    } else {
      int status = 0;
      pid_t rc = waitpid_eintr(s.pid, &status, WNOHANG);
      if (rc == 0) return false;
      if (rc == s.pid) {
        s.exitcode = exitcode_from_status(status);
      } else if (errno == ECHILD) {
        s.lost = true;
      } else {
        throw_errno("waitpid");
      }
    }
  }
  unregister_child(&s);
  log_exit(s);
  return true;
}

MPROC_FUNC int ensure_pidfd(process_state& s) {
  std::lock_guard lk(s.m);
  int fd = s.pidfd.load();
  if (fd < 0 && !s.finished() && s.status_fd.load() < 0) {
    fd = try_pidfd_open(s.pid).release();
    s.pidfd.store(fd);
  }
  return fd;
}

MPROC_FUNC int sentinel_fd(process_state& s) {
  {
    std::lock_guard lk(s.m);
    if (int fd = s.pidfd.load(); fd >= 0) return fd;
    if (s.finished()) {
      int fd = make_eventfd(1, EFD_CLOEXEC, "eventfd(sentinel)").release();
      s.pidfd.store(fd);
      return fd;
    }
    if (int sfd = s.status_fd.load(); sfd >= 0) return sfd;
  }
  return ensure_pidfd(s);
}

MPROC_FUNC void release_fds(process_state& s) noexcept {
  std::lock_guard lk(s.m);
  for (auto* a : {&s.pidfd, &s.status_fd}) close_fd(a->exchange(-1));
}

MPROC_FUNC bool wait_child(process_state& s, std::int64_t timeout_ns) {
  // A timeout too long to add to the clock (hours::max()) means no deadline.
  const std::int64_t deadline = deadline_after(timeout_ns);
  std::int64_t backoff_ns = 1'000'000;
  // No deadline and our own child: one blocking waitid (WNOWAIT leaves it to be
  // reaped below, under the state's lock) instead of a poll between two waitpids.
  if (deadline < 0 && s.status_fd.load() < 0) {
    wait_exited_unreaped(s.pid);
  }
  for (;;) {
    if (reap_nohang(s)) return true;
    const std::int64_t left = ns_left(deadline);  // -1: no deadline
    if (left == 0) return false;
    int fd = s.status_fd.load();
    if (fd < 0) fd = ensure_pidfd(s);
    else if (s.code_reported.load() && s.pidfd.load() >= 0) fd = s.pidfd.load();
    if (fd >= 0) {
      pollfd p{fd, POLLIN, 0};
      if (poll_until(&p, 1, deadline) == -1) throw_errno("ppoll(pidfd)");
    } else {
      // No pidfd (kernel before 5.3): poll waitpid with a growing sleep.
      sleep_ns(left >= 0 ? std::min(left, backoff_ns) : backoff_ns);
      backoff_ns = std::min<std::int64_t>(backoff_ns * 2, 50'000'000);
    }
  }
}

MPROC_FUNC void signal_child(process_state& s, int sig) {
  std::lock_guard lk(s.m);
  if (s.finished()) return;
  signal_process(s.pidfd.load(), s.pid, sig);
}

MPROC_FUNC std::vector<std::shared_ptr<process_state>> children_snapshot() {
  auto& g = process_registry();
  std::lock_guard lk(g.m);
  return g.children;
}

MPROC_FUNC void reap_finished(bool only_abandoned) {
  std::vector<std::shared_ptr<process_state>> todo;
  {
    auto& g = process_registry();
    std::lock_guard lk(g.m);
    for (auto& c : g.children)
      if (!only_abandoned || c.use_count() == 1) todo.push_back(c);
  }
  for (auto& c : todo) reap_nohang(*c);
}

MPROC_FUNC void join_children_at_exit() noexcept {
  try {
    auto kids = children_snapshot();
    for (auto& c : kids)
      if (c->daemon) {
        log(log_level::info, "terminating daemon child %s (pid %d)", c->name.c_str(), int(c->pid));
        signal_child(*c, SIGTERM);
      }
    for (auto& c : kids) {
      if (c->daemon) {
        if (!wait_child(*c, 1'000'000'000)) {
          signal_child(*c, SIGKILL);
          wait_child(*c, -1);
        }
      } else {
        if (!c->finished())
          log(log_level::info, "joining child %s (pid %d)", c->name.c_str(), int(c->pid));
        wait_child(*c, -1);
      }
    }
  } catch (...) {
    // exit must go on; a failure here means the children are already gone
  }
}

MPROC_FUNC void exit_handler() noexcept {
  // Only the process that registered the handler owns the registry's children; a
  // child that calls exit() has its own registry (cleared at fork).
  join_children_at_exit();
}

MPROC_FUNC void ensure_exit_handler() {
  auto& g = process_registry();
  if (!g.exit_handler_registered.exchange(true)) {
    // Statics the handler uses must be constructed before it is registered, so that
    // they are destroyed after it runs.
    (void)process_name_storage();
    std::atexit(&exit_handler);
  }
}

// ---- child side

MPROC_FUNC void enter_child(const std::string& name, std::vector<int> identity, bool daemon) {
  process_name_storage() = name;
  auto& g = process_registry();
  std::lock_guard lk(g.m);
  g.identity = std::move(identity);
  g.counter = 0;
  g.daemon = daemon;
}

MPROC_FUNC void child_exit_hook(int status, void*) {
  join_children_at_exit();
  log(log_level::info, "process exiting with exitcode %d", status);
  flush_all_output();
  exit_now(status);
}

MPROC_FUNC void report_uncaught(const std::string& name) noexcept {
  std::string msg = "Process " + name + ":\n";
  const std::type_info* t = abi::__cxa_current_exception_type();
  std::string type = "unknown exception";
  if (t) {
    int st = 0;
    std::unique_ptr<char, void (*)(void*)> d(abi::__cxa_demangle(t->name(), nullptr, nullptr, &st),
                                             std::free);
    type = st == 0 && d ? d.get() : t->name();
  }
  std::string what;
  try {
    throw;
  } catch (const std::exception& e) {
    what = e.what();
  } catch (...) {
  }
  msg += type;
  if (!what.empty()) msg += ": " + what;
  msg += '\n';
  flush_all_output();
  write_fully(2, msg.data(), msg.size());
}

}  // namespace mproc::detail
