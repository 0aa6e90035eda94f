// The per-process owner of one shared region that holds library objects (locks,
// values, arrays). Handles share it through a shared_ptr, so the region is unmapped
// in this process when the last handle here goes away; the memory itself lives while
// any process maps it.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "posix/posix.hpp"
#include "posix/robust_mutex.hpp"
#include "posix/shm_region.hpp"

namespace mproc::detail {

/// Tag for constructors that adopt an existing region (for example one whose
/// descriptor arrived in a spawned child).
struct adopt_region_t {
  explicit adopt_region_t() = default;
};
inline constexpr adopt_region_t adopt_region{};

class shared_block {
 public:
  explicit shared_block(shm_region r) : region_(std::move(r)) {}
  shared_block(const shared_block&) = delete;
  shared_block& operator=(const shared_block&) = delete;

  ~shared_block() {
    // glibc keeps every robust mutex a thread holds on a per-thread list that it (and
    // the kernel, at thread exit) walks through the mutex's address. Unmapping a held
    // mutex would leave a dangling entry there, so the mapping is kept instead: a
    // small leak in a program that already forgot to release a lock.
    if (mutex_ && mutex_->held_in_this_process()) {
      static std::mutex mu;
      static auto* kept = new std::vector<shm_region>;  // never destroyed, on purpose
      std::lock_guard g(mu);
      kept->push_back(std::move(region_));
    }
  }

  [[nodiscard]] const shm_region& region() const noexcept { return region_; }
  template <class T>
  [[nodiscard]] T* at(std::size_t offset) const noexcept {
    return reinterpret_cast<T*>(static_cast<char*>(region_.data()) + offset);
  }
  /// Registers the robust mutex living in this region (see the destructor).
  void set_mutex(robust_mutex* m) noexcept { mutex_ = m; }

 private:
  shm_region region_;
  robust_mutex* mutex_ = nullptr;
};

inline std::shared_ptr<shared_block> make_block(std::size_t bytes, const char* label) {
  return std::make_shared<shared_block>(shm_region::create(bytes, label));
}

/// Timeout in ns for a (block, timeout) pair as Python's acquire(block, timeout):
/// non-blocking means try once.
template <class Rep, class Period>
std::int64_t block_timeout_ns(bool block, std::chrono::duration<Rep, Period> timeout) {
  const std::int64_t ns = to_ns(timeout);  // a NaN is refused even when not blocking
  return block ? ns : 0;
}

template <class Clock, class Dur>
std::int64_t ns_until(std::chrono::time_point<Clock, Dur> tp) {
  return to_ns(tp - Clock::now());
}

}  // namespace mproc::detail
