// Manager transport: length-prefixed frames over stream sockets (Unix or TCP) with a
// deadline on every read and write, a cap on frame size checked before anything is
// allocated, descriptor passing over Unix sockets, and the mutual HMAC-SHA256
// challenge/response that opens every connection (the same shape as Python's
// multiprocessing.connection: each side proves it knows the key to the other).
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "../errors.hpp"
#include "hmac.hpp"
#include "posix/fd_passing.hpp"
#include "posix/posix.hpp"
#include "posix/sockets.hpp"

namespace mproc::detail::mgr {

// Absolute CLOCK_MONOTONIC deadlines in ns (-1: none), from the one conversion.
using detail::deadline_after;
using detail::deadline_t;

/// Waits until fd is ready for `events`; throws timeout_error at the deadline.
inline void wait_fd(int fd, short events, deadline_t d, const char* what) {
  if (!detail::wait_fd(fd, events, d))
    throw timeout_error(std::string("manager connection: timed out ") + what);
}

inline void write_all(int fd, const void* data, std::size_t n, deadline_t d) {
  auto* p = static_cast<const char*>(data);
  while (n) {
    ssize_t w = send_eintr(fd, p, n, MSG_DONTWAIT);
    if (w == -1) {
      if (errno == EAGAIN) {
        wait_fd(fd, POLLOUT, d, "sending");
        continue;
      }
      if (errno == EPIPE || errno == ECONNRESET)
        throw eof_error("manager connection closed by the other side while sending");
      throw_errno("send(manager connection)");
    }
    p += w;
    n -= std::size_t(w);
  }
}

inline void read_all(int fd, void* data, std::size_t n, deadline_t d) {
  auto* p = static_cast<char*>(data);
  while (n) {
    ssize_t r = recv_eintr(fd, p, n, MSG_DONTWAIT);
    if (r == 0) throw eof_error("manager connection closed by the other side");
    if (r == -1) {
      if (errno == EAGAIN) {
        wait_fd(fd, POLLIN, d, "waiting for a reply");
        continue;
      }
      if (errno == ECONNRESET) throw eof_error("manager connection reset by the other side");
      throw_errno("recv(manager connection)");
    }
    p += r;
    n -= std::size_t(r);
  }
}

/// Frame: 4-byte little-endian length, then the payload.
inline void write_frame(int fd, std::string_view payload, deadline_t d) {
  if (payload.size() > UINT32_MAX)
    throw serialization_error("manager message of " + std::to_string(payload.size()) +
                              " bytes exceeds the 4 GiB frame limit");
  std::string buf(4 + payload.size(), '\0');
  std::uint32_t n = static_cast<std::uint32_t>(payload.size());
  std::memcpy(buf.data(), &n, 4);
  std::memcpy(buf.data() + 4, payload.data(), payload.size());
  write_all(fd, buf.data(), buf.size(), d);
}

inline std::uint32_t checked_length(std::uint32_t n, std::size_t cap) {
  // Checked before allocating: a hostile peer cannot make us reserve gigabytes.
  if (n > cap)
    throw serialization_error("manager message header announces " + std::to_string(n) +
                              " bytes, over the limit of " + std::to_string(cap) +
                              "; closing the connection");
  return n;
}

inline std::string read_frame(int fd, std::size_t cap, deadline_t d) {
  std::uint32_t n;
  read_all(fd, &n, 4, d);
  checked_length(n, cap);
  std::string out(n, '\0');
  read_all(fd, out.data(), n, d);
  return out;
}

/// Sends a frame with a descriptor attached (Unix sockets only).
inline void write_frame_with_fd(int fd, std::string_view payload, int passed_fd, deadline_t d) {
  std::uint32_t n = static_cast<std::uint32_t>(payload.size());
  const iovec iov{&n, 4};
  const int passed[1] = {passed_fd};
  for (;;) {
    wait_fd(fd, POLLOUT, d, "sending");
    ssize_t w = send_with_fds(fd, &iov, 1, passed, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w == -1 && (errno == EINTR || errno == EAGAIN)) continue;
    if (w == -1) throw_errno("sendmsg(SCM_RIGHTS)");
    if (w != 4) throw eof_error("manager connection: short descriptor message");
    break;
  }
  write_all(fd, payload.data(), payload.size(), d);
}

/// Receives a frame sent by write_frame_with_fd; returns the payload and the descriptor.
inline std::pair<std::string, unique_fd> read_frame_with_fd(int fd, std::size_t cap, deadline_t d) {
  std::uint32_t n = 0;
  unique_fd got;
  ssize_t r;
  for (;;) {
    wait_fd(fd, POLLIN, d, "waiting for the shared segment");
    r = recv_with_fds(fd, &n, 4, MSG_DONTWAIT, [&](int v) { got.reset(v); });
    if (r == -1 && (errno == EINTR || errno == EAGAIN)) continue;
    if (r == -1) throw_errno("recvmsg(SCM_RIGHTS)");
    break;
  }
  if (r == 0) throw eof_error("manager connection closed by the other side");
  if (r < 4) read_all(fd, reinterpret_cast<char*>(&n) + r, 4 - std::size_t(r), d);
  checked_length(n, cap);
  std::string out(n, '\0');
  read_all(fd, out.data(), n, d);
  return {std::move(out), std::move(got)};
}

// ------------------------------------------------------------------ addresses

/// "host:port" (TCP) or an absolute path (Unix socket).
inline bool is_unix_address(std::string_view a) { return !a.empty() && a.front() == '/'; }

inline sockaddr_un unix_sockaddr(const std::string& path) {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (path.size() >= sizeof sa.sun_path)
    throw value_error("mproc::Manager: Unix socket path too long (" +
                                std::to_string(path.size()) + " bytes): " + path);
  std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);
  return sa;
}

