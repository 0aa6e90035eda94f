/// \file
/// Process-shared synchronization primitives: Lock, RLock, Semaphore,
/// BoundedSemaphore, Event, Condition, Barrier.
///
/// Each object lives in anonymous shared memory (memfd, nothing in /dev/shm). The
/// classes are handles: copies, and copies inherited by a forked child, refer to the
/// same object. Every blocking call has a timeout variant on CLOCK_MONOTONIC.
///
/// Locks are robust: a process (or thread) that dies holding a Lock or RLock does not
/// deadlock the others. The next acquire succeeds, owner_died() on that handle
/// reports true until the next acquire, and a warning is logged (mproc::log_to_stderr).
/// Data the dead owner was changing may be half-updated; owner_died() is the cue to
/// repair it.
///
/// Built on futex words in the shared region (Semaphore, Event, Condition, Barrier)
/// and robust pthread mutexes (Lock, RLock; see detail/posix/robust_mutex.hpp) rather
/// than Boost.Interprocess's primitives: interprocess_mutex is not robust, its
/// semaphore times out against CLOCK_REALTIME (a clock step changes the wait), and its
/// condition is a process-shared pthread condvar, whose notify can block for good on a
/// waiter that was killed inside wait().
///
/// Differences from Python, by design:
///  - Lock and RLock are owned by the thread that acquired them; release() from any
///    other thread or process raises mproc::lock_error (Python allows another process
///    to release a Lock; use a Semaphore(1) for that hand-off pattern).
///  - A blocking acquire() of a Lock the calling thread already holds raises
///    lock_error instead of deadlocking; a timed or non-blocking one returns false at
///    once.
///  - Condition::wait may return true without a matching notify (a spurious wakeup,
///    as with std::condition_variable), and notify(n) may wake more than n waiters;
///    wait_for(pred, timeout) is the robust form.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <new>
#include <optional>
#include <stdexcept>
#include <memory>
#include <string>
#include <type_traits>

#include <sys/stat.h>

#include "detail/log.hpp"
#include "detail/posix/posix.hpp"
#include "detail/posix/robust_mutex.hpp"
#include "detail/shared_block.hpp"
#include "errors.hpp"
#include "detail/callable.hpp"
#include "detail/handle_passing.hpp"

namespace mproc {

namespace detail {

/// Shared state of a Lock or RLock. Kept within one cache line.
struct alignas(64) mutex_state {
  robust_mutex m;  ///< the lock itself
  std::atomic<std::uint32_t> owner_died{0};  ///< set by the acquire that recovered
  std::uint32_t depth = 0;                   ///< RLock recursion; touched by the owner only
};
static_assert(sizeof(mutex_state) <= 64);

/// Implementation shared by Lock and RLock (Condition holds either through it).
struct share_lock_t {
  explicit share_lock_t() = default;
};
inline constexpr share_lock_t share_lock{};

class basic_lock {
 public:
  /// The underlying state at `offset` of an existing block (Value/Array keep their
  /// lock next to the data: one region, one descriptor).
  basic_lock(std::shared_ptr<shared_block> block, std::size_t offset, bool recursive, bool init)
      : block_(std::move(block)), st_(block_->at<mutex_state>(offset)), recursive_(recursive) {
    if (init) {
      new (st_) mutex_state;
      st_->m.init();
    }
    block_->set_mutex(&st_->m);
  }
  /// A new lock in its own shared memory; `recursive` makes it an RLock.
  explicit basic_lock(bool recursive)
      : basic_lock(make_block(sizeof(mutex_state), recursive ? "mproc-rlock" : "mproc-lock"), 0,
                   recursive, true) {}
  // Handles copy (sharing the object) and have no separate move: a moved-from
  // handle stays usable instead of holding a dangling pointer.
  /// Another handle on the same lock.
  basic_lock(const basic_lock&) = default;
  /// Another handle on the same lock.
  basic_lock& operator=(const basic_lock&) = default;

  /// timeout_ns < 0 blocks; 0 tries once.
  bool acquire_ns(std::int64_t timeout_ns) {
    switch (st_->m.lock(timeout_ns)) {
      case lock_result::acquired:
        st_->owner_died.store(0, std::memory_order_relaxed);
        st_->depth = 1;
        return true;
      case lock_result::owner_died:
        st_->owner_died.store(1, std::memory_order_relaxed);
        st_->depth = 1;
        detail::log(log_level::warning,
                    "%s: previous owner died holding it; acquired, protected data may be inconsistent",
                    kind());
        return true;
      case lock_result::already_mine:
        if (recursive_) {
          ++st_->depth;
          return true;
        }
        if (timeout_ns < 0)
          throw lock_error("Lock.acquire(): the calling thread already holds this Lock, which is "
                           "not recursive (this would deadlock; use RLock)");
        return false;
      case lock_result::timed_out: return false;
    }
    return false;
  }

