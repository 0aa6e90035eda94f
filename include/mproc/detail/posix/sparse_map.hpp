// A large, sparsely backed window of a shared file: pages take memory only once
// written and give it back when punched out. Used for a queue's overflow area, which
// may grow to whatever producers put while nobody reads, and shrinks as it is read.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "posix.hpp"

namespace mproc::detail {

/// Makes the file at least `bytes` long without allocating anything.
inline void grow_sparse(int fd, std::size_t bytes) {
  check(::ftruncate(fd, static_cast<off_t>(bytes)), "ftruncate(sparse)");
}

/// Returns the pages of [offset, offset + len) to the system; they read as zeros after.
/// Reports failure instead of throwing: callers use it after a message is already
/// delivered, where an exception would lose that message; the memory is merely kept.
[[nodiscard]] inline bool punch_hole(int fd, std::size_t offset, std::size_t len) noexcept {
  if (len == 0) return true;
  return retry_eintr([&] {
           return ::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                              static_cast<off_t>(len));
         }) == 0;
}

/// Faults in the pages of [p, p + len) for writing with one call instead of one trap
/// per page: large destinations fill markedly faster. Best effort: kernels before
/// 5.14 lack MADV_POPULATE_WRITE and simply fault on first touch as usual.
inline void prefault_write(void* p, std::size_t len) noexcept {
#ifndef MADV_POPULATE_WRITE
  constexpr int MADV_POPULATE_WRITE = 23;
#endif
  constexpr std::uintptr_t page = 4096;
  auto a = reinterpret_cast<std::uintptr_t>(p);
  std::uintptr_t start = (a + page - 1) & ~(page - 1);  // whole pages only: the partial
  std::uintptr_t end = (a + len) & ~(page - 1);         // ones at the edges are shared
  if (end > start) (void)::madvise(reinterpret_cast<void*>(start), end - start, MADV_POPULATE_WRITE);
}

class sparse_map {
 public:
  sparse_map() = default;
  sparse_map(int fd, std::size_t offset, std::size_t bytes) : bytes_(bytes) {
    // NORESERVE: the window is address space, not a commitment of memory.
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd,
                     static_cast<off_t>(offset));
    if (p == MAP_FAILED) throw_errno("mmap(sparse window)");
    base_ = static_cast<std::byte*>(p);
  }
  sparse_map(sparse_map&& o) noexcept
      : base_(std::exchange(o.base_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  sparse_map& operator=(sparse_map&& o) noexcept {
    if (this != &o) {
      reset();
      base_ = std::exchange(o.base_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  sparse_map(const sparse_map&) = delete;
  sparse_map& operator=(const sparse_map&) = delete;
  ~sparse_map() { reset(); }

  [[nodiscard]] std::byte* data() const noexcept { return base_; }
  [[nodiscard]] std::size_t size() const noexcept { return bytes_; }

 private:
  void reset() noexcept {
    if (base_) ::munmap(base_, bytes_);
    base_ = nullptr;
  }
  std::byte* base_ = nullptr;
  std::size_t bytes_ = 0;
};

}  // namespace mproc::detail