inline std::pair<std::string, std::string> split_host_port(const std::string& a) {
  auto colon = a.rfind(':');
  if (colon == std::string::npos || colon + 1 == a.size())
    throw value_error("mproc::Manager: address \"" + a +
                                "\" is neither an absolute Unix socket path nor host:port");
  std::string host = a.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  return {host, a.substr(colon + 1)};
}

struct addrinfo_ptr {
  addrinfo* p = nullptr;
  ~addrinfo_ptr() {
    if (p) ::freeaddrinfo(p);
  }
};

inline addrinfo_ptr resolve(const std::string& address, bool passive) {
  auto [host, port] = split_host_port(address);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  addrinfo_ptr res;
  int rc = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &res.p);
  if (rc != 0)
    throw value_error("mproc::Manager: cannot resolve \"" + address +
                                "\": " + ::gai_strerror(rc));
  return res;
}

inline unique_fd listen_unix(const std::string& path) {
  unique_fd s = open_socket(AF_UNIX, SOCK_STREAM, 0, "socket(AF_UNIX)");
  sockaddr_un sa = unix_sockaddr(path);
  bind_socket(s.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa, "bind(manager Unix socket)");
  listen_socket(s.get(), 128, "listen(manager Unix socket)");
  return s;
}

/// Listens on host:port (port 0 picks a free one); returns the socket and the bound port.
inline std::pair<unique_fd, int> listen_tcp(const std::string& address) {
  auto res = resolve(address, true);
  int last_err = 0;
  for (addrinfo* ai = res.p; ai; ai = ai->ai_next) {
    unique_fd s = try_socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    if (!s) {
      last_err = errno;
      continue;
    }
    set_socket_option(s.get(), SOL_SOCKET, SO_REUSEADDR, 1);
    if (!try_bind_listen(s.get(), ai->ai_addr, ai->ai_addrlen, SOMAXCONN)) {
      last_err = errno;
      continue;
    }
    const int port = bound_port(s.get());
    return {std::move(s), port};
  }
  throw_errno(("bind/listen(manager TCP " + address + ")").c_str(), last_err ? last_err : EADDRNOTAVAIL);
}

/// Connects with a deadline (non-blocking connect + poll).
inline unique_fd connect_to(const std::string& address, deadline_t d) {
  auto try_connect = [&](int family, const sockaddr* sa, socklen_t len, int proto) -> unique_fd {
    unique_fd s = open_socket(family, SOCK_STREAM | SOCK_NONBLOCK, proto, "socket");
    if (connect_socket(s.get(), sa, len) == -1) {
      if (errno != EINPROGRESS && errno != EAGAIN && errno != EINTR)
        throw_errno(("connect(" + address + ")").c_str());
      wait_fd(s.get(), POLLOUT, d, "connecting");
      if (int err = socket_error(s.get())) throw_errno(("connect(" + address + ")").c_str(), err);
    }
    // Request/reply traffic: never wait to coalesce small frames.
    if (family != AF_UNIX) set_socket_option(s.get(), IPPROTO_TCP, TCP_NODELAY, 1);
    return s;
  };
  if (is_unix_address(address)) {
    sockaddr_un sa = unix_sockaddr(address);
    return try_connect(AF_UNIX, reinterpret_cast<sockaddr*>(&sa), sizeof sa, 0);
  }
  auto res = resolve(address, false);
  std::exception_ptr last;
  for (addrinfo* ai = res.p; ai; ai = ai->ai_next) {
    try {
      return try_connect(ai->ai_family, ai->ai_addr, ai->ai_addrlen, ai->ai_protocol);
    } catch (...) {
      last = std::current_exception();
    }
  }
  if (last) std::rethrow_exception(last);
  throw value_error("mproc::Manager: no address for " + address);
}

// ------------------------------------------------------------------ authentication

inline constexpr std::string_view challenge_prefix = "#CHALLENGE#{sha256}";
inline constexpr std::string_view welcome = "#WELCOME#";
inline constexpr std::string_view failure = "#FAILURE#";
inline constexpr std::size_t handshake_cap = 256;

/// Sends a random challenge and checks the peer's HMAC of it.
inline void deliver_challenge(int fd, std::string_view key, deadline_t d) {
  std::string nonce = random_bytes(32);
  write_frame(fd, std::string(challenge_prefix) + nonce, d);
  std::string reply = read_frame(fd, handshake_cap, d);
  if (!constant_time_equal(reply, hmac_sha256(key, nonce))) {
    try {
      write_frame(fd, failure, d);
    } catch (...) {
    }
    throw authentication_error("manager connection: the peer's digest was wrong (authkey mismatch)");
  }
  write_frame(fd, welcome, d);
}

/// Answers the peer's challenge with HMAC(key, nonce).
inline void answer_challenge(int fd, std::string_view key, deadline_t d) {
  std::string msg = read_frame(fd, handshake_cap, d);
  if (msg.size() <= challenge_prefix.size() || msg.compare(0, challenge_prefix.size(), challenge_prefix) != 0)
    throw authentication_error("manager connection: the peer did not send a valid challenge");
  write_frame(fd, hmac_sha256(key, std::string_view(msg).substr(challenge_prefix.size())), d);
  std::string verdict = read_frame(fd, handshake_cap, d);
  if (verdict != welcome)
    throw authentication_error("manager connection: authentication failed (digest sent was rejected; wrong authkey)");
}

}  // namespace mproc::detail::mgr
