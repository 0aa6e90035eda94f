// The bodies of spawn.hpp: included by it in the header-only mode, compiled once by
// src/mproc.cpp otherwise (see MPROC_FUNC).
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../../errors.hpp"
#include "../callable.hpp"
#include "fd_passing.hpp"
#include "fork.hpp"
#include "posix.hpp"
#include "spawn.hpp"

extern char** environ;

namespace mproc::detail {

MPROC_FUNC std::atomic<int>& default_start_method_value() noexcept {
  static std::atomic<int> m{0};
  return m;
}

MPROC_FUNC void check_spawn_request_size(std::size_t payload, std::size_t nfds, const char* method) {
  if (nfds > max_passed_fds)
    throw value_error(std::string("mproc: ") + method + ": " + std::to_string(nfds) +
                                " descriptors to pass, at most " + std::to_string(max_passed_fds));
  if (payload > max_spawn_payload)
    throw value_error(std::string("mproc: ") + method + ": the target and its arguments "
                            "serialize to " + std::to_string(payload) +
                            " bytes, more than 1 GiB; pass bulk data through SharedMemory");
}

MPROC_FUNC std::int64_t spawn_ack_timeout_ns() {
  // A legitimate child acknowledges as soon as main starts; a loaded machine can delay
  // that by seconds, a program without init never does it.
  return 10'000'000'000;
}

// ---- socket helpers (blocking, EINTR-safe, SIGPIPE-free)

MPROC_FUNC void send_all_fds(int sock, const void* data, std::size_t len, std::span<const int> fds,
                             const char* what) {
  if (fds.size() > max_passed_fds)
    throw value_error(std::string("mproc: ") + what + ": " + std::to_string(fds.size()) +
                                " descriptors, at most " + std::to_string(max_passed_fds));
  const char* p = static_cast<const char*>(data);
  bool fds_sent = fds.empty();
  while (len > 0 || !fds_sent) {
    iovec iov{const_cast<char*>(p), len};
    ssize_t n = send_with_fds(sock, &iov, 1, fds_sent ? std::span<const int>{} : fds, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno(what);
    }
    fds_sent = true;
    p += n;
    len -= std::size_t(n);
  }
}

MPROC_FUNC bool wait_readable(int sock, std::int64_t timeout_ns) {
  return wait_fd(sock, POLLIN, deadline_after(timeout_ns));
}

MPROC_FUNC bool recv_all_fds(int sock, void* data, std::size_t len, std::vector<int>* fds,
                             std::int64_t timeout_ns, const char* what) {
  char* p = static_cast<char*>(data);
  std::size_t got = 0;
  const deadline_t deadline = deadline_after(timeout_ns);
  while (got < len) {
    if (deadline != no_deadline && !wait_fd(sock, POLLIN, deadline))
      throw timeout_error(std::string("mproc: ") + what + ": timed out");
    ssize_t n = recv_with_fds(sock, p + got, len - got, 0, [&](int fd) {
      if (fds) fds->push_back(fd);
      else ::close(fd);
    });
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno(what);
    }
    if (n == 0) {
      if (got == 0) return false;
      throw eof_error(std::string("mproc: ") + what + ": peer closed mid-message");
    }
    got += std::size_t(n);
  }
  return true;
}

// ---- the guard against a missing init

struct spawn_guard_state {
  // Set by init() when this process consumed a spawn marker. A process that carries
  // the marker in its environment without having consumed it is a spawned child
  // whose main does not call init: it must not start children of its own.
  std::atomic<bool> marker_consumed{false};
};
MPROC_FUNC spawn_guard_state& spawn_guard() {
  static spawn_guard_state s;
  return s;
}

[[noreturn]] MPROC_FUNC void throw_missing_init(const char* method, bool in_child) {
  throw start_method_error(
      std::string("mproc: the '") + method +
      "' start method needs mproc::init(argc, argv) as the first line of main" +
      (in_child ? ": this process was started by spawn and its main did not call init, so it "
                  "runs main again; it refuses to start children (no runaway)"
                : ": the program does not call mproc::init(argc, argv) as the first line of main"));
}

MPROC_FUNC void check_spawn_allowed(const char* method, bool init_called) {
  if (std::getenv(spawn_marker) && !spawn_guard().marker_consumed.load())
    throw_missing_init(method, true);
  if (!init_called) throw_missing_init(method, false);
}

