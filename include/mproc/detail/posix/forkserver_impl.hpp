// The bodies of forkserver.hpp: included by it in the header-only mode, compiled once
// by src/mproc.cpp otherwise (see MPROC_FUNC).
#pragma once

#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <dirent.h>
#include <poll.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../../errors.hpp"
#include "../hmac.hpp"
#include "fork.hpp"
#include "posix.hpp"
#include "sockets.hpp"
#include "forkserver.hpp"
#include "spawn.hpp"

namespace mproc::detail {

inline constexpr std::size_t forkserver_key_size = 32;
inline constexpr std::string_view forkserver_auth_context = "mproc-forkserver-v1:";
// A peer that connects must answer the challenge within this; the server serves no one
// else meanwhile, so it is short.
inline constexpr std::int64_t forkserver_auth_timeout_ns = 2'000'000'000;
// Once a request's header is in, the rest follows at once from a live client.
inline constexpr std::int64_t forkserver_body_timeout_ns = 10'000'000'000;

/// Removes a server's socket and directory (the server does it itself when it ends;
/// a client does it for a server that was killed).
MPROC_FUNC void forkserver_remove(const forkserver_address& a) noexcept {
  if (!a.path.empty()) ::unlink(a.path.c_str());
  if (!a.dir.empty()) ::rmdir(a.dir.c_str());
}

// ---- the program's side: where the server is, and this process's connection

/// In a forkserver child: the server's end of its status socket, held until exit (-1
/// elsewhere). Processes forked from the child close it.
MPROC_FUNC int& forkserver_child_status_fd() noexcept {
  static int fd = -1;
  return fd;
}

MPROC_FUNC forkserver_client& forkserver_state() {
  static forkserver_client* c = new forkserver_client;  // leaked: used until exit
  return *c;
}

// A forked child keeps the address (it reaches the same server) but not the
// connection: two processes writing one socket would interleave requests. Its lock may
// have been held by a thread that does not exist in the child.
MPROC_FUNC void forkserver_after_fork_child() noexcept {
  if (int& sfd = forkserver_child_status_fd(); sfd >= 0) {
    ::close(sfd);
    sfd = -1;
  }
  auto& c = forkserver_state();
  new (&c.m) std::mutex;
  c.sock.reset();
  c.conn_owner = -1;
  c.server_pid = -1;
  c.spawned_server = -1;
}

MPROC_FUNC const int forkserver_atfork_registered = [] {
  forkserver_state();
  return set_fork_hook(fork_hook_slot::forkserver, {.child = &forkserver_after_fork_child});
}();

/// The directory for the server's socket: the user's runtime directory if there is
/// one (already private), else $TMPDIR or /tmp; mkdtemp makes a fresh 0700 directory
/// with an unguessable name inside it.
MPROC_FUNC std::string forkserver_make_dir() {
  return make_socket_dir("mproc-fs-XXXXXXXX", "s", "mkdtemp (forkserver directory)");
}

struct forkserver_listener {
  forkserver_address addr;
  unique_fd fd;
};

/// A listening socket in a new private directory, with a fresh key.
MPROC_FUNC forkserver_listener forkserver_listen() {
  forkserver_listener l;
  l.addr.dir = forkserver_make_dir();
  l.addr.path = l.addr.dir + "/s";
  try {
    l.addr.key = random_bytes(forkserver_key_size);
    l.fd = unique_fd(static_cast<int>(check(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0),
                                            "socket(forkserver)")));
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::memcpy(sa.sun_path, l.addr.path.c_str(), l.addr.path.size() + 1);
    check(::bind(l.fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa), "bind(forkserver)");
    check(::chmod(l.addr.path.c_str(), 0600), "chmod(forkserver socket)");
    check(::listen(l.fd.get(), 128), "listen(forkserver)");
  } catch (...) {
    forkserver_remove(l.addr);
    throw;
  }
  return l;
}

// ---- the server