  /// Releases one level; raises lock_error unless the calling thread holds the lock.
  void release() {
    if (!st_->m.held_by_caller())
      throw lock_error(std::string(kind()) +
                       ".release(): the calling thread does not hold this lock");
    if (recursive_ && --st_->depth > 0) return;
    st_->depth = 0;
    if (!st_->m.unlock())
      throw lock_error(std::string(kind()) + ".release(): pthread_mutex_unlock refused (not owner)");
  }

  /// Releases every level held by the caller (for Condition::wait); returns the depth.
  std::uint32_t release_all(const char* who) {
    if (!st_->m.held_by_caller())
      throw lock_error(std::string(who) + ": cannot wait on an un-acquired lock");
    std::uint32_t d = st_->depth;
    st_->depth = 0;
    (void)st_->m.unlock();
    return d;
  }
  /// Takes the lock again after release_all(), restoring `depth` levels.
  void reacquire(std::uint32_t depth) {
    acquire_ns(-1);
    st_->depth = depth;
  }

  /// True when the calling thread holds the lock.
  [[nodiscard]] bool held_by_caller() const noexcept { return st_->m.held_by_caller(); }
  /// True when the acquire that gave the current holder the lock found its previous
  /// owner dead. Meaningful to the holder; cleared by the next acquire.
  [[nodiscard]] bool owner_died() const noexcept {
    return st_->owner_died.load(std::memory_order_relaxed) != 0;
  }
  /// The shared memory holding the lock (with shared_offset(), what a spawned child receives).
  [[nodiscard]] const shm_region& shared_region() const noexcept { return block_->region(); }
  /// Where the lock's state lies in shared_region() (with the region, what another
  /// process needs to adopt the same lock).
  [[nodiscard]] std::size_t shared_offset() const noexcept {
    return std::size_t(reinterpret_cast<const char*>(st_) -
                       static_cast<const char*>(block_->region().data()));
  }
  /// True when both handles name one lock, also when it reached this process twice
  /// (two handles received from a parent map its memory at two addresses).
  [[nodiscard]] bool same_object(const basic_lock& o) const noexcept {
    if (st_ == o.st_) return true;
    if (shared_offset() != o.shared_offset()) return false;
    return detail::same_file(block_->region().fd(), o.block_->region().fd());
  }
  /// Two handles on the same lock (see same_object()).
  friend bool operator==(const basic_lock& a, const basic_lock& b) noexcept {
    return a.same_object(b);
  }
  /// True for an RLock.
  [[nodiscard]] bool recursive() const noexcept { return recursive_; }

 protected:
  const char* kind() const noexcept { return recursive_ ? "RLock" : "Lock"; }

  std::shared_ptr<shared_block> block_;
  mutex_state* st_;
  bool recursive_;
};

/// The Lockable / TimedLockable surface shared by every acquire/release type.
template <class Derived>
class lockable_api {
 public:
  /// Lockable (std::scoped_lock, std::unique_lock): acquire().
  void lock() { self().acquire(); }
  /// Lockable: release().
  void unlock() { self().release(); }
  /// Lockable: acquire(false).
  [[nodiscard]] bool try_lock() { return self().acquire(false); }
  /// TimedLockable: acquire(true, d).
  template <class Rep, class Period>
  [[nodiscard]] bool try_lock_for(std::chrono::duration<Rep, Period> d) {
    return self().acquire(true, d);
  }
  /// TimedLockable: acquire(true) until `tp`.
  template <class Clock, class Dur>
  [[nodiscard]] bool try_lock_until(std::chrono::time_point<Clock, Dur> tp) {
    return self().acquire(true, tp - Clock::now());
  }

 private:
  Derived& self() { return static_cast<Derived&>(*this); }
};

}  // namespace detail

/// Non-recursive, process-shared, robust mutex.
class Lock : public detail::basic_lock, public detail::lockable_api<Lock> {
 public:
  Lock() : basic_lock(false) {}
  /// Adopts the lock at `offset` in `b` (for objects that keep a lock in their own region).
  Lock(detail::adopt_region_t, std::shared_ptr<detail::shared_block> b, std::size_t offset, bool init)
      : basic_lock(std::move(b), offset, false, init) {}