// ---- parent side of spawn

MPROC_FUNC unique_fd pidfd_open_or_none(pid_t pid) noexcept {
  int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  return unique_fd(fd >= 0 ? fd : -1);
}

MPROC_FUNC void discard_child(pid_t pid) noexcept {
  ::kill(pid, SIGKILL);
  int st;
  while (::waitpid(pid, &st, 0) == -1 && errno == EINTR) {
  }
}

MPROC_FUNC spawn_start spawn_begin(const std::string& executable, const std::vector<std::string>& args) {
  int sv[2];
  check(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), "socketpair(spawn)");
  unique_fd mine(sv[0]), theirs(sv[1]);

  // Same argv; environment plus the marker naming the inherited descriptor.
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  if (argv.empty()) argv.push_back(const_cast<char*>(executable.c_str()));
  argv.push_back(nullptr);
  std::string marker = std::string(spawn_marker) + "=" + std::to_string(theirs.get());
  std::vector<char*> envp;
  const std::size_t mlen = std::strlen(spawn_marker);
  for (char** e = environ; e && *e; ++e)
    if (!(std::strncmp(*e, spawn_marker, mlen) == 0 && (*e)[mlen] == '='))
      envp.push_back(*e);
  envp.push_back(marker.data());
  envp.push_back(nullptr);

  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  ::posix_spawn_file_actions_init(&fa);
  ::posix_spawnattr_init(&attr);
  // dup2 onto itself clears close-on-exec for just this descriptor, in the child only.
  ::posix_spawn_file_actions_adddup2(&fa, theirs.get(), theirs.get());
  // The child starts with no blocked signals and default handlers for those this
  // thread may have changed, whatever the spawning thread had.
  sigset_t empty, all;
  sigemptyset(&empty);
  sigfillset(&all);
  sigdelset(&all, SIGKILL);
  sigdelset(&all, SIGSTOP);
  ::posix_spawnattr_setsigmask(&attr, &empty);
  ::posix_spawnattr_setsigdefault(&attr, &all);
  ::posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  pid_t pid = -1;
  flush_all_output();
  // /proc/self/exe is this very image even if the file was replaced or deleted since
  // (a rebuild while the program runs): entry offsets are only valid in the same image.
  const char* image = ::access("/proc/self/exe", X_OK) == 0 ? "/proc/self/exe" : executable.c_str();
  int rc = ::posix_spawn(&pid, image, &fa, &attr, argv.data(), envp.data());
  ::posix_spawn_file_actions_destroy(&fa);
  ::posix_spawnattr_destroy(&attr);
  if (rc != 0) {
    errno = rc;
    throw_errno(("posix_spawn(" + executable + ")").c_str());
  }
  theirs.reset();
  spawn_start out;
  out.pid = pid;
  out.pidfd = pidfd_open_or_none(pid);
  out.sock = std::move(mine);
  return out;
}

MPROC_FUNC spawned spawn_finish(spawn_start& s, entry_fn entry, std::span<const std::byte> payload,
                                std::span<const int> fds) {
  // The acknowledgement proves the child entered init; EOF or silence means its main
  // runs without init.
  char ack = 0;
  bool acked = false;
  try {
    acked = wait_readable(s.sock.get(), spawn_ack_timeout_ns()) &&
            recv_all_fds(s.sock.get(), &ack, 1, nullptr, -1, "spawn handshake") && ack == 'A';
  } catch (const std::exception&) {
    acked = false;
  }
  if (!acked) {
    const pid_t pid = s.pid;
    s.discard();
    throw start_method_error(
        "mproc: the spawned child (pid " + std::to_string(pid) +
        ") did not enter mproc::init: the program does not call mproc::init(argc, argv) as the "
        "first line of main");
  }
  spawn_header h;
  h.entry_offset = encode_code_address(reinterpret_cast<const void*>(entry));
  h.payload_size = payload.size();
  h.nfds = std::uint32_t(fds.size());
  h.parent_pid = ::getpid();
  try {
    send_all_fds(s.sock.get(), &h, sizeof h, fds, "sendmsg(spawn request)");
    if (!payload.empty())
      send_all_fds(s.sock.get(), payload.data(), payload.size(), {}, "send(spawn payload)");
  } catch (...) {
    s.discard();
    throw;
  }
  s.sock.reset();
  return {std::exchange(s.pid, -1), std::move(s.pidfd)};
}

