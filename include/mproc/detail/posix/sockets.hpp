// Socket calls for the Manager's connections and Connection's pipes: creation,
// binding, connecting, options, and sends and receives retried on EINTR.
#pragma once

#include <cerrno>
#include <cstddef>
#include <utility>

#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include "posix.hpp"

namespace mproc::detail {

/// A close-on-exec socket (type may add SOCK_NONBLOCK); invalid on failure, errno set.
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
