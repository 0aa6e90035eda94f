// The shared part of an mpmc_ring (see mpmc_ring.hpp): the header page's layout, the
// robust locks' guard, and how each side waits for the other (a short spin, then a
// futex wait on a sequence word) and wakes it.
#pragma once

#include <atomic>
#include <cstdint>

#include "../errors.hpp"
#include "deadline.hpp"
#include "posix/posix.hpp"
#include "posix/robust_mutex.hpp"

namespace mproc::detail {

#if defined(__x86_64__) || defined(__i386__)
inline void ring_spin_pause() noexcept { __builtin_ia32_pause(); }
#else
inline void ring_spin_pause() noexcept {}
#endif

// Each side's hot fields sit on cache lines of their own: a line written by producers
// and read by consumers on every message would bounce between cores.
struct mpmc_ring_header {
  static constexpr std::uint64_t magic_value = 0x6d70726f63515545ull;  // "mprocQUE"
  // Read-mostly.
  std::uint64_t magic;
  std::uint64_t capacity;  // ring bytes, a power of two
  std::uint64_t maxsize;   // messages, 0 = no limit
  std::uint32_t joinable;
  std::atomic<std::uint32_t> closed;
  std::uint64_t overflow_bytes;  // size of the overflow window, 0 = none
  // Producers.
  alignas(64) robust_mutex put_lock;
  alignas(64) std::atomic<std::uint64_t> tail;  // end of the last published record
  std::atomic<std::uint64_t> put_count;         // complete messages published
  std::atomic<std::uint32_t> in_message;        // first fragment out, last one not yet
  std::uint32_t overflow_active;                // new messages go to the overflow area
  std::atomic<std::uint64_t> o_tail;            // end of the last overflow record
  // Consumers.
  alignas(64) robust_mutex get_lock;
  alignas(64) std::atomic<std::uint64_t> head;  // end of the last consumed record
  std::atomic<std::uint64_t> get_count;         // complete messages consumed or dropped
  std::atomic<std::uint64_t> o_head;            // end of the last consumed overflow record
  std::atomic<std::uint64_t> o_punched;         // overflow bytes below this are released
  // Sleeping.
  alignas(64) std::atomic<std::uint32_t> data_seq;  // bumped on publish / close
  std::atomic<std::uint32_t> data_waiters;  // a consumer may sleep on data_seq
  alignas(64) std::atomic<std::uint32_t> space_seq;  // bumped on consume / close
  std::atomic<std::uint32_t> space_waiters;  // a producer may sleep on space_seq
  alignas(64) std::atomic<std::uint32_t> unfinished;  // JoinableQueue tasks; futex word
  std::atomic<std::uint32_t> join_waiters;
};

inline constexpr int ring_spin_rounds = 400;

/// Robust lock held for one operation. A deadline that passes while waiting for
/// the lock is a timeout like any other.
struct ring_lock_guard {
  robust_mutex& m;
  bool locked = false;
  template <class OnOwnerDied>
  ring_lock_guard(robust_mutex& mu, deadline_t deadline, OnOwnerDied&& on_died) : m(mu) {
    switch (m.lock(ns_left(deadline))) {
      case lock_result::acquired: locked = true; break;
      case lock_result::owner_died:
        locked = true;
        try {
          on_died();
        } catch (...) {
          (void)m.unlock();
          throw;
        }
        break;
      case lock_result::already_mine:
        throw state_error("queue operation re-entered on the same thread");
      case lock_result::timed_out: break;
    }
  }
  ~ring_lock_guard() {
    if (locked) (void)m.unlock();
  }
  ring_lock_guard(const ring_lock_guard&) = delete;
  ring_lock_guard& operator=(const ring_lock_guard&) = delete;
};

/// Spins briefly, then sleeps on `seq` until cond() holds or the deadline passes.
/// `sleeping` is a flag, not a count: the notifier clears it when it wakes, so a
/// sleeper that is woken but not yet running (or that died) costs at most one
/// wake-up syscall, not one per message.
template <class Cond>
inline bool ring_wait_until(std::atomic<std::uint32_t>& seq, std::atomic<std::uint32_t>& sleeping,
                            Cond&& cond, deadline_t deadline) {
  if (cond()) return true;
  if (deadline_passed(deadline)) return false;
  for (int i = 0; i < ring_spin_rounds; ++i) {
    ring_spin_pause();
    if (cond()) return true;
  }
  for (;;) {
    sleeping.store(1, std::memory_order_seq_cst);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    // Read the sequence before the condition: a publish after this read changes
    // the word, so the futex wait cannot sleep through it.
    std::uint32_t s = seq.load(std::memory_order_acquire);
    if (cond()) return true;
    std::int64_t left = ns_left(deadline);
    if (left == 0) return false;
    futex_wait(&seq, s, left);
  }
}

inline void ring_notify(std::atomic<std::uint32_t>& seq, std::atomic<std::uint32_t>& sleeping) noexcept {
  // Pairs with the fence in ring_wait_until: either the sleeper sees our store, or we
  // see its flag and wake it.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (sleeping.load(std::memory_order_relaxed) && sleeping.exchange(0, std::memory_order_acq_rel)) {
    seq.fetch_add(1, std::memory_order_release);
    futex_wake(&seq);
  }
}

}  // namespace mproc::detail