MPROC_FUNC spawned spawn_entry(const std::string& executable, const std::vector<std::string>& args,
                               entry_fn entry, std::span<const std::byte> payload,
                               std::span<const int> fds) {
  check_spawn_request_size(payload.size(), fds.size(), "spawn");
  spawn_start s = spawn_begin(executable, args);
  return spawn_finish(s, entry, payload, fds);
}

// ---- child side (from init)

// ---- reading a request (spawned child and forkserver alike)

MPROC_FUNC bool read_spawn_request(int sock, spawn_request& out, std::int64_t header_timeout_ns,
                                   std::int64_t body_timeout_ns, const char* what) {
  auto fail = [&](const std::string& why) -> bool {
    throw start_method_error(std::string("mproc: ") + what + ": " + why);
  };
  if (!recv_all_fds(sock, &out.header, sizeof out.header, &out.fds, header_timeout_ns, what))
    return false;
  if (const char* problem = spawn_header_problem(out.header)) fail(problem);
  const std::int64_t start = monotonic_ns();
  const std::size_t total = std::size_t(out.header.payload_size);
  std::size_t have = 0;
  while (have < total || out.fds.size() > out.header.nfds) {
    if (out.fds.size() > out.header.nfds)
      fail("more descriptors than the header announces (" + std::to_string(out.header.nfds) + ")");
    const std::size_t step = std::min<std::size_t>(total - have, std::size_t(1) << 20);
    out.payload.resize(have + step);
    std::int64_t left = -1;
    if (body_timeout_ns >= 0) left = std::max<std::int64_t>(0, body_timeout_ns - (monotonic_ns() - start));
    if (!recv_all_fds(sock, out.payload.data() + have, step, &out.fds, left, what))
      throw eof_error(std::string("mproc: ") + what + ": peer closed mid-request");
    have += step;
  }
  if (out.fds.size() != out.header.nfds)
    fail("the header announces " + std::to_string(out.header.nfds) + " descriptors, " +
         std::to_string(out.fds.size()) + " arrived");
  out.entry = reinterpret_cast<entry_fn>(decode_code_address(out.header.entry_offset));
  if (!out.entry) fail("the entry is not code of this program");
  return true;
}

MPROC_FUNC int run_spawn_request(spawn_request& req, const char* who) noexcept {
  try {
    std::vector<int> fds = std::move(req.fds);
    req.fds.clear();
    return req.entry(req.payload, fds);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mproc: %s %d could not start: %s\n", who, int(::getpid()), e.what());
  } catch (...) {
  }
  return 1;
}

// ---- child side (from init)

/// Reads one request from sock and runs it; never returns.
[[noreturn]] MPROC_FUNC void run_request_and_exit(int sock, std::int32_t expected_parent_check) {
  int code = 1;
  try {
    spawn_request req;
    // The parent sends the request right after the acknowledgement.
    const std::int64_t limit = 60'000'000'000;
    if (!read_spawn_request(sock, req, limit, limit, "spawn request")) ::_exit(1);
    if (expected_parent_check && ::getppid() != req.header.parent_pid) ::_exit(128 + SIGKILL);
    ::close(sock);
    default_start_method_value().store(start_method_value_spawn);
    code = run_spawn_request(req, "spawned child");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mproc: spawned child %d could not start: %s\n", int(::getpid()),
                 e.what());
    code = 1;
  } catch (...) {
    code = 1;
  }
  flush_all_output();
  ::_exit(code);
}

MPROC_FUNC void enter_if_spawned() {
  const char* m = std::getenv(spawn_marker);
  if (!m) return;
  int fd = -1;
  auto [ptr, ec] = std::from_chars(m, m + std::strlen(m), fd);
  if (ec != std::errc{} || fd < 0) return;  // not ours: leave it to the refusal check
  spawn_guard().marker_consumed.store(true);
  ::unsetenv(spawn_marker);
  ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  // Die with the parent from here on; the header names the parent to compare with,
  // closing the race where it died before this line.
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  char ack = 'A';
  try {
    send_all_fds(fd, &ack, 1, {}, "spawn handshake");
  } catch (...) {
    ::_exit(1);
  }
  run_request_and_exit(fd, 1);
}

}  // namespace mproc::detail