/// Admits a connection: same uid (SO_PEERCRED), then challenge and HMAC answer.
MPROC_FUNC bool forkserver_admit(int conn, std::string_view key) noexcept {
  ucred cr{};
  socklen_t len = sizeof cr;
  if (::getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0 || cr.uid != ::geteuid())
    return false;
  try {
    const std::string nonce = random_bytes(32);
    send_all_fds(conn, nonce.data(), nonce.size(), {}, "forkserver challenge");
    char answer[32];
    if (!recv_all_fds(conn, answer, sizeof answer, nullptr, forkserver_auth_timeout_ns,
                      "forkserver answer"))
      return false;
    const std::string want = hmac_sha256(key, std::string(forkserver_auth_context) + nonce);
    if (!constant_time_equal(std::string_view(answer, sizeof answer), want)) return false;
    // The welcome names the server: SO_PEERCRED on the client's side would name the
    // process that called listen(), which is the program when init forked the server.
    const std::int32_t welcome = ::getpid();
    send_all_fds(conn, &welcome, sizeof welcome, {}, "forkserver welcome");
    return true;
  } catch (...) {
    return false;
  }
}

/// The client's half of forkserver_admit; returns the server's pid.
MPROC_FUNC pid_t forkserver_answer(int sock, std::string_view key, std::int64_t timeout_ns) {
  char nonce[32];
  if (!recv_all_fds(sock, nonce, sizeof nonce, nullptr, timeout_ns, "forkserver challenge"))
    throw eof_error("mproc: the forkserver closed the connection before its challenge");
  const std::string answer =
      hmac_sha256(key, std::string(forkserver_auth_context) + std::string(nonce, sizeof nonce));
  send_all_fds(sock, answer.data(), answer.size(), {}, "forkserver answer");
  std::int32_t welcome = 0;
  bool admitted = false;
  try {
    admitted = recv_all_fds(sock, &welcome, sizeof welcome, nullptr, timeout_ns,
                            "forkserver welcome") && welcome > 0;
  } catch (const eof_error&) {
  }
  if (!admitted) throw authentication_error("mproc: the forkserver did not admit this process");
  return welcome;
}

MPROC_FUNC bool process_alive(pid_t pid) noexcept { return ::kill(pid, 0) == 0 || errno == EPERM; }

/// The keeper: receives a pidfd of each child the server forks (one byte each over
/// `from_server`) and kills the children still running when the program ends. It
/// outlives a killed server until the last of them has ended.
[[noreturn]] MPROC_FUNC void forkserver_keeper(int from_server, int program_pidfd,
                                               pid_t program) noexcept {
  ::prctl(PR_SET_NAME, "mproc-fskeeper");
  std::vector<int> kids;
  bool server_gone = false;
  std::vector<pollfd> p;
  for (;;) {
    if (server_gone && kids.empty()) ::_exit(0);
    p.clear();
    p.push_back({program_pidfd, POLLIN, 0});
    p.push_back({server_gone ? -1 : from_server, POLLIN, 0});
    for (int k : kids) p.push_back({k, POLLIN, 0});
    const int rc = ::poll(p.data(), p.size(), program_pidfd >= 0 ? -1 : 500);
    if (rc < 0 && errno != EINTR) ::_exit(4);
    if (program_pidfd >= 0 ? p[0].revents != 0 : !process_alive(program)) {
      for (int k : kids) ::syscall(SYS_pidfd_send_signal, k, SIGKILL, nullptr, 0);
      ::_exit(0);
    }
    if (p[1].revents) {
      char byte = 0;
      std::vector<int> got;
      bool open = false;
      try {
        open = recv_all_fds(from_server, &byte, 1, &got, -1, "forkserver keeper");
      } catch (...) {
      }
      kids.insert(kids.end(), got.begin(), got.end());
      if (!open) {
        server_gone = true;
        ::close(from_server);
      }
    }
    for (std::size_t i = 2; i < p.size(); ++i)
      if (p[i].revents) {
        ::close(p[i].fd);
        std::erase(kids, p[i].fd);
      }
  }
}

