// A process-shared, robust, error-checking pthread mutex placed in shared memory.
//
// Why not boost::interprocess::interprocess_mutex: it is not robust, so a process
// killed while holding it would deadlock every other process forever. Why not a
// hand-made futex word with an owner pid: detecting a dead owner then needs polling
// and is fooled by pid reuse, while the kernel's robust-futex list (which glibc's
// robust mutexes use) marks the futex FUTEX_OWNER_DIED the moment the owner thread
// exits, however it exits, and wakes a waiter.
#pragma once

#include <cerrno>
#include <cstdint>
#include <system_error>

#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "fork_hooks.hpp"
#include "posix.hpp"

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#define MPROC_DETAIL_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#include <sanitizer/tsan_interface.h>
#define MPROC_DETAIL_TSAN 1
#endif
#endif

namespace mproc::detail {

/// Call after pthread_mutex_clocklock acquired m. ThreadSanitizer does not intercept
/// that call; without this it reports the matching unlock as an unlock of an unlocked
/// mutex (and misses the ordering the lock gives).
inline void clocklock_acquired([[maybe_unused]] pthread_mutex_t* m) noexcept {
#ifdef MPROC_DETAIL_TSAN
  __tsan_mutex_pre_lock(m, 0);
  __tsan_mutex_post_lock(m, 0, 0);
#endif
}

/// The calling thread's id, cached: gettid() is a system call and ownership checks
/// sit on every release. The cache is per thread and cleared in a forked child (whose
/// only thread has a new id).
inline pid_t& cached_tid_slot() noexcept {
  static thread_local pid_t tid = 0;
  return tid;
}
inline void forget_cached_tid() noexcept { cached_tid_slot() = 0; }
// Registered at start-up: a handler registered on first use (through a local static)
// could be mid-registration when another thread forks, leaving the child stuck on the
// static's guard.
inline const int cached_tid_fork_hook =
    set_fork_hook(fork_hook_slot::thread_id, {.child = &forget_cached_tid});
inline pid_t current_tid() noexcept {
  pid_t& t = cached_tid_slot();
  if (t == 0) t = static_cast<pid_t>(::gettid());
  return t;
}

enum class lock_result {
  acquired,      // the caller now holds the mutex
  owner_died,    // acquired; the previous owner died holding it (state made consistent)
  already_mine,  // the calling thread holds it already (nothing changed)
  timed_out,     // not acquired (also the result of a failed try)
};

class robust_mutex {
 public:
  /// Initialises the mutex in place; call once, in the process that creates the memory.
  void init() {
    pthread_mutexattr_t a;
    check_rc(::pthread_mutexattr_init(&a), "pthread_mutexattr_init");
    check_rc(::pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED), "pthread_mutexattr_setpshared");
    check_rc(::pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST), "pthread_mutexattr_setrobust");
    // Error checking gives EDEADLK on self-relock (recursion detection) and EPERM on
    // unlock by a thread that does not hold it.
    check_rc(::pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ERRORCHECK), "pthread_mutexattr_settype");
    int rc = ::pthread_mutex_init(&m_, &a);
    ::pthread_mutexattr_destroy(&a);
    check_rc(rc, "pthread_mutex_init");
  }

  /// timeout_ns < 0: wait forever; 0: try once.
  lock_result lock(std::int64_t timeout_ns) {
    int rc = ::pthread_mutex_trylock(&m_);
    if (rc == EBUSY && timeout_ns != 0) {
      if (timeout_ns < 0) {
        rc = ::pthread_mutex_lock(&m_);
      } else {
        timespec abs = abs_monotonic(timeout_ns);
        rc = ::pthread_mutex_clocklock(&m_, CLOCK_MONOTONIC, &abs);
        if (rc == 0 || rc == EOWNERDEAD) clocklock_acquired(&m_);
      }
    }
    switch (rc) {
      case 0: return lock_result::acquired;
      case EDEADLK: return lock_result::already_mine;
      case EBUSY:
      case ETIMEDOUT: return lock_result::timed_out;
      case EOWNERDEAD:
        // We hold it now; marking it consistent keeps it usable for everyone after us.
        check_rc(::pthread_mutex_consistent(&m_), "pthread_mutex_consistent");
        return lock_result::owner_died;
      default: throw std::system_error(rc, std::generic_category(), "pthread_mutex_lock");
    }
  }

  /// True while a live thread (of any process, the caller included) holds it: a
  /// liveness token, read from the kernel-maintained word without taking the mutex.
  /// When the holder dies the kernel clears the owner and sets FUTEX_OWNER_DIED, and
  /// the word stays so, since nobody takes the token over: it reads as gone for good.
  /// (Probing with trylock instead changes the word: glibc's trylock of a mutex made
  /// unrecoverable leaves the caller's id in it, so the next probe saw EDEADLK.)
  [[nodiscard]] bool held_by_live_thread() const noexcept {
    const unsigned w = __atomic_load_n(&m_.__data.__lock, __ATOMIC_ACQUIRE);
    return (w & FUTEX_TID_MASK) != 0 && (w & FUTEX_OWNER_DIED) == 0;
  }

  /// False when the calling thread does not hold the mutex.
  [[nodiscard]] bool unlock() noexcept { return ::pthread_mutex_unlock(&m_) == 0; }

  /// The kernel-maintained owner: for robust mutexes the futex word holds the owner's
  /// thread id, so this needs no bookkeeping of our own that a crash could leave stale.
  [[nodiscard]] pid_t owner_tid() const noexcept {
    return static_cast<pid_t>(__atomic_load_n(&m_.__data.__lock, __ATOMIC_RELAXED) & FUTEX_TID_MASK);
  }
  [[nodiscard]] bool held_by_caller() const noexcept {
    pid_t o = owner_tid();
    return o != 0 && o == current_tid();
  }
  /// True when a thread of this process holds the mutex.
  [[nodiscard]] bool held_in_this_process() const noexcept {
    pid_t o = owner_tid();
    return o != 0 && ::syscall(SYS_tgkill, ::getpid(), o, 0) == 0;
  }

 private:
  static void check_rc(int rc, const char* call) {
    if (rc != 0) throw std::system_error(rc, std::generic_category(), call);
  }
  static timespec abs_monotonic(std::int64_t timeout_ns) noexcept {
    std::int64_t now = monotonic_ns();
    std::int64_t end = timeout_ns > INT64_MAX - now ? INT64_MAX : now + timeout_ns;
    return timespec{static_cast<time_t>(end / 1'000'000'000), static_cast<long>(end % 1'000'000'000)};
  }

  pthread_mutex_t m_;
};

}  // namespace mproc::detail