  /// Blocks until acquired; raises lock_error if this thread already holds it.
  bool acquire() { return acquire_ns(-1); }
  /// Python's acquire(block): non-blocking tries once.
  bool acquire(bool block) { return acquire_ns(block ? -1 : 0); }
  /// Waits at most `timeout` (once, without blocking, when `block` is false); true when acquired.
  template <class Rep, class Period>
  [[nodiscard]] bool acquire(bool block, std::chrono::duration<Rep, Period> timeout) {
    return acquire_ns(detail::block_timeout_ns(block, timeout));
  }
  using basic_lock::release;
  using lockable_api<Lock>::lock;
  using lockable_api<Lock>::unlock;
  using lockable_api<Lock>::try_lock;
  using lockable_api<Lock>::try_lock_for;
  using lockable_api<Lock>::try_lock_until;
};

/// Recursive, process-shared, robust mutex: the owning thread may acquire it again
/// and must release it as many times.
class RLock : public detail::basic_lock, public detail::lockable_api<RLock> {
 public:
  RLock() : basic_lock(true) {}
  /// Adopts the lock at `offset` in `b` (for objects that keep a lock in their own region).
  RLock(detail::adopt_region_t, std::shared_ptr<detail::shared_block> b, std::size_t offset, bool init)
      : basic_lock(std::move(b), offset, true, init) {}
  /// Another handle of an existing lock, behaving as that lock does (a Lock given to
  /// Value/Array as their lock stays non-recursive).
  RLock(detail::share_lock_t, const basic_lock& other) : basic_lock(other) {}

  /// Blocks until acquired (at once when this thread already holds it: one more level).
  bool acquire() { return acquire_ns(-1); }
  /// Python's acquire(block): non-blocking tries once.
  bool acquire(bool block) { return acquire_ns(block ? -1 : 0); }
  /// Waits at most `timeout` (once, without blocking, when `block` is false); true when acquired.
  template <class Rep, class Period>
  [[nodiscard]] bool acquire(bool block, std::chrono::duration<Rep, Period> timeout) {
    return acquire_ns(detail::block_timeout_ns(block, timeout));
  }
  using basic_lock::release;
  /// Levels held by the calling thread (0 when it does not hold the lock).
  [[nodiscard]] unsigned recursion_depth() const noexcept {
    return held_by_caller() ? st_->depth : 0;
  }
};

namespace detail {

inline constexpr std::uint32_t unbounded_semaphore = UINT32_MAX;  ///< value of max meaning "no bound" (a Semaphore, not a BoundedSemaphore)

struct alignas(64) semaphore_state {
  std::atomic<std::uint32_t> value;    // futex word
  std::atomic<std::uint32_t> waiters;  // sleepers, so release can skip the syscall
  std::uint32_t max;                   // the bound; unbounded_semaphore for none
};

/// r, checked to hold at least `bytes` (an adopted region comes from elsewhere).
inline shm_region require_size(shm_region r, std::size_t bytes, const char* what) {
  if (r.size() < bytes)
    throw value_error(std::string("mproc ") + what + ": adopted region of " +
                                std::to_string(r.size()) + " bytes is too small");
  return r;
}

class basic_semaphore {
 public:
  basic_semaphore(unsigned initial, unsigned max, const char* label)
      : block_(make_block(sizeof(semaphore_state), label)), st_(block_->at<semaphore_state>(0)) {
    if (initial > static_cast<unsigned>(INT32_MAX))
      throw value_error("Semaphore: initial value " + std::to_string(initial) +
                                  " is negative or too large (at most 2147483647)");
    if (max != unbounded_semaphore && initial > max)
      throw value_error("BoundedSemaphore: initial value " + std::to_string(initial) +
                                  " exceeds its bound " + std::to_string(max));
    new (st_) semaphore_state{{initial}, {0}, max};
  }
  /// Adopts an existing semaphore's region (received in a spawned child).
  basic_semaphore(adopt_region_t, shm_region r)
      : block_(std::make_shared<shared_block>(require_size(std::move(r), sizeof(semaphore_state),
                                                           "Semaphore"))),
        st_(block_->at<semaphore_state>(0)) {}
  basic_semaphore(const basic_semaphore&) = default;
  basic_semaphore& operator=(const basic_semaphore&) = default;

  /// Acquires, waiting at most `timeout_ns` (negative: forever; 0: try once); true when acquired.
  bool acquire_ns(std::int64_t timeout_ns) {
    const deadline_t dl = deadline_after(timeout_ns);
    for (;;) {
      std::uint32_t v = st_->value.load(std::memory_order_relaxed);
      while (v > 0) {
        if (st_->value.compare_exchange_weak(v, v - 1, std::memory_order_acquire,
                                             std::memory_order_relaxed))
          return true;
      }
      if (timeout_ns == 0 || detail::deadline_passed(dl)) return false;
      st_->waiters.fetch_add(1, std::memory_order_seq_cst);
      bool in_time = futex_wait(&st_->value, 0, detail::ns_left(dl));
      st_->waiters.fetch_sub(1, std::memory_order_relaxed);
      if (!in_time && st_->value.load(std::memory_order_relaxed) == 0) return false;
    }
  }

