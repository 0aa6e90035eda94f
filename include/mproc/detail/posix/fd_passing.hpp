/// \file
/// Descriptor passing over Unix sockets (SCM_RIGHTS), written once for its three
/// users: spawn and forkserver requests, Connection::send_fd, the Manager's segment.
#pragma once

#include <cstddef>
#include <cstring>
#include <span>

#include <sys/socket.h>
#include <sys/uio.h>

namespace mproc::detail {

/// Most descriptors one message carries: the kernel's own limit (SCM_MAX_FD).
inline constexpr std::size_t max_fds_per_message = 253;

/// One sendmsg of iov[0, iovcnt) with `fds` attached (nothing attached when empty;
/// at most max_fds_per_message). Returns what sendmsg returns (-1 and errno): partial
/// writes, EINTR and EAGAIN are the caller's, whose policies differ.
inline ssize_t send_with_fds(int sock, const iovec* iov, std::size_t iovcnt,
                             std::span<const int> fds, int flags) noexcept {
  msghdr msg{};
  msg.msg_iov = const_cast<iovec*>(iov);
  msg.msg_iovlen = iovcnt;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * max_fds_per_message)];
  if (!fds.empty()) {
    if (fds.size() > max_fds_per_message) {
      errno = EINVAL;
      return -1;
    }
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  return ::sendmsg(sock, &msg, flags);
}

/// One recvmsg into [p, p + n), close-on-exec for what arrives: each descriptor that
/// came with the bytes is handed to on_fd(int), which then owns it. Returns what
/// recvmsg returns (-1 and errno; 0 at end of stream).
template <class OnFd>
ssize_t recv_with_fds(int sock, void* p, std::size_t n, int flags, OnFd&& on_fd) {
  iovec iov{p, n};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * max_fds_per_message)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  const ssize_t got = ::recvmsg(sock, &msg, flags | MSG_CMSG_CLOEXEC);
  if (got < 0) return got;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      on_fd(fd);
    }
  }
  return got;
}

}  // namespace mproc::detail
