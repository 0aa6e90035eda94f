// The bodies of tracker.hpp: included by it in the header-only mode, compiled once by
// src/mproc.cpp otherwise (see MPROC_FUNC).
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstdarg>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include <fcntl.h>
#include <linux/close_range.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../log.hpp"
#include "fork.hpp"
#include "posix.hpp"
#include "tracker.hpp"

namespace mproc::detail {

MPROC_FUNC resource_tracker& resource_tracker::instance() {
  // Never destroyed: registrations may come from static destructors.
  static auto* t = new resource_tracker;
  return *t;
}

MPROC_FUNC pid_t resource_tracker::ensure_running() {
  std::lock_guard g(mu_);
  start_locked();
  return pid_;
}

MPROC_FUNC std::pair<int, pid_t> resource_tracker::running() {
  std::lock_guard g(mu_);
  return {fd_, pid_};
}

MPROC_FUNC void resource_tracker::adopt_fd(int fd, pid_t pid) noexcept {
  std::lock_guard g(mu_);
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
  pid_ = pid;
}

MPROC_FUNC void resource_tracker::send(const char* op, std::string_view kind, std::string_view name) {
  std::string rec = std::string(op) + ':' + std::string(kind) + ':' + std::string(name);
  if (rec.size() > max_record || name.find('\n') != std::string_view::npos) return;
  std::lock_guard g(mu_);
  if (std::string_view(op) == "UNREGISTER" && fd_ < 0) return;  // nothing was registered
  start_locked();
  // MSG_NOSIGNAL: a tracker that is gone must not kill the program with SIGPIPE.
  ssize_t n = retry_eintr([&] { return ::send(fd_, rec.data(), rec.size(), MSG_NOSIGNAL); });
  if (n != static_cast<ssize_t>(rec.size()))
    detail::log(log_level::warning, "resource tracker: could not record %s %s (%s)", op,
                std::string(name).c_str(), std::strerror(errno));
}

MPROC_FUNC void resource_tracker::start_locked() {
  if (fd_ >= 0) return;
  int sv[2];
  check(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), "socketpair(tracker)");
  unique_fd mine(sv[0]), theirs(sv[1]);
  std::fflush(nullptr);
  pid_t mid = ::fork();
  if (mid == -1) throw_errno("fork(tracker)");
  if (mid == 0) {
    // Intermediate child: fork the tracker and leave, so the tracker is reparented
    // away from the program.
    pid_t t = ::fork();
    if (t == 0) run(theirs.get(), mine.get());
    // The grandchild's pid reaches the program through the socket.
    if (t > 0) (void)!::write(theirs.get(), &t, sizeof t);
    ::_exit(t > 0 ? 0 : 1);
  }
  int status = 0;
  waitpid_eintr(mid, &status, 0);
  theirs.reset();
  pid_t tracker_pid = -1;
  ssize_t n = retry_eintr([&] { return ::recv(mine.get(), &tracker_pid, sizeof tracker_pid, 0); });
  if (n != sizeof tracker_pid || exitcode_from_status(status) != 0)
    throw std::system_error(ECHILD, std::generic_category(), "fork(tracker): tracker did not start");
  pid_ = tracker_pid;
  fd_ = mine.release();
}

MPROC_FUNC void resource_tracker::say(const char* fmt, ...) {
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = std::vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  if (n <= 0) return;
  std::size_t len = std::min(sizeof line - 1, static_cast<std::size_t>(n));
  for (std::size_t off = 0; off < len;) {
    ssize_t w = ::write(2, line + off, len - off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;
    off += static_cast<std::size_t>(w);
  }
}

[[noreturn]] MPROC_FUNC void resource_tracker::run(int sock, int program_end) {
  ::close(program_end);
  std::signal(SIGINT, SIG_IGN);
  std::signal(SIGTERM, SIG_IGN);
  std::signal(SIGPIPE, SIG_IGN);
  // Keep stderr for the warnings; stdin/stdout go to /dev/null so the tracker never
  // holds a pipe someone waits to see closed; everything else is closed.
  int devnull = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  if (devnull >= 0) {
    ::dup2(devnull, 0);
    ::dup2(devnull, 1);
  }
  if (sock != 3) {
    ::dup2(sock, 3);
    sock = 3;
  }
  ::fcntl(sock, F_SETFD, FD_CLOEXEC);
  if (::syscall(SYS_close_range, 4u, ~0u, 0u) != 0)
    for (int fd = 4; fd < 65536; ++fd) ::close(fd);
  ::setpgid(0, 0);  // out of the program's process group: no terminal signals

  std::set<std::pair<std::string, std::string>> live;
  char buf[max_record + 1];
  for (;;) {
    ssize_t n = ::recv(sock, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    std::string_view rec(buf, static_cast<std::size_t>(n));
    std::size_t a = rec.find(':'), b = rec.find(':', a == rec.npos ? a : a + 1);
    if (a == rec.npos || b == rec.npos) continue;
    std::pair<std::string, std::string> key{std::string(rec.substr(a + 1, b - a - 1)),
                                            std::string(rec.substr(b + 1))};
    if (rec.substr(0, a) == "REGISTER")
      live.insert(std::move(key));
    else if (rec.substr(0, a) == "UNREGISTER")
      live.erase(key);
  }
  if (!live.empty()) {
    std::set<std::string> kinds;
    for (auto& [kind, name] : live) kinds.insert(kind);
    for (auto& kind : kinds) {
      std::size_t count = 0;
      for (auto& e : live) count += e.first == kind;
      say("mproc resource_tracker: There appear to be %zu leaked %s objects to clean up "
                   "at shutdown\n",
                   count, kind.c_str());
    }
    for (auto& [kind, name] : live) {
      int rc = 0;
      if (kind == "shared_memory")
        rc = ::shm_unlink(name.c_str());
      else if (kind == "semaphore")
        rc = ::shm_unlink(("sem." + name.substr(name[0] == '/' ? 1 : 0)).c_str());
      if (rc == 0)
        say("mproc resource_tracker: removed leaked %s object '%s'\n", kind.c_str(),
                     name.c_str());
      else if (errno != ENOENT)
        say("mproc resource_tracker: could not remove %s '%s': %s\n", kind.c_str(),
                     name.c_str(), std::strerror(errno));
    }
  }
  ::_exit(0);
}

// Created while the program starts (not on first use, which may be on a thread while
// another one forks), with its child handler in the library's fork table.
MPROC_FUNC const int tracker_fork_hook_registered = [] {
  (void)resource_tracker::instance();
  return set_fork_hook(fork_hook_slot::tracker, {.child = &resource_tracker::after_fork_child});
}();

}  // namespace mproc::detail