  /// Adds `n` to the counter and wakes as many waiters; lock_error past a BoundedSemaphore's bound.
  void release(unsigned n = 1) {
    std::uint32_t v = st_->value.load(std::memory_order_relaxed);
    for (;;) {
      std::uint64_t next = std::uint64_t(v) + n;
      if (st_->max != unbounded_semaphore && next > st_->max)
        throw lock_error("BoundedSemaphore.release(): released too many times (value " +
                         std::to_string(v) + ", bound " + std::to_string(st_->max) + ")");
      if (next > INT32_MAX) throw lock_error("Semaphore.release(): value would overflow");
      if (st_->value.compare_exchange_weak(v, static_cast<std::uint32_t>(next),
                                           std::memory_order_seq_cst, std::memory_order_relaxed))
        break;
    }
    if (st_->waiters.load(std::memory_order_seq_cst) != 0)
      futex_wake(&st_->value, static_cast<int>(n));
  }

  /// Current value (Python's get_value()).
  [[nodiscard]] unsigned get_value() const noexcept {
    return st_->value.load(std::memory_order_relaxed);
  }
  /// The shared memory holding the semaphore (what a spawned child receives).
  [[nodiscard]] const shm_region& shared_region() const noexcept { return block_->region(); }

 protected:
  std::shared_ptr<shared_block> block_;
  semaphore_state* st_;
};

}  // namespace detail

/// Counting semaphore shared between processes.
class Semaphore : public detail::basic_semaphore, public detail::lockable_api<Semaphore> {
 public:
  /// A semaphore with the counter at `value`.
  explicit Semaphore(unsigned value = 1)
      : basic_semaphore(value, detail::unbounded_semaphore, "mproc-semaphore") {}
  /// Adopts an existing semaphore (its region received after spawn).
  Semaphore(detail::adopt_region_t t, detail::shm_region r) : basic_semaphore(t, std::move(r)) {}

  /// Decrements the counter, blocking while it is 0.
  bool acquire() { return acquire_ns(-1); }
  /// Python's acquire(block): non-blocking tries once; true when decremented.
  bool acquire(bool block) { return acquire_ns(block ? -1 : 0); }
  /// Waits at most `timeout` for the counter to be above 0; true when decremented.
  template <class Rep, class Period>
  [[nodiscard]] bool acquire(bool block, std::chrono::duration<Rep, Period> timeout) {
    return acquire_ns(detail::block_timeout_ns(block, timeout));
  }

 protected:
  Semaphore(unsigned value, unsigned max) : basic_semaphore(value, max, "mproc-bsemaphore") {}
};

/// A Semaphore whose value may never exceed its initial value: an extra release()
/// raises lock_error.
class BoundedSemaphore : public Semaphore {
 public:
  /// A bounded semaphore starting at, and bounded by, `value`.
  explicit BoundedSemaphore(unsigned value = 1) : Semaphore(value, value) {}
  /// Adopts an existing bounded semaphore (the bound lives in the shared state).
  BoundedSemaphore(detail::adopt_region_t t, detail::shm_region r) : Semaphore(t, std::move(r)) {}
};

namespace detail {
struct alignas(64) event_state {
  std::atomic<std::uint32_t> flag{0};     // futex word
  std::atomic<std::uint32_t> waiters{0};  // lets set() skip the syscall when idle
};
}  // namespace detail

/// A flag processes can wait for.
class Event {
 public:
  Event()
      : block_(detail::make_block(sizeof(detail::event_state), "mproc-event")),
        st_(new (block_->at<void>(0)) detail::event_state) {}
  /// Adopts an existing event (its region received after spawn).
  Event(detail::adopt_region_t, detail::shm_region r)
      : block_(std::make_shared<detail::shared_block>(
            detail::require_size(std::move(r), sizeof(detail::event_state), "Event"))),
        st_(block_->at<detail::event_state>(0)) {}
  /// Another handle on the same event.
  Event(const Event&) = default;
  /// Another handle on the same event.
  Event& operator=(const Event&) = default;

  /// Sets the flag and wakes every waiter.
  void set() noexcept {
    flag()->store(1, std::memory_order_seq_cst);
    if (waiters()->load(std::memory_order_seq_cst) != 0) detail::futex_wake(flag());
  }
  /// Clears the flag.
  void clear() noexcept { flag()->store(0, std::memory_order_seq_cst); }
  /// True while the flag is set.
  [[nodiscard]] bool is_set() const noexcept { return flag()->load(std::memory_order_acquire) != 0; }

  /// Blocks until the flag is set.
  bool wait() { return wait_ns(-1); }
  /// Returns the flag: false when the timeout passed first.
  template <class Rep, class Period>
  [[nodiscard]] bool wait(std::chrono::duration<Rep, Period> timeout) {
    return wait_ns(detail::to_ns(timeout));
  }
  /// The shared memory holding the event (what a spawned child receives).
  [[nodiscard]] const detail::shm_region& shared_region() const noexcept { return block_->region(); }