/// The server's loop; never returns. listen_fd: its socket; program_pidfd: the
/// program's pidfd (-1: poll for it by pid).
[[noreturn]] MPROC_FUNC void forkserver_serve(int listen_fd, int program_pidfd, pid_t program,
                                              const forkserver_address& addr) noexcept {
  // Children forked from here find the same server (and never this one's sockets).
  {
    auto& c = forkserver_state();
    c.addr = addr;
    c.sock.reset();
    c.conn_owner = -1;
  }
  char comm[17] = {};
  ::prctl(PR_GET_NAME, comm);
  ::prctl(PR_SET_NAME, "mproc-forksrv");
  ::prctl(PR_SET_PDEATHSIG, 0);
  // Out of the program's process group, so that a SIGKILL of the whole group (a job
  // killed by its shell or supervisor) leaves the server alive to see the program's
  // end and remove its directory. The children it forks go back into the program's
  // group: signals to the group reach them as they reach any other child.
  const pid_t program_group = ::getpgid(program);
  ::setpgid(0, 0);
  // Reaping needs SIGCHLD at its default even if the program ignored it.
  ::signal(SIGCHLD, SIG_DFL);
  sigset_t handled, old;
  sigemptyset(&handled);
  for (int s : {SIGCHLD, SIGTERM, SIGHUP, SIGINT, SIGQUIT}) sigaddset(&handled, s);
  ::sigprocmask(SIG_BLOCK, &handled, &old);
  const int sfd = ::signalfd(-1, &handled, SFD_CLOEXEC | SFD_NONBLOCK);

  std::vector<int> conns;
  std::map<pid_t, int> status_of;  // child -> server end of its status socket
  pid_t keeper = -1;
  auto finish = [&](int code) {
    forkserver_remove(addr);
    // The program has ended: so do its children and the keeper. They are this
    // process's own (their pids cannot have been reused), and are reaped here so that
    // none is left behind as a zombie for whoever adopts them.
    for (auto& [pid, fd] : status_of) ::kill(pid, SIGKILL);
    if (keeper > 0) ::kill(keeper, SIGKILL);
    for (auto& [pid, fd] : status_of) ::waitpid(pid, nullptr, 0);
    if (keeper > 0) ::waitpid(keeper, nullptr, 0);
    ::_exit(code);
  };
  if (sfd < 0) finish(3);

  // The keeper, forked before any child so that none inherits its socket.
  int keeper_sock = -1;
  {
    int kp[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, kp) == 0) {
      const pid_t k = ::fork();
      if (k == 0) {
        ::close(kp[0]);
        ::close(listen_fd);
        ::close(sfd);
        forkserver_keeper(kp[1], program_pidfd, program);
      }
      ::close(kp[1]);
      if (k > 0) {
        keeper_sock = kp[0];
        keeper = k;
      } else {
        ::close(kp[0]);
      }
    }
  }

  auto reap = [&] {
    for (;;) {
      int st = 0;
      pid_t p = ::waitpid(-1, &st, WNOHANG);
      if (p <= 0) break;
      if (p == keeper) keeper = -1;
      auto it = status_of.find(p);
      if (it == status_of.end()) continue;
      std::int32_t code = exitcode_from_status(st);
      (void)::send(it->second, &code, sizeof code, MSG_NOSIGNAL | MSG_DONTWAIT);
      ::close(it->second);
      status_of.erase(it);
    }
  };

  auto serve_one = [&](int conn) -> bool {  // false: drop the connection
    spawn_request req;
    try {
      if (!read_spawn_request(conn, req, forkserver_body_timeout_ns, forkserver_body_timeout_ns,
                              "forkserver request"))
        return false;
    } catch (...) {
      const std::int32_t reply = -EPROTO;
      (void)::send(conn, &reply, sizeof reply, MSG_NOSIGNAL | MSG_DONTWAIT);
      return false;
    }
    int sv[2];
    std::int32_t reply = 0;
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
      reply = -errno;
      return ::send(conn, &reply, sizeof reply, MSG_NOSIGNAL) == sizeof reply;
    }
    const pid_t pid = ::fork();
    if (pid == 0) {
      // No PR_SET_PDEATHSIG: the child outlives a killed server (the keeper ends it
      // with the program). It keeps the server's end of its status socket, so the
      // program sees the socket close only once both have ended, never while it runs.
      if (program_group > 0) ::setpgid(0, program_group);  // back in the program's group
      ::prctl(PR_SET_NAME, comm);
      ::close(listen_fd);
      if (program_pidfd >= 0) ::close(program_pidfd);
      if (keeper_sock >= 0) ::close(keeper_sock);
      ::close(sfd);
      ::close(sv[1]);
      for (int f : conns) ::close(f);
      for (auto& [k, f] : status_of) ::close(f);
      ::sigprocmask(SIG_SETMASK, &old, nullptr);
      default_start_method_value().store(start_method_value_forkserver);
      forkserver_child_status_fd() = sv[0];
      const int code = run_spawn_request(req, "forkserver child");
      flush_all_output();
      // Reported here too, for a server that was killed meanwhile; a server alive
      // reports the same code when it reaps the child, and the first one counts.
      const std::int32_t code32 = code;
      (void)::send(sv[0], &code32, sizeof code32, MSG_NOSIGNAL | MSG_DONTWAIT);
      exit_now(code);  // the server never exits: ::_exit would be bound in every child
    }
    req.close_fds();
    if (pid < 0) {
      reply = -errno;
      ::close(sv[0]);
      ::close(sv[1]);
      return ::send(conn, &reply, sizeof reply, MSG_NOSIGNAL) == sizeof reply;
    }
    status_of[pid] = sv[0];
    const int pfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    if (pfd >= 0 && keeper_sock >= 0) {
      const char byte = 'k';
      try {
        send_all_fds(keeper_sock, &byte, 1, std::span<const int>(&pfd, 1), "forkserver keeper");
      } catch (...) {
        ::close(keeper_sock);  // the keeper is gone: the server alone follows the program
        keeper_sock = -1;
      }
    }
    reply = pid;
    const int out[2] = {sv[1], pfd};
    bool ok = true;
    try {
      send_all_fds(conn, &reply, sizeof reply, std::span<const int>(out, pfd >= 0 ? 2 : 1),
                   "forkserver reply");
    } catch (...) {
      ok = false;  // the client is gone; the child runs on and is reaped as usual
    }
    ::close(sv[1]);
    if (pfd >= 0) ::close(pfd);
    return ok;
  };

  std::vector<pollfd> p;
  for (;;) {
    p.clear();
    p.push_back({sfd, POLLIN, 0});
    p.push_back({listen_fd, POLLIN, 0});
    p.push_back({program_pidfd, POLLIN, 0});  // fd -1 is skipped by poll
    for (int f : conns) p.push_back({f, POLLIN, 0});
    const int rc = ::poll(p.data(), p.size(), program_pidfd >= 0 ? -1 : 500);
    if (rc < 0) {
      if (errno == EINTR) continue;
      finish(4);
    }
    if (program_pidfd >= 0 ? p[2].revents != 0 : !process_alive(program)) finish(0);
    if (p[0].revents) {
      signalfd_siginfo si;
      while (::read(sfd, &si, sizeof si) == sizeof si) {
      }
      reap();
    }
    for (std::size_t i = 3; i < p.size(); ++i) {
      if (!p[i].revents) continue;
      const int conn = p[i].fd;
      if (!serve_one(conn)) {
        ::close(conn);
        std::erase(conns, conn);
      }
    }
    if (p[1].revents) {
      const int conn = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (conn >= 0) {
        if (forkserver_admit(conn, addr.key)) {
          const timeval tv{5, 0};  // a client that stops reading cannot stall the server
          ::setsockopt(conn, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
          conns.push_back(conn);
        } else {
          ::close(conn);
        }
      }
    }
  }
}

