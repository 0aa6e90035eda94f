/// \file
/// The proxies to a manager's synchronisation objects: LockProxy, RLockProxy,
/// ConditionProxy, SemaphoreProxy, EventProxy and BarrierProxy. They block in the
/// calling process (on the shared segment) or, over TCP, in the server.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <random>
#include <string>

#include <sys/types.h>
#include <unistd.h>

#include "../detail/manager_messages.hpp"
#include "../detail/posix/posix.hpp"
#include "../detail/posix/robust_mutex.hpp"
#include "base_proxy.hpp"

namespace mproc {

namespace detail::mgr {

/// Names the calling thread to the holder checks of a manager RLock or Condition,
/// also among clients on other hosts: a random number drawn once per process, its pid
/// and the thread id.
inline std::string caller_token() {
  static constinit std::atomic<std::uint64_t> state{0};  // pid << 32 | random
  const auto pid = static_cast<std::uint32_t>(detail::current_pid());
  std::uint64_t cur = state.load();
  while (static_cast<std::uint32_t>(cur >> 32) != pid) {
    std::random_device rd;
    const std::uint64_t mine = std::uint64_t(pid) << 32 | std::uint32_t(rd());
    if (state.compare_exchange_weak(cur, mine)) cur = mine;  // else another thread won: use its draw
  }
  std::uint64_t t = ((cur & 0xffffffffu) ^ pid) << 32 | static_cast<std::uint32_t>(detail::current_tid());
  if (t == 0) t = 1;
  return std::string(reinterpret_cast<const char*>(&t), sizeof t);
}

}  // namespace detail::mgr

/// A lock in the manager (Python's manager.Lock()): any process may release it.
/// Lockable, so std::scoped_lock / std::unique_lock work.
class LockProxy : public BaseProxy {
  using op = detail::mgr::op;

 public:
  LockProxy() = default;

  /// Takes the lock, waiting when `block`; returns whether it was taken.
  bool acquire(bool block = true) { return acquire_op(op::lock_acquire, block, -1); }
  /// False if the lock could not be taken before the timeout.
  template <class Rep, class Period>
  bool acquire(bool block, std::chrono::duration<Rep, Period> timeout) {
    const std::int64_t ns = detail::to_ns(timeout);  // a NaN is refused even when not blocking
    return acquire_op(op::lock_acquire, block, ns);
  }
  /// state_error if the lock is not held.
  void release() { call(op::lock_release); }
  /// Lockable: acquire(true).
  void lock() { acquire(true); }
  /// Lockable: acquire(false).
  bool try_lock() { return acquire(false); }
  /// Lockable: release().
  void unlock() { release(); }

 private:
  friend class Manager;
  using BaseProxy::BaseProxy;
};

/// An event in the manager (Python's manager.Event()).
class EventProxy : public BaseProxy {
  using op = detail::mgr::op;

 public:
  EventProxy() = default;
  /// Sets the flag and wakes every waiter.
  void set() { call(op::event_set); }
  /// Clears the flag.
  void clear() { call(op::event_clear); }
  /// True while the flag is set.
  [[nodiscard]] bool is_set() const { return call(op::event_is_set).n != 0; }
  /// Waits until the flag is set; returns it.
  bool wait() { return call(op::event_wait, {}, {}, 0, -1).n != 0; }
  /// False if the flag is still clear when the timeout passes.
  template <class Rep, class Period>
  bool wait(std::chrono::duration<Rep, Period> timeout) {
    return call(op::event_wait, {}, {}, 0, detail::to_ns(timeout)).n != 0;
  }

 private:
  friend class Manager;
  using BaseProxy::BaseProxy;
};

/// A semaphore in the manager (manager.Semaphore() and manager.BoundedSemaphore();
/// releasing a bounded one above its initial value raises value_error).
class SemaphoreProxy : public BaseProxy {
  using op = detail::mgr::op;

 public:
  SemaphoreProxy() = default;
  /// Decrements the counter, waiting while it is 0 when `block`; true when decremented.
  bool acquire(bool block = true) { return acquire_op(op::sem_acquire, block, -1); }
  /// As acquire(block), waiting at most `timeout`.
  template <class Rep, class Period>
  bool acquire(bool block, std::chrono::duration<Rep, Period> timeout) {
    return acquire_op(op::sem_acquire, block, block ? detail::to_ns(timeout) : 0);
  }
  /// Adds `n` to the counter (value_error past a BoundedSemaphore's bound, or for n < 1).
  void release(std::int64_t n = 1) { call(op::sem_release, {}, {}, n); }
  /// The counter's value.
  [[nodiscard]] std::int64_t get_value() const { return call(op::sem_value).n; }
  /// Lockable: acquire(true).
  void lock() { acquire(true); }
  /// Lockable: acquire(false).
  bool try_lock() { return acquire(false); }
  /// Lockable: release().
  void unlock() { release(); }

