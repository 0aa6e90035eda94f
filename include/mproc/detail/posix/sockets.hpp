// Socket calls for the Manager's connections and Connection's pipes: creation,
// binding, connecting, options, and sends and receives retried on EINTR.
#pragma once

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>
#include <utility>

#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <unistd.h>

#include "posix.hpp"

namespace mproc::detail {

/// A close-on-exec socket (type may add SOCK_NONBLOCK); invalid on failure, errno set.
/// A fresh private directory for a Unix socket named `socket_leaf`: mkdtemp of
/// `dir_template` (ending in X's) under $XDG_RUNTIME_DIR when set (already private),
/// else $TMPDIR, else /tmp, the first where it can be made. A base too long for
/// sockaddr_un::sun_path to hold the whole socket path is skipped, not failed at bind.
inline std::string make_socket_dir(std::string_view dir_template, std::string_view socket_leaf, const char* what) {
  std::vector<std::string> bases;
  for (const char* var : {"XDG_RUNTIME_DIR", "TMPDIR"})
    if (const char* v = std::getenv(var); v && v[0] == '/') bases.emplace_back(v);
  bases.emplace_back("/tmp");
  int last = 0;
  for (const auto& base : bases) {
    std::string tmpl = base + "/" + std::string(dir_template);
    if (tmpl.size() + 1 + socket_leaf.size() >= sizeof(sockaddr_un::sun_path)) continue;
    if (::mkdtemp(tmpl.data())) return tmpl;  // 0700, an unguessable name
    last = errno;
  }
  throw_errno(what, last ? last : ENAMETOOLONG);
}

/// accept4 without the peer's address; -1 with errno as accept4 leaves it.
inline int accept_connection(int listen_fd, int flags) noexcept { return ::accept4(listen_fd, nullptr, nullptr, flags); }

inline void shutdown_socket(int fd, int how, const char* what) { check(::shutdown(fd, how), what); }

/// The port an IPv4 or IPv6 socket is bound to (getsockname).
inline int bound_port(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  check(::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len), "getsockname");
  return ss.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port)
                                  : ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
}

inline unique_fd try_socket(int family, int type, int protocol) noexcept {
  return unique_fd(::socket(family, type | SOCK_CLOEXEC, protocol));
}

/// A close-on-exec socket; throws naming `what` on failure.
inline unique_fd open_socket(int family, int type, int protocol, const char* what) {
  unique_fd s = try_socket(family, type, protocol);
  if (!s) throw_errno(what);
  return s;
}

/// A connected pair of close-on-exec Unix sockets of `type` (SOCK_STREAM, ...).
inline std::pair<unique_fd, unique_fd> make_socketpair(int type) {
  int sv[2];
  check(::socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv), "socketpair");
  return {unique_fd(sv[0]), unique_fd(sv[1])};
}

/// bind(); throws naming `what` on failure.
inline void bind_socket(int fd, const sockaddr* sa, socklen_t len, const char* what) {
  check(::bind(fd, sa, len), what);
}

/// listen(); throws naming `what` on failure.
inline void listen_socket(int fd, int backlog, const char* what) { check(::listen(fd, backlog), what); }

/// bind() then listen(); false (errno set) if either fails.
inline bool try_bind_listen(int fd, const sockaddr* sa, socklen_t len, int backlog) noexcept {
  return ::bind(fd, sa, len) == 0 && ::listen(fd, backlog) == 0;
}

/// connect(); returns its result (-1 and errno: EINPROGRESS on a non-blocking socket).
inline int connect_socket(int fd, const sockaddr* sa, socklen_t len) noexcept {
  return ::connect(fd, sa, len);
}

/// The pending error of a socket (SO_ERROR: how a non-blocking connect ended).
inline int socket_error(int fd) {
  int err = 0;
  socklen_t len = sizeof err;
  check(::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len), "getsockopt(SO_ERROR)");
  return err;
}

/// Sets an int socket option (SO_REUSEADDR, TCP_NODELAY, ...); best effort, errors
/// are ignored.
inline void set_socket_option(int fd, int level, int option, int value) noexcept {
  ::setsockopt(fd, level, option, &value, sizeof value);
}

/// The user id of the process at the other end of a Unix socket (SO_PEERCRED) in
/// *uid; false if it cannot be had.
inline bool peer_uid(int fd, uid_t* uid) noexcept {
  ucred cred{};
  socklen_t len = sizeof cred;
  const bool ok = ::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0;
  *uid = cred.uid;
  return ok;
}

/// One send() (MSG_NOSIGNAL added: a closed peer is EPIPE, never SIGPIPE), retried
/// on EINTR; returns what send returns.
inline ssize_t send_eintr(int fd, const void* p, std::size_t n, int flags) noexcept {
  return retry_eintr([&] { return ::send(fd, p, n, flags | MSG_NOSIGNAL); });
}

/// One recv(), retried on EINTR; returns what recv returns.
inline ssize_t recv_eintr(int fd, void* p, std::size_t n, int flags) noexcept {
  return retry_eintr([&] { return ::recv(fd, p, n, flags); });
}

}  // namespace mproc::detail