/// The entry of a server spawned on first use: payload = {program pid, key, dir},
/// fds = {listening socket, the program's pidfd (optional)}.
MPROC_FUNC int forkserver_spawned_main(std::span<const std::byte> payload, std::span<const int> fds) {
  ::prctl(PR_SET_PDEATHSIG, 0);  // it ends with the program, not with the spawning thread
  if (fds.empty() || payload.size() <= sizeof(std::int32_t) + forkserver_key_size) return 2;
  std::int32_t program = 0;
  std::memcpy(&program, payload.data(), sizeof program);
  const char* rest = reinterpret_cast<const char*>(payload.data()) + sizeof program;
  forkserver_address addr;
  addr.key.assign(rest, forkserver_key_size);
  addr.dir.assign(rest + forkserver_key_size, payload.size() - sizeof program - forkserver_key_size);
  addr.path = addr.dir + "/s";
  forkserver_serve(fds[0], fds.size() > 1 ? fds[1] : -1, program, addr);
}

// ---- starting it

MPROC_FUNC bool single_threaded() noexcept {
  DIR* d = ::opendir("/proc/self/task");
  if (!d) return false;
  int n = 0;
  while (dirent* e = ::readdir(d))
    if (e->d_name[0] != '.') ++n;
  ::closedir(d);
  return n == 1;
}

