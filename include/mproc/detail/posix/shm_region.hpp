// Anonymous shared memory for the library's own shared objects (queues, values,
// locks, pool rings). memfd_create leaves no name in /dev/shm, so a crash can never
// leak one of these; the memory lives while any process maps it, and the descriptor
// can be inherited (fork, posix_spawn) or passed over a Unix socket.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <utility>

#include <sys/mman.h>

#include "posix.hpp"

namespace mproc::detail {

/// Removes a named POSIX segment (SharedMemory's); throws naming it on failure
/// (ENOENT: the name is already gone).
inline void shm_unlink_name(const std::string& name) {
  if (::shm_unlink(name.c_str()) != 0) throw_errno(("shm_unlink('" + name + "')").c_str());
}

/// Removes a named POSIX segment, errors ignored (undoing a creation).
inline void shm_unlink_quietly(const std::string& name) noexcept { ::shm_unlink(name.c_str()); }

class shm_region {
 public:
  shm_region() = default;

  /// A new zero-filled region of `bytes` bytes. `label` shows in /proc/<pid>/maps.
  static shm_region create(std::size_t bytes, const char* label = "mproc") {
    unique_fd fd(static_cast<int>(check(::memfd_create(label, MFD_CLOEXEC), "memfd_create")));
    check(::ftruncate(fd.get(), static_cast<off_t>(bytes)), "ftruncate(memfd)");
    return map(std::move(fd), bytes);
  }

  /// Maps a region received as a descriptor (for example after spawn).
  static shm_region map(unique_fd fd, std::size_t bytes) {
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
    if (p == MAP_FAILED) throw_errno("mmap(shared region)");
    shm_region r;
    r.m_ = std::make_shared<mapping>(p, bytes, std::move(fd));
    return r;
  }

  [[nodiscard]] void* data() const noexcept { return m_ ? m_->addr : nullptr; }
  [[nodiscard]] std::size_t size() const noexcept { return m_ ? m_->bytes : 0; }
  [[nodiscard]] int fd() const noexcept { return m_ ? m_->fd.get() : -1; }
  [[nodiscard]] explicit operator bool() const noexcept { return bool(m_); }
  template <class T>
  [[nodiscard]] T* as() const noexcept {
    return static_cast<T*>(data());
  }

 private:
  struct mapping {
    void* addr;
    std::size_t bytes;
    unique_fd fd;
    mapping(void* a, std::size_t b, unique_fd f) : addr(a), bytes(b), fd(std::move(f)) {}
    mapping(const mapping&) = delete;
    mapping& operator=(const mapping&) = delete;
    ~mapping() { ::munmap(addr, bytes); }
  };
  // Copies of a handle share one mapping in this process.
  std::shared_ptr<mapping> m_;
};

}  // namespace mproc::detail