 private:
  bool wait_ns(std::int64_t timeout_ns) {
    const detail::deadline_t dl = detail::deadline_after(timeout_ns);
    while (!is_set()) {
      if (detail::deadline_passed(dl)) return false;
      waiters()->fetch_add(1, std::memory_order_seq_cst);
      detail::futex_wait(flag(), 0, detail::ns_left(dl));
      waiters()->fetch_sub(1, std::memory_order_relaxed);
    }
    return true;
  }
  std::atomic<std::uint32_t>* flag() const noexcept { return &st_->flag; }
  std::atomic<std::uint32_t>* waiters() const noexcept { return &st_->waiters; }

  std::shared_ptr<detail::shared_block> block_;
  detail::event_state* st_;
};

namespace detail {

/// Condition variable state. Waiters sleep on `seq`, read while holding the lock;
/// notify bumps it, so a waiter that has released the lock but not yet slept cannot
/// miss a notification, and notify_all wakes everyone waiting at that moment. No
/// waiter is needed for anyone else to make progress, so a process that dies inside
/// wait() cannot block notify().
struct alignas(64) condition_state {
  std::atomic<std::uint32_t> seq{0};
  std::atomic<std::uint32_t> waiters{0};  // lets notify skip the syscall when idle
};

class condition_core {
 public:
  condition_core()
      : block_(make_block(sizeof(condition_state), "mproc-condition")),
        st_(new (block_->at<void>(0)) condition_state) {}
  condition_core(adopt_region_t, shm_region r)
      : block_(std::make_shared<shared_block>(
            require_size(std::move(r), sizeof(condition_state), "Condition"))),
        st_(block_->at<condition_state>(0)) {}
  condition_core(const condition_core&) = default;
  condition_core& operator=(const condition_core&) = default;

  /// The caller holds the lock. Returns false on timeout.
  bool wait(basic_lock& lk, std::int64_t timeout_ns) {
    const deadline_t dl = deadline_after(timeout_ns);
    const std::uint32_t s = st_->seq.load(std::memory_order_seq_cst);
    st_->waiters.fetch_add(1, std::memory_order_seq_cst);
    std::uint32_t depth;
    try {
      depth = lk.release_all("Condition.wait()");
    } catch (...) {
      st_->waiters.fetch_sub(1, std::memory_order_seq_cst);
      throw;
    }
    bool woken;
    while (!(woken = st_->seq.load(std::memory_order_seq_cst) != s) && !detail::deadline_passed(dl))
      futex_wait(&st_->seq, s, detail::ns_left(dl));
    st_->waiters.fetch_sub(1, std::memory_order_seq_cst);
    lk.reacquire(depth);
    return woken;
  }

  /// The caller holds the lock. Wakes at least min(n, waiters) waiters; waiters that
  /// had not yet gone to sleep may wake too.
  void notify(std::uint32_t n) {
    if (n == 0 || st_->waiters.load(std::memory_order_seq_cst) == 0) return;
    st_->seq.fetch_add(1, std::memory_order_seq_cst);
    futex_wake(&st_->seq, n > INT32_MAX ? INT32_MAX : static_cast<int>(n));
  }

  [[nodiscard]] const shm_region& shared_region() const noexcept { return block_->region(); }

 private:
  std::shared_ptr<shared_block> block_;
  condition_state* st_;
};

}  // namespace detail

/// A condition variable shared between processes, with its lock (an RLock unless
/// one is given). wait(), notify() and notify_all() require the caller to hold it.
class Condition : public detail::lockable_api<Condition> {
 public:
  Condition() : lock_(RLock()) {}
  /// A condition using `l` as its lock.
  explicit Condition(const Lock& l) : lock_(l) {}
  /// A condition using `l` as its lock.
  explicit Condition(const RLock& l) : lock_(l) {}
  /// Adopts an existing condition: its lock and its own state (received after spawn).
  Condition(detail::adopt_region_t, detail::basic_lock lock, detail::condition_core core)
      : lock_(std::move(lock)), core_(std::move(core)) {}
  /// The parts another process needs to adopt this condition.
  [[nodiscard]] const detail::basic_lock& shared_lock() const noexcept { return lock_; }
  /// The state another process needs to adopt this condition, besides its lock.
  [[nodiscard]] const detail::condition_core& shared_core() const noexcept { return core_; }

  /// Takes the condition's lock.
  bool acquire() { return lock_.acquire_ns(-1); }
  /// Takes the condition's lock; non-blocking tries once.
  bool acquire(bool block) { return lock_.acquire_ns(block ? -1 : 0); }
  /// Takes the condition's lock, waiting at most `timeout`; true when acquired.
  template <class Rep, class Period>
  [[nodiscard]] bool acquire(bool block, std::chrono::duration<Rep, Period> timeout) {
    return lock_.acquire_ns(detail::block_timeout_ns(block, timeout));
  }
  /// Releases the condition's lock.
  void release() { lock_.release(); }