MPROC_FUNC void forkserver_start_from_init() noexcept {
  auto& c = forkserver_state();
  std::lock_guard lk(c.m);
  if (!c.addr.empty() || !single_threaded()) return;
  try {
    forkserver_listener l = forkserver_listen();
    const pid_t program = ::getpid();
    unique_fd self(static_cast<int>(::syscall(SYS_pidfd_open, program, 0)));
    flush_all_output();  // or the server's children would print it again
    const pid_t mid = ::fork();
    if (mid < 0) {
      forkserver_remove(l.addr);
      return;
    }
    if (mid == 0) {
      const pid_t srv = ::fork();
      if (srv == 0) forkserver_serve(l.fd.get(), self.get(), program, l.addr);
      ::_exit(srv < 0 ? 1 : 0);
    }
    int st = 0;
    while (::waitpid(mid, &st, 0) == -1 && errno == EINTR) {
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      forkserver_remove(l.addr);
      return;
    }
    c.addr = std::move(l.addr);
  } catch (...) {
  }
}

/// Spawns a server (this program entering through init); the caller holds c.m.
MPROC_FUNC void forkserver_start_spawned(forkserver_client& c, const std::string& executable,
                                         const std::vector<std::string>& args) {
  forkserver_listener l = forkserver_listen();
  try {
    const std::int32_t program = ::getpid();
    unique_fd self(static_cast<int>(::syscall(SYS_pidfd_open, program, 0)));
    std::vector<std::byte> payload(sizeof program + l.addr.key.size() + l.addr.dir.size());
    std::memcpy(payload.data(), &program, sizeof program);
    std::memcpy(payload.data() + sizeof program, l.addr.key.data(), l.addr.key.size());
    std::memcpy(payload.data() + sizeof program + l.addr.key.size(), l.addr.dir.data(),
                l.addr.dir.size());
    const int pass[2] = {l.fd.get(), self.get()};
    spawned s = spawn_entry(executable, args, &forkserver_spawned_main, payload,
                            std::span<const int>(pass, self ? 2 : 1));
    c.spawned_server = s.pid;
    c.addr = l.addr;
  } catch (...) {
    forkserver_remove(l.addr);
    throw;
  }
}

