// A "magic ring" mapping: the same `bytes` of a shared file mapped twice, back to back,
// so that a record starting anywhere in the ring can be written and read as one
// contiguous span even when it wraps past the end. That lets encoders and decoders
// work straight on ring memory with no split copies and no padding records.
#pragma once

#include <cstddef>
#include <utility>

#include <sys/mman.h>

#include "posix.hpp"

namespace mproc::detail {

class mirror_map {
 public:
  mirror_map() = default;

  /// Maps [offset, offset + bytes) of fd twice in a row. offset and bytes must be
  /// multiples of the page size.
  mirror_map(int fd, std::size_t offset, std::size_t bytes) : bytes_(bytes) {
    // Reserve 2*bytes of address space first so the two views are adjacent and
    // nothing else can be mapped between them.
    void* base = ::mmap(nullptr, 2 * bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) throw_errno("mmap(ring reservation)");
    auto* b = static_cast<std::byte*>(base);
    for (int i = 0; i < 2; ++i) {
      void* p = ::mmap(b + i * bytes, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd,
                       static_cast<off_t>(offset));
      if (p == MAP_FAILED) {
        int e = errno;
        ::munmap(base, 2 * bytes);
        throw_errno("mmap(ring view)", e);
      }
    }
    base_ = b;
  }

  mirror_map(mirror_map&& o) noexcept
      : base_(std::exchange(o.base_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  mirror_map& operator=(mirror_map&& o) noexcept {
    if (this != &o) {
      reset();
      base_ = std::exchange(o.base_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  mirror_map(const mirror_map&) = delete;
  mirror_map& operator=(const mirror_map&) = delete;
  ~mirror_map() { reset(); }

  /// Start of the ring; data()[i] and data()[i + size()] are the same byte.
  [[nodiscard]] std::byte* data() const noexcept { return base_; }
  [[nodiscard]] std::size_t size() const noexcept { return bytes_; }

 private:
  void reset() noexcept {
    if (base_) ::munmap(base_, 2 * bytes_);
    base_ = nullptr;
  }
  std::byte* base_ = nullptr;
  std::size_t bytes_ = 0;
};

}  // namespace mproc::detail