  /// Releases the lock, sleeps until notified, re-acquires it.
  void wait() { (void)core_.wait(lock_, -1); }
  /// False when the timeout passed without a notification.
  template <class Rep, class Period>
  bool wait(std::chrono::duration<Rep, Period> timeout) {
    return core_.wait(lock_, detail::to_ns(timeout));
  }
  /// Waits until pred() holds; returns pred()'s last value (false on timeout).
  template <class Pred>
  bool wait_for(Pred pred) {
    while (!pred()) core_.wait(lock_, -1);
    return true;
  }
  /// As wait_for(pred), giving up after `timeout`: returns pred()'s last value.
  template <class Pred, class Rep, class Period>
  bool wait_for(Pred pred, std::chrono::duration<Rep, Period> timeout) {
    const detail::deadline_t dl = detail::deadline_after(detail::to_ns(timeout));
    bool ok = pred();
    while (!ok) {
      if (detail::deadline_passed(dl)) break;
      core_.wait(lock_, detail::ns_left(dl));
      ok = pred();
    }
    return ok;
  }

  /// Wakes up to `n` waiters; raises lock_error unless the caller holds the lock.
  void notify(unsigned n = 1) {
    require_owned("Condition.notify()");
    core_.notify(n);
  }
  /// Wakes every waiter; raises lock_error unless the caller holds the lock.
  void notify_all() {
    require_owned("Condition.notify_all()");
    core_.notify(UINT32_MAX);
  }

 private:
  void require_owned(const char* who) const {
    if (!lock_.held_by_caller()) throw lock_error(std::string(who) + ": cannot notify on an un-acquired lock");
  }

  detail::basic_lock lock_;
  detail::condition_core core_;
};

namespace detail {

struct alignas(64) barrier_state {
  mutex_state lock;                     // guards the fields below
  std::atomic<std::uint32_t> seq{0};    // futex word; bumped on every state change
  std::int32_t state = 0;               // 0 filling, 1 draining, -1 resetting, -2 broken
  std::uint32_t count = 0;              // parties inside wait()
  std::uint32_t parties = 0;
  std::int64_t default_timeout_ns = -1;  // wait() without a timeout; -1: none
};

}  // namespace detail

/// A barrier for a fixed number of parties (Python's Barrier). wait() returns each
/// party's arrival index (0 .. parties-1); a timeout, abort() or reset() while parties
/// wait breaks it, and every waiter then raises broken_barrier_error.
///
/// A party that dies inside wait() never arrives: the others then time out (when they
/// gave a timeout) and the barrier is broken, which reset() repairs once no party is
/// left inside.
class Barrier {
 public:
  /// Python's Barrier(parties, action=None, timeout=None). The action runs in the last
  /// party to arrive, before any is released. An action that is a plain function (a
  /// free function, a captureless lambda) comes along when the barrier is passed to a
  /// spawn or forkserver child; any other (a closure) stays in this process. `timeout`
  /// is what wait() without one uses, in every process that shares the barrier.
  explicit Barrier(unsigned parties) : Barrier(parties, std::function<void()>{}, -1) {}
  /// Python's Barrier(parties, action): see Barrier(unsigned).
  template <class F>
    requires std::is_constructible_v<std::function<void()>, F>
  Barrier(unsigned parties, F action) : Barrier(parties, std::move(action), -1) {}
  /// Python's Barrier(parties, action, timeout): see Barrier(unsigned).
  template <class F, class Rep, class Period>
    requires std::is_constructible_v<std::function<void()>, F>
  Barrier(unsigned parties, F action, std::chrono::duration<Rep, Period> timeout)
      : Barrier(parties, std::move(action), detail::to_ns(timeout)) {}

  /// Adopts an existing barrier (its region received after spawn), with the creating
  /// process's action if that was a plain function.
  Barrier(detail::adopt_region_t, detail::shm_region r, void (*action)() = nullptr)
      : block_(std::make_shared<detail::shared_block>(
            detail::require_size(std::move(r), sizeof(detail::barrier_state), "Barrier"))),
        st_(block_->at<detail::barrier_state>(0)),
        lock_(detail::adopt_region, block_, 0, false),
        action_(action ? std::function<void()>(action) : std::function<void()>{}),
        plain_action_(action) {}
  /// Another handle on the same barrier.
  Barrier(const Barrier&) = default;
  /// Another handle on the same barrier.
  Barrier& operator=(const Barrier&) = default;
  /// True when wait() runs an action.
  [[nodiscard]] bool has_action() const noexcept { return bool(action_); }
  /// The action as a plain function (null if none, or if it is a closure): what a
  /// spawn or forkserver child receives.
  [[nodiscard]] auto plain_action() const noexcept { return plain_action_; }
  /// The default timeout of wait() (Python's Barrier.timeout); empty: none.
  [[nodiscard]] std::optional<std::chrono::nanoseconds> timeout() const noexcept {
    if (st_->default_timeout_ns < 0) return std::nullopt;
    return std::chrono::nanoseconds(st_->default_timeout_ns);
  }

