// Shared memory handed to a process that need not trust its maker: a memfd sealed
// against resizing. A mapping of an unsealed file faults (SIGBUS) once its owner
// shrinks the file; with F_SEAL_SHRINK in place nobody can, so a receiver that checked
// the seal and the size once may touch every mapped byte for as long as it likes.
#pragma once

#include <cstddef>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "posix.hpp"

namespace mproc::detail {

/// A new zero-filled memfd of exactly `bytes`, sealed against growing, shrinking and
/// further sealing. Invalid (errno set) when the system refuses any step.
inline unique_fd create_sealed_memfd(std::size_t bytes, const char* label) noexcept {
  unique_fd fd(::memfd_create(label, MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd) return fd;
  if (::ftruncate(fd.get(), static_cast<off_t>(bytes)) != 0 ||
      ::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0)
    fd.reset();
  return fd;
}

/// True when fd is a file sealed against shrinking that holds at least `bytes`:
/// safe to map that much and keep touching it whatever its owner does.
inline bool sealed_at_least(int fd, std::size_t bytes) noexcept {
  const int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals < 0 || !(seals & F_SEAL_SHRINK)) return false;
  struct stat st {};
  return ::fstat(fd, &st) == 0 && st.st_size >= 0 && std::size_t(st.st_size) >= bytes;
}

/// True when fd is a Unix-domain socket (which can carry descriptors).
inline bool is_unix_socket(int fd) noexcept {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  return ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0 && ss.ss_family == AF_UNIX;
}

}  // namespace mproc::detail
