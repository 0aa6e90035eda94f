// The one conversion of a user's timeout (any std::chrono duration) into what the
// waiting code uses: nanoseconds, then an absolute CLOCK_MONOTONIC deadline. Every
// blocking call goes through it, so every call gives one duration the same meaning:
//  - NaN raises mproc::value_error (there is no sensible wait for it);
//  - zero or negative (-1s, -inf) means "do not wait": try once, as poll(0);
//  - longer than the clock can count (hours::max(), +inf, 1e300s) means "forever".
// Nothing here overflows: duration_cast is never given a value it cannot represent.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "../errors.hpp"
#include "posix/clock.hpp"

namespace mproc::detail {

/// A user's timeout in nanoseconds: 0 for "do not wait" (zero or negative),
/// INT64_MAX for "longer than anything" (treated as forever by deadline_after).
/// NaN raises value_error naming `what`.
template <class Rep, class Period>
std::int64_t to_ns(std::chrono::duration<Rep, Period> d, const char* what = "timeout") {
  using namespace std::chrono;
  if constexpr (std::is_floating_point_v<Rep>) {
    if (std::isnan(d.count()))
      throw value_error(std::string("mproc: ") + what + " is NaN; use a number of seconds, "
                        "zero to poll, or a very large value to wait forever");
  }
  if (!(d > duration<Rep, Period>::zero())) return 0;
  // Compared as long double: no integer product can overflow on the way.
  const long double ns = static_cast<long double>(d.count()) * Period::num * 1e9L / Period::den;
  if (!(ns < static_cast<long double>(INT64_MAX))) return INT64_MAX;
  if constexpr (std::is_floating_point_v<Rep>) return static_cast<std::int64_t>(ns);
  else return duration_cast<nanoseconds>(d).count();
}

/// Absolute CLOCK_MONOTONIC deadline in ns; no_deadline waits forever. A deadline
/// already passed means "try once, do not wait".
using deadline_t = std::int64_t;
inline constexpr deadline_t no_deadline = -1;

/// The deadline timeout_ns from now: negative timeout_ns (the library's own "block")
/// or one too far away to add to the clock is no_deadline.
inline deadline_t deadline_after(std::int64_t timeout_ns) noexcept {
  if (timeout_ns < 0) return no_deadline;
  const std::int64_t now = monotonic_ns();
  return timeout_ns > INT64_MAX - now ? no_deadline : now + timeout_ns;
}
/// The deadline for a user's timeout (see to_ns).
template <class Rep, class Period>
deadline_t deadline_after(std::chrono::duration<Rep, Period> d, const char* what = "timeout") {
  return deadline_after(to_ns(d, what));
}
inline deadline_t deadline_now() noexcept { return monotonic_ns(); }

/// Nanoseconds left until a deadline (-1: forever, 0: passed).
inline std::int64_t ns_left(deadline_t d) noexcept {
  if (d == no_deadline) return -1;
  std::int64_t left = d - monotonic_ns();
  return left > 0 ? left : 0;
}
/// True once a deadline has passed (never for no_deadline).
inline bool deadline_passed(deadline_t d) noexcept { return ns_left(d) == 0; }

/// How long a process waiting for another one's reply polls before it sleeps: a reply
/// that comes within it costs no wake-up (tens of microseconds on a virtual machine,
/// the larger part of a round trip), and on a small machine a longer spin only takes
/// a core from the process that is to answer.
inline constexpr std::int64_t reply_spin_ns = 50'000;

/// The end of such a spin that begins now, never past `d`.
inline deadline_t spin_deadline(deadline_t d) noexcept {
  const deadline_t end = monotonic_ns() + reply_spin_ns;
  return d == no_deadline ? end : std::min(end, d);
}

}  // namespace mproc::detail