  /// Blocks until all parties have called wait(), or for the barrier's default timeout
  /// if it has one.
  unsigned wait() { return wait_ns(st_->default_timeout_ns); }
  /// Raises broken_barrier_error when the timeout passes first (and breaks the barrier,
  /// as Python does).
  template <class Rep, class Period>
  unsigned wait(std::chrono::duration<Rep, Period> timeout) {
    return wait_ns(detail::to_ns(timeout));
  }

  /// Puts the barrier back to its initial state; parties waiting now get
  /// broken_barrier_error.
  void reset() {
    std::lock_guard g(lock_);
    if (st_->count > 0) {
      if (st_->state == 0 || st_->state == -2) st_->state = -1;
    } else {
      st_->state = 0;
    }
    notify_all();
  }
  /// Breaks the barrier: current and future wait() calls raise broken_barrier_error
  /// until reset().
  void abort() {
    std::lock_guard g(lock_);
    break_barrier();
  }

  /// Parties needed to pass.
  [[nodiscard]] unsigned parties() const noexcept { return st_->parties; }
  /// Parties waiting now.
  [[nodiscard]] unsigned n_waiting() {
    std::lock_guard g(lock_);
    return st_->state == 0 ? st_->count : 0;
  }
  /// True when the barrier is broken (until reset()).
  [[nodiscard]] bool broken() {
    std::lock_guard g(lock_);
    return st_->state == -2;
  }
  /// The shared memory holding the barrier (what a spawned child receives).
  [[nodiscard]] const detail::shm_region& shared_region() const noexcept { return block_->region(); }

 private:
  template <class F>
  Barrier(unsigned parties, F&& action, std::int64_t timeout_ns)
      : block_(detail::make_block(sizeof(detail::barrier_state), "mproc-barrier")),
        st_(new (block_->at<void>(0)) detail::barrier_state),
        lock_(detail::adopt_region, block_, 0, true) {
    if (parties == 0 || parties > unsigned(INT32_MAX))
      throw value_error("Barrier: parties must be at least 1 (and not negative), not " +
                        std::to_string(parties));
    using D = std::decay_t<F>;
    if constexpr (std::is_convertible_v<D, void (*)()> && !std::is_same_v<D, std::nullptr_t> &&
                  (std::is_pointer_v<D> || std::is_empty_v<D>)) {
      plain_action_ = static_cast<void (*)()>(action);
      if (plain_action_) action_ = plain_action_;
    } else {
      action_ = std::function<void()>(std::forward<F>(action));
    }
    st_->parties = parties;
    st_->default_timeout_ns = timeout_ns;
  }

  unsigned wait_ns(std::int64_t timeout_ns) {
    const detail::deadline_t dl = detail::deadline_after(timeout_ns);
    std::unique_lock g(lock_);
    // Wait while a previous round drains or resets.
    if (!wait_until_locked(g, dl, [&] { return st_->state != 1 && st_->state != -1; })) {
      break_barrier();
      throw broken_barrier_error("Barrier.wait(): timed out while the previous round drained");
    }
    if (st_->state < 0) throw broken_barrier_error("Barrier.wait(): the barrier is broken");
    unsigned index = st_->count++;
    struct leave {
      Barrier* b;
      ~leave() {
        if (--b->st_->count == 0 && (b->st_->state == 1 || b->st_->state == -1)) {
          b->st_->state = 0;
          b->notify_all();
        }
      }
    } on_exit{this};
    if (index + 1 == st_->parties) {
      try {
        if (action_) action_();
      } catch (...) {
        break_barrier();
        throw;
      }
      st_->state = 1;
      notify_all();
      return index;
    }
    if (!wait_until_locked(g, dl, [&] { return st_->state != 0; })) {
      break_barrier();
      throw broken_barrier_error("Barrier.wait(): timed out waiting for " +
                                 std::to_string(st_->parties - st_->count) + " more parties");
    }
    if (st_->state < 0) throw broken_barrier_error("Barrier.wait(): the barrier was broken while waiting");
    return index;
  }

