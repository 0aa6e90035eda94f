/// \file
/// Pool stage 1, options: what a pool and each call are given (pool_options, map_options,
/// callbacks, progress reporting). Next: async_result.hpp, where a call's outcome waits.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include <unistd.h>

#include "../context.hpp"
#include "../detail/callable.hpp"
#include "../detail/posix/posix.hpp"

namespace mproc {


/// Any std::chrono duration (300ms, 5s, 1.5s as duration<double>); zero means "none".
class duration_option {
 public:
  constexpr duration_option() = default;
  /// From any std::chrono duration, implicitly, so options read `.task_timeout = 5s`.
  template <class Rep, class Period>
  duration_option(std::chrono::duration<Rep, Period> d) : ns_(detail::to_ns(d)) {}  // NOLINT
  /// The duration in nanoseconds; 0 or less means none.
  [[nodiscard]] std::int64_t ns() const noexcept { return ns_; }
  /// True when a duration above zero was given.
  [[nodiscard]] explicit operator bool() const noexcept { return ns_ > 0; }

 private:
  std::int64_t ns_ = 0;
};

/// Options of a Pool. Fields stay in this order (designated initializers).
struct pool_options {
  std::size_t processes = 0;              ///< worker processes; 0: cpu_count()
  std::optional<start_method> method{};   ///< how workers start; unset: get_start_method()
  detail::portable_call initializer{};    ///< `init_fn` or `{init_fn, args...}`; runs in each worker
  std::size_t max_tasks_per_child = 0;    ///< a worker is replaced after this many tasks; 0: workers live as long as the pool
  duration_option task_timeout{};         ///< per item; 0: none. An overrunning item fails with timeout_error and its worker is replaced
};

/// Called on the pool's service thread as items complete: (done, total). total is 0
/// while the input's length is not known yet.
using progress_fn = std::function<void(std::size_t done, std::size_t total)>;

/// Options of map, starmap, imap, imap_unordered and their _async forms.
struct map_options {
  std::size_t chunksize = 0;  ///< items per task message; 0: map sizes chunks by measured cost, at most Python's size; imap uses 1
  progress_fn on_progress{};  ///< called as items complete; see progress_bar()
  /// 0: none. map/starmap: the whole call, then timeout_error (items not yet handed
  /// out are dropped); map_async/starmap_async: how long get() and wait() without a
  /// timeout of their own wait; imap/imap_unordered: each next result.
  duration_option timeout{};
};

/// Python's callback / error_callback for the *_async calls. They run on the pool's
/// service thread: keep them short. The error callback's type has a default, so that
/// `callbacks{.error_callback = f}` needs nothing deduced (compilers without aggregate
/// deduction, clang before 17, take `callbacks<>{.error_callback = f}`).
template <class C = std::nullptr_t, class E = std::function<void(std::exception_ptr)>>
struct callbacks {
  C callback{};  ///< called with the result when the task succeeds
  E error_callback{};  ///< called with the task's std::exception_ptr when it fails
};
// Spelled out for compilers without aggregate deduction (clang < 17), so that
// callbacks{on_value} and callbacks{on_value, on_error} work there too. Only there:
// GCC would let these guides take a designated `.error_callback = f` for the value
// callback.
#if defined(__clang__) && __clang_major__ < 17
/// `callbacks{on_value}`: a callback only.
template <class C>
callbacks(C) -> callbacks<C>;
/// `callbacks{on_value, on_error}`.
template <class C, class E>
callbacks(C, E) -> callbacks<C, E>;
#endif

/// A ready on_progress: a throttled bar with rate and ETA on stderr, or plain lines
/// (at most one a second, and the last) when stderr is not a terminal.
inline progress_fn progress_bar(std::string label = "") {
  struct state {
    std::string label;
    bool tty = detail::is_terminal(2);
    std::int64_t start = detail::monotonic_ns();
    std::int64_t last = 0;
    bool finished = false;
  };
  auto st = std::make_shared<state>();
  st->label = std::move(label);
  return [st](std::size_t done, std::size_t total) {
    const std::int64_t now = detail::monotonic_ns();
    const bool end = total && done >= total;
    if (st->finished || (!end && now - st->last < (st->tty ? 100'000'000 : 1'000'000'000))) return;
    st->last = now;
    st->finished = end;
    const double secs = double(now - st->start) / 1e9;
    const double rate = secs > 0 ? double(done) / secs : 0.0;
    char line[256];
    int n = 0;
    const char* lead = st->label.empty() ? "" : st->label.c_str();
    const char* sep = st->label.empty() ? "" : " ";
    if (total) {
      const double frac = std::min(1.0, double(done) / double(total));
      char bar[31];
      const int filled = static_cast<int>(frac * 30);
      for (int i = 0; i < 30; ++i) bar[i] = i < filled ? '#' : '-';
      bar[30] = 0;
      const double eta = rate > 0 ? double(total - std::min(done, total)) / rate : 0.0;
      n = std::snprintf(line, sizeof line, "%s%s%s[%s] %zu/%zu %3.0f%% %.1f/s ETA %dm%02ds%s",
                        st->tty ? "\r" : "", lead, sep, bar, done, total, frac * 100, rate,
                        int(eta) / 60, int(eta) % 60, st->tty && !end ? "" : "\n");
    } else {
      n = std::snprintf(line, sizeof line, "%s%s%s%zu done %.1f/s%s", st->tty ? "\r" : "", lead,
                        sep, done, rate, st->tty ? "" : "\n");
    }
    if (n > 0) detail::write_fully(2, line, std::min<std::size_t>(std::size_t(n), sizeof line - 1));
  };
}

}  // namespace mproc