/// Connects to c.addr and passes the challenge; throws if it cannot.
MPROC_FUNC void forkserver_connect(forkserver_client& c) {
  unique_fd s(static_cast<int>(check(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0),
                                     "socket(forkserver client)")));
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (c.addr.path.size() >= sizeof sa.sun_path)
    throw start_method_error("mproc: forkserver socket path too long: " + c.addr.path);
  std::memcpy(sa.sun_path, c.addr.path.c_str(), c.addr.path.size() + 1);
  int rc;
  do rc = ::connect(s.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  while (rc != 0 && errno == EINTR);
  if (rc != 0) throw_errno(("connect(" + c.addr.path + ")").c_str());
  c.server_pid = forkserver_answer(s.get(), c.addr.key, 10'000'000'000);
  c.sock = std::move(s);
  c.conn_owner = ::getpid();
}

/// Forgets a server that cannot be reached (killed, or its directory removed).
MPROC_FUNC void forkserver_forget(forkserver_client& c) noexcept {
  c.sock.reset();
  c.conn_owner = -1;
  c.server_pid = -1;
  if (c.spawned_server > 0) {
    int st;
    if (::waitpid(c.spawned_server, &st, WNOHANG) == 0) {
      ::kill(c.spawned_server, SIGKILL);
      while (::waitpid(c.spawned_server, &st, 0) == -1 && errno == EINTR) {
      }
    }
    c.spawned_server = -1;
  }
  forkserver_remove(c.addr);
  c.addr = {};
}

/// A connection to a live server, starting one if there is none; the caller holds c.m.
MPROC_FUNC void forkserver_ensure_connected(forkserver_client& c, const std::string& executable,
                                            const std::vector<std::string>& args) {
  if (c.conn_owner != ::getpid()) {
    c.sock.reset();
    c.conn_owner = -1;
  }
  if (c.sock) return;
  if (!c.addr.empty()) {
    try {
      forkserver_connect(c);
      return;
    } catch (const authentication_error&) {
      throw;
    } catch (const std::exception&) {
      forkserver_forget(c);
    }
  }
  forkserver_start_spawned(c, executable, args);
  try {
    forkserver_connect(c);
  } catch (const std::exception& e) {
    forkserver_forget(c);
    throw start_method_error(std::string("mproc: could not reach the forkserver: ") + e.what());
  }
}

struct forkserver_lost : std::exception {};

/// One request over c.sock. forkserver_lost: the connection broke before a reply, so
/// no child of this request lives (the server forks only after reading it whole, and
/// its children die with it).
MPROC_FUNC forkserver_child forkserver_request(forkserver_client& c, entry_fn entry,
                                               std::span<const std::byte> payload,
                                               std::span<const int> fds) {
  spawn_header h;
  h.entry_offset = encode_code_address(reinterpret_cast<const void*>(entry));
  h.payload_size = payload.size();
  h.nfds = std::uint32_t(fds.size());
  h.parent_pid = c.server_pid;
  std::int32_t reply = 0;
  std::vector<int> got;
  auto close_got = [&] {
    for (int f : got) ::close(f);
    got.clear();
  };
  try {
    send_all_fds(c.sock.get(), &h, sizeof h, fds, "sendmsg(forkserver request)");
    if (!payload.empty())
      send_all_fds(c.sock.get(), payload.data(), payload.size(), {}, "send(forkserver payload)");
    if (!recv_all_fds(c.sock.get(), &reply, sizeof reply, &got, 30'000'000'000,
                      "forkserver reply"))
      throw forkserver_lost{};
  } catch (const timeout_error&) {
    close_got();
    c.sock.reset();  // the connection is in an unknown state
    throw start_method_error("mproc: the forkserver did not answer within 30 s");
  } catch (const forkserver_lost&) {
    close_got();
    c.sock.reset();
    throw;
  } catch (const std::system_error&) {
    close_got();
    c.sock.reset();
    throw forkserver_lost{};
  } catch (const eof_error&) {
    close_got();
    c.sock.reset();
    throw forkserver_lost{};
  }
  if (reply <= 0) {
    close_got();
    if (reply == -EPROTO) throw start_method_error("mproc: the forkserver refused the request");
    errno = -reply;
    throw_errno("fork (in the forkserver)");
  }
  forkserver_child out;
  out.pid = reply;
  if (!got.empty()) out.status = unique_fd(got[0]);
  if (got.size() > 1) out.pidfd = unique_fd(got[1]);
  for (std::size_t i = 2; i < got.size(); ++i) ::close(got[i]);
  return out;
}

MPROC_FUNC forkserver_child forkserver_launch(const std::string& executable,
                                              const std::vector<std::string>& args, entry_fn entry,
                                              std::span<const std::byte> payload,
                                              std::span<const int> fds) {
  check_spawn_request_size(payload.size(), fds.size(), "forkserver");
  auto& c = forkserver_state();
  std::lock_guard lk(c.m);
  for (int attempt = 0;; ++attempt) {
    forkserver_ensure_connected(c, executable, args);
    try {
      return forkserver_request(c, entry, payload, fds);
    } catch (const forkserver_lost&) {
      // Most likely the server was killed: the next connect finds out, and starts a
      // new one if so. Once only.
      if (attempt == 1) throw start_method_error("mproc: the forkserver closed its connection");
    }
  }
}

}  // namespace mproc::detail
