// The monotonic clock and sleeping on it: the system calls under deadline.hpp and
// the library's few timed waits that are not a poll.
#pragma once

#include <cstdint>
#include <ctime>

#include <sys/prctl.h>

#include "child_calls.hpp"

namespace mproc::detail {

/// Nanoseconds on CLOCK_MONOTONIC. Async-signal-safe.
inline std::int64_t monotonic_ns() noexcept {
  timespec ts;
  child_calls.clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::int64_t(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

/// The absolute CLOCK_MONOTONIC time ns (>= 0) from now, as the timespec that
/// pthread_mutex_clocklock and its kin take.
inline timespec monotonic_timespec_after(std::int64_t ns) noexcept {
  timespec ts;
  child_calls.clock_gettime(CLOCK_MONOTONIC, &ts);
  const std::int64_t nsec = ts.tv_nsec + ns % 1'000'000'000;
  ts.tv_sec += ns / 1'000'000'000 + nsec / 1'000'000'000;
  ts.tv_nsec = nsec % 1'000'000'000;
  return ts;
}

/// Sleeps ns (>= 0) nanoseconds; a signal may end the sleep early (callers loop on
/// their own condition).
inline void sleep_ns(std::int64_t ns) noexcept {
  const timespec ts{time_t(ns / 1'000'000'000), long(ns % 1'000'000'000)};
  ::nanosleep(&ts, nullptr);
}

/// Lets the calling thread's timed sleeps (and the threads it starts later) end on
/// time. Linux may stretch each timed sleep by the thread's timer slack, 50 us by
/// default, to batch wake-ups: a polling loop's naps of 5 to 40 us become 50 to 90 us.
inline void precise_timed_sleeps() noexcept { ::prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL); }

}  // namespace mproc::detail