  template <class Pred>
  bool wait_until_locked(std::unique_lock<RLock>& g, detail::deadline_t dl, Pred pred) {
    while (!pred()) {
      if (detail::deadline_passed(dl)) return false;
      std::uint32_t s = st_->seq.load(std::memory_order_seq_cst);
      g.unlock();
      detail::futex_wait(&st_->seq, s, detail::ns_left(dl));
      g.lock();
    }
    return true;
  }
  void notify_all() noexcept {
    st_->seq.fetch_add(1, std::memory_order_seq_cst);
    detail::futex_wake(&st_->seq);
  }
  void break_barrier() noexcept {
    st_->state = -2;
    notify_all();
  }

  std::shared_ptr<detail::shared_block> block_;
  detail::barrier_state* st_;
  RLock lock_;
  std::function<void()> action_;
  void (*plain_action_)() = nullptr;
};

namespace detail {

// Passing to a spawn/forkserver child (detail/handle_passing.hpp): a lock travels as its
// region and offset, so the child locks the parent's lock.
inline void put_lock_place(vector_writer& w, fd_collector& c, const basic_lock& l) {
  put_region(w, c, l.shared_region());
  std::uint64_t off = l.shared_offset();
  w.put(&off, sizeof off);
}
/// A received lock's region and offset, checked to hold a whole lock.
inline std::pair<std::shared_ptr<shared_block>, std::size_t> get_lock_place(reader& r,
                                                                            std::span<const int> fds) {
  shm_region reg = get_region(r, fds);
  std::uint64_t off;
  r.get(&off, sizeof off, "lock offset");
  if (off > reg.size() || reg.size() - off < sizeof(mutex_state))
    throw serialization_error("mproc: received lock lies outside its region");
  return {std::make_shared<shared_block>(std::move(reg)), std::size_t(off)};
}
/// A lock whose kind travels with it (the lock a Value, Array or Condition shares).
inline void put_any_lock(vector_writer& w, fd_collector& c, const basic_lock& l) {
  put_lock_place(w, c, l);
  std::uint8_t rec = l.recursive() ? 1 : 0;
  w.put(&rec, sizeof rec);
}
inline basic_lock get_any_lock(reader& r, std::span<const int> fds) {
  auto [block, off] = get_lock_place(r, fds);
  std::uint8_t rec;
  r.get(&rec, sizeof rec, "lock kind");
  return basic_lock(std::move(block), off, rec != 0, false);
}

template <class L>
struct lock_handle_traits {
  static constexpr bool passable = true;
  static void encode(vector_writer& w, fd_collector& c, const L& l) { put_lock_place(w, c, l); }
  static L adopt(reader& r, std::span<const int> fds) {
    auto [block, off] = get_lock_place(r, fds);
    return L(adopt_region, std::move(block), off, false);
  }
};
template <>
struct handle_traits<Lock> : lock_handle_traits<Lock> {};
template <>
struct handle_traits<RLock> : lock_handle_traits<RLock> {};

template <>
struct handle_traits<Semaphore> : region_handle_traits<Semaphore> {};
template <>
struct handle_traits<BoundedSemaphore> : region_handle_traits<BoundedSemaphore> {};
template <>
struct handle_traits<Event> : region_handle_traits<Event> {};

template <>
struct handle_traits<Barrier> {
  static constexpr bool passable = true;
  static void encode(vector_writer& w, fd_collector& c, const Barrier& b) {
    if (b.has_action() && !b.plain_action())
      throw state_error(
          "mproc: a Barrier whose action is a closure cannot be passed to a spawn/forkserver "
          "process (it exists in this process only); make the action a free function or a "
          "captureless lambda, or use fork");
    put_region(w, c, b.shared_region());
    // The action travels as a code address, as a Process target does.
    std::int64_t action = b.plain_action()
                              ? encode_code_address(reinterpret_cast<const void*>(b.plain_action()))
                              : 0;
    w.put(&action, sizeof action);
  }
  static Barrier adopt(reader& r, std::span<const int> fds) {
    shm_region region = get_region(r, fds);
    std::int64_t action = 0;
    r.get(&action, sizeof action, "barrier action");
    void (*fn)() = nullptr;
    if (action) {
      void* p = decode_code_address(action);
      if (!p) throw serialization_error("mproc: the Barrier's action is not code of this program");
      fn = reinterpret_cast<void (*)()>(p);
    }
    return Barrier(adopt_region, std::move(region), fn);
  }
};

template <>
struct handle_traits<Condition> {
  static constexpr bool passable = true;
  static void encode(vector_writer& w, fd_collector& c, const Condition& cond) {
    put_any_lock(w, c, cond.shared_lock());
    put_region(w, c, cond.shared_core().shared_region());
  }
  static Condition adopt(reader& r, std::span<const int> fds) {
    basic_lock lock = get_any_lock(r, fds);
    condition_core core(adopt_region, get_region(r, fds));
    return Condition(adopt_region, std::move(lock), std::move(core));
  }
};

}  // namespace detail

}  // namespace mproc