 private:
  friend class Manager;
  using BaseProxy::BaseProxy;
};

/// A recursive lock in the manager (Python's manager.RLock()): the thread holding it
/// may take it again, and only that thread may release it (state_error otherwise).
class RLockProxy : public BaseProxy {
  using op = detail::mgr::op;

 public:
  RLockProxy() = default;
  /// Takes the lock (again, if this thread holds it), waiting when `block`; true when taken.
  bool acquire(bool block = true) { return acquire_op(op::rlock_acquire, block, -1, detail::mgr::caller_token()); }
  /// As acquire(block), waiting at most `timeout`.
  template <class Rep, class Period>
  bool acquire(bool block, std::chrono::duration<Rep, Period> timeout) {
    return acquire_op(op::rlock_acquire, block, block ? detail::to_ns(timeout) : 0, detail::mgr::caller_token());
  }
  /// Releases one level; state_error unless the calling thread holds it.
  void release() { call(op::rlock_release, {}, detail::mgr::caller_token()); }
  /// Lockable: acquire(true).
  void lock() { acquire(true); }
  /// Lockable: acquire(false).
  bool try_lock() { return acquire(false); }
  /// Lockable: release().
  void unlock() { release(); }

 protected:
  using BaseProxy::BaseProxy;

 private:
  friend class Manager;
};

/// A condition variable in the manager with its own RLock (Python's
/// manager.Condition()). wait() and notify() need the lock held by the caller.
class ConditionProxy : public RLockProxy {
  using op = detail::mgr::op;

 public:
  ConditionProxy() = default;
  /// Releases the lock, waits for a notify, takes the lock back.
  bool wait() { return call(op::cond_wait, {}, detail::mgr::caller_token(), 0, -1).n != 0; }
  /// As wait(); false when the timeout passed without a notify (the lock is taken
  /// back either way).
  template <class Rep, class Period>
  bool wait(std::chrono::duration<Rep, Period> timeout) {
    return call(op::cond_wait, {}, detail::mgr::caller_token(), 0, detail::to_ns(timeout)).n != 0;
  }
  /// Waits until pred() holds or the timeout passes; returns pred()'s last value.
  template <class Pred, class Rep, class Period>
  bool wait_for(Pred pred, std::chrono::duration<Rep, Period> timeout) {
    const detail::deadline_t end = detail::deadline_after(detail::to_ns(timeout));
    bool ok = pred();
    while (!ok) {
      if (end == detail::no_deadline) {
        (void)wait();
      } else {
        const std::int64_t left = detail::ns_left(end);
        if (left == 0) break;
        (void)wait(std::chrono::nanoseconds(left));
      }
      ok = pred();
    }
    return ok;
  }
  /// Waits until pred() holds.
  template <class Pred>
  void wait_for(Pred pred) {
    while (!pred()) (void)wait();
  }
  /// Wakes up to n waiters.
  void notify(std::int64_t n = 1) { call(op::cond_notify, {}, detail::mgr::caller_token(), n); }
  /// Wakes every waiter.
  void notify_all() { call(op::cond_notify, {}, detail::mgr::caller_token(), -1); }

 private:
  friend class Manager;
  using RLockProxy::RLockProxy;
};

/// A barrier in the manager (Python's manager.Barrier(parties, timeout=)); wait()
/// returns the arrival index. A timeout, abort() or reset() while parties wait breaks
/// it: they raise broken_barrier_error.
class BarrierProxy : public BaseProxy {
  using op = detail::mgr::op;

 public:
  BarrierProxy() = default;
  /// Waits for the other parties, or the barrier's default timeout if it has one.
  std::size_t wait() { return static_cast<std::size_t>(call(op::barrier_wait, {}, {}, 0, -2).n); }
  /// As wait(), raising broken_barrier_error when `timeout` passes first.
  template <class Rep, class Period>
  std::size_t wait(std::chrono::duration<Rep, Period> timeout) {
    return static_cast<std::size_t>(call(op::barrier_wait, {}, {}, 0, detail::to_ns(timeout)).n);
  }
  /// Puts the barrier back to its initial state; parties waiting now get broken_barrier_error.
  void reset() { call(op::barrier_reset); }
  /// Breaks the barrier: waits raise broken_barrier_error until reset().
  void abort() { call(op::barrier_abort); }
  /// Parties needed to pass.
  [[nodiscard]] std::size_t parties() const { return static_cast<std::size_t>(call(op::barrier_info).n); }
  /// Parties waiting now.
  [[nodiscard]] std::size_t n_waiting() const {
    return static_cast<std::size_t>(call(op::barrier_info).number(0, "barrier waiting count"));
  }
  /// True when the barrier is broken (until reset()).
  [[nodiscard]] bool broken() const { return call(op::barrier_info).field(1, "barrier broken flag") != "0"; }

 private:
  friend class Manager;
  using BaseProxy::BaseProxy;
};

}  // namespace mproc
