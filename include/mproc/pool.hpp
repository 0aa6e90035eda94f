/// \file
/// Pool: a fixed set of worker processes running tasks.
///
/// The task path: the caller's inputs are serialized once, in chunks, by the pool's
/// service thread and streamed into a shared-memory ring per worker; the worker
/// decodes each item in place, calls the function and writes the result straight into
/// its result ring; the service thread decodes it straight into its slot of the output
/// (or the AsyncResult). Wake-ups are futexes (worker side) and one eventfd (service
/// side), each taken only after a short spin finds nothing to do.
///
/// Crash containment: every worker publishes which item it is running. When a worker
/// dies, that one item fails with worker_died (or timeout_error when the pool killed it
/// for overrunning task_timeout); every other item it held is sent again to a
/// replacement worker.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <exception>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <span>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include "context.hpp"
#include "process.hpp"
#include "detail/callable.hpp"
#include "detail/input_view.hpp"
#include "detail/log.hpp"
#include "detail/posix/fork.hpp"
#include "detail/posix/posix.hpp"
#include "detail/posix/shm_region.hpp"
#include "detail/remote_exception.hpp"
#include "detail/spsc_ring.hpp"
#include "errors.hpp"
#include "serialization.hpp"

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
    bool tty = ::isatty(2) == 1;
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
    if (n > 0) [[maybe_unused]] auto rc = ::write(2, line, std::min<std::size_t>(std::size_t(n), sizeof line - 1));
  };
}

namespace detail {

template <class R>
using stored_t = std::conditional_t<std::is_void_v<R>, std::monostate, R>;

/// The monotonic time `ns` from now, saturating far in the future.
inline std::int64_t deadline_after_ns(std::int64_t ns) noexcept {
  return monotonic_ns() + std::clamp<std::int64_t>(ns, 0, INT64_MAX / 4);
}

// ------------------------------------------------------------------ results

struct completion_listener {
  std::mutex m;
  std::condition_variable cv;
  std::deque<std::size_t> done;
};

/// A thread waiting for a result drives the pool itself for a short while instead of
/// sleeping: the task path then has no thread hand-off at all (caller -> worker ->
/// caller), which is what makes a round trip cost about one process wake-up. After
/// a short time without progress it gives the work back to the pool's service
/// thread and sleeps.
struct pool_helper {
  std::mutex m;          // held while stepping; the pool clears `pool` under it
  void* pool = nullptr;
  bool (*try_step)(void*) = nullptr;
  void (*end_help)(void*) = nullptr;
  void (*wake)(void*) = nullptr;

  static void wake_pool(const std::weak_ptr<pool_helper>& wh) {
    if (auto h = wh.lock()) {
      std::lock_guard l(h->m);
      if (h->pool) h->wake(h->pool);
    }
  }
};

/// Helps until done() or `deadline_ns` (monotonic, -1: none) or ~50 us pass with
/// nothing to do.
template <class Done>
void help_while_waiting(const std::weak_ptr<pool_helper>& wh, Done&& done, std::int64_t deadline_ns) {
  auto h = wh.lock();
  if (!h) return;
  bool helped = false;
  std::int64_t last = monotonic_ns();
  while (!done()) {
    bool progress = false;
    {
      std::unique_lock hl(h->m, std::try_to_lock);
      if (hl && h->pool) {
        progress = h->try_step(h->pool);
        helped = true;
      }
    }
    const std::int64_t now = monotonic_ns();
    if (progress)
      last = now;
    else if (now - last > 50'000)
      break;
    if (deadline_ns >= 0 && now >= deadline_ns) break;
    if (!progress) sched_yield();  // on a busy machine the worker may need this core
  }
  if (helped) {
    std::lock_guard hl(h->m);
    if (h->pool) h->end_help(h->pool);
  }
}

struct async_state_base {
  std::mutex m;
  std::condition_variable cv;
  bool done = false;
  std::atomic<bool> done_flag{false};  // done, readable without the mutex
  std::exception_ptr error;
  std::vector<std::pair<std::weak_ptr<completion_listener>, std::size_t>> listeners;
  std::function<void(std::exception_ptr)> on_error;  // error_callback
  std::vector<std::function<void()>> done_callbacks;  // add_done_callback, run once done
  std::weak_ptr<pool_helper> helper;

  // pending -> running when the pool hands the task to a worker (Python's "running":
  // it is in a worker's queue or executing); pending -> cancelled by cancel().
  enum : std::uint8_t { pending, running, cancelled };
  std::atomic<std::uint8_t> phase{pending};
  std::atomic<bool> abandoned{false};  // nobody will read it: hand out no more items
  std::int64_t deadline_ns = -1;       // map_options::timeout for get()/wait(); -1: none

  /// Called by the pool before it hands out the task's first item; false: cancelled
  /// or abandoned, run nothing.
  bool try_start() noexcept {
    std::uint8_t p = pending;
    if (!phase.compare_exchange_strong(p, running, std::memory_order_acq_rel))
      return p == running && !abandoned.load(std::memory_order_acquire);
    return !abandoned.load(std::memory_order_acquire);
  }
  /// concurrent.futures' cancel(): succeeds only before the task was handed out.
  bool cancel() {
    {
      // Under the mutex: a result already done (say, failed by terminate() before it
      // started) stays as it is.
      std::lock_guard g(m);
      std::uint8_t p = pending;
      if (done || !phase.compare_exchange_strong(p, cancelled, std::memory_order_acq_rel))
        return phase.load(std::memory_order_acquire) == cancelled;
    }
    // Nothing else finishes a cancelled result: the job skips it from now on.
    finish(std::make_exception_ptr(cancelled_error("AsyncResult: the task was cancelled")));
    return true;
  }
  /// Registers a listener for completion as `index`; false when already done.
  bool listen(const std::shared_ptr<completion_listener>& l, std::size_t index) {
    std::lock_guard g(m);
    if (done) return false;
    std::erase_if(listeners, [](const auto& e) { return e.first.expired(); });
    listeners.emplace_back(l, index);
    return true;
  }
  /// Runs fn once done: now (on this thread) if already done.
  void on_done(std::function<void()> fn) {
    {
      std::lock_guard g(m);
      if (!done) {
        done_callbacks.push_back(std::move(fn));
        return;
      }
    }
    run_guarded(fn, "a done callback");
  }
  /// A callback's exception is logged, never passed on: callbacks run on the pool's
  /// service thread (or on a thread waiting for a result), which must go on.
  template <class Fn>
  static void run_guarded(Fn&& fn, const char* what) noexcept {
    try {
      fn();
    } catch (const std::exception& e) {
      detail::log(log_level::error, "%s threw %s: %s", what, demangle(typeid(e)).c_str(),
                  e.what());
    } catch (...) {
      detail::log(log_level::error, "%s threw an exception not derived from std::exception", what);
    }
  }

  void wait() {
    help_while_waiting(helper, [&] { return done_flag.load(std::memory_order_acquire); }, -1);
    std::unique_lock l(m);
    cv.wait(l, [&] { return done; });
  }
  bool wait_for_ns(std::int64_t ns) {
    const std::int64_t deadline = monotonic_ns() + std::min<std::int64_t>(ns, INT64_MAX / 4);
    help_while_waiting(helper, [&] { return done_flag.load(std::memory_order_acquire); }, deadline);
    std::unique_lock l(m);
    const std::int64_t left = std::max<std::int64_t>(0, deadline - monotonic_ns());
    return cv.wait_for(l, std::chrono::nanoseconds(left), [&] { return done; });
  }
  [[nodiscard]] bool ready() {
    std::lock_guard l(m);
    return done;
  }
  /// Marks the result final; the value (if any) was stored before.
  void finish(std::exception_ptr e) {
    std::vector<std::pair<std::weak_ptr<completion_listener>, std::size_t>> ls;
    std::vector<std::function<void()>> cbs;
    {
      std::lock_guard l(m);
      if (done) return;
      error = std::move(e);
      done = true;
      done_flag.store(true, std::memory_order_release);
      ls.swap(listeners);
      cbs.swap(done_callbacks);
    }
    cv.notify_all();
    for (auto& [wl, idx] : ls)
      if (auto lst = wl.lock()) {
        {
          std::lock_guard g(lst->m);
          lst->done.push_back(idx);
        }
        lst->cv.notify_all();
      }
    for (auto& fn : cbs) run_guarded(fn, "a done callback");
  }
};

template <class R>
struct async_state : async_state_base {
  stored_t<R> value{};
  std::function<void(const stored_t<R>&)> on_value;  // callback
};

}  // namespace detail

/// The result of an asynchronous call (apply_async, map_async, submit...), as Python's
/// AsyncResult and concurrent.futures.Future. A handle: copies share the one result.
template <class R>
class [[nodiscard]] AsyncResult {
 public:
  AsyncResult() = default;
  /// Internal: made by the pool around the call's shared state.
  explicit AsyncResult(std::shared_ptr<detail::async_state<R>> s) : s_(std::move(s)) {}

  /// Waits for the result and returns it (again on every call); rethrows the task's
  /// exception (cancelled_error after cancel()).
  decltype(auto) get() const& {
    wait_default();
    return take();
  }
  /// On a temporary (`for (auto& x : pool.map_async(f, v).get())`) the result comes
  /// by value: a reference into the temporary's state would dangle.
  auto get() && {
    wait_default();
    return take_value();
  }
  /// As get(), raising timeout_error when not ready within `timeout`; the result
  /// can still be fetched later.
  template <class Rep, class Period>
  decltype(auto) get(std::chrono::duration<Rep, Period> timeout) const& {
    wait_or_throw(detail::to_ns(timeout));
    return take();
  }
  /// As get(timeout), by value on a temporary (see get() &&).
  template <class Rep, class Period>
  auto get(std::chrono::duration<Rep, Period> timeout) && {
    wait_or_throw(detail::to_ns(timeout));
    return take_value();
  }
  /// Waits until ready (or until map_options::timeout has passed, if one was given).
  void wait() const {
    check();
    if (s_->deadline_ns >= 0)
      s_->wait_for_ns(s_->deadline_ns - detail::monotonic_ns());
    else
      s_->wait();
  }
  /// True when ready.
  template <class Rep, class Period>
  bool wait(std::chrono::duration<Rep, Period> timeout) const {
    check();
    return s_->wait_for_ns(detail::to_ns(timeout));
  }
  /// True when the call has finished, successfully or not.
  [[nodiscard]] bool ready() const {
    check();
    return s_->ready();
  }
  /// Whether the task completed without raising; raises state_error when not ready.
  [[nodiscard]] bool successful() const {
    check();
    std::lock_guard l(s_->m);
    if (!s_->done) throw state_error("AsyncResult::successful: the result is not ready");
    return !s_->error;
  }
  /// False for a default-constructed or moved-from AsyncResult.
  [[nodiscard]] bool valid() const noexcept { return bool(s_); }

  /// concurrent.futures: true if the task had not been handed to a worker yet (or was
  /// cancelled already); it then never runs and get() raises cancelled_error. False
  /// once it runs or is done.
  bool cancel() {
    check();
    return s_->cancel();
  }
  /// True once cancel() has succeeded.
  [[nodiscard]] bool cancelled() const {
    check();
    return s_->phase.load(std::memory_order_acquire) == detail::async_state_base::cancelled;
  }
  /// Handed to a worker and not done yet (Python counts a task waiting in a worker's
  /// queue as running too: it can no longer be cancelled).
  [[nodiscard]] bool running() const {
    check();
    return s_->phase.load(std::memory_order_acquire) == detail::async_state_base::running &&
           !s_->done_flag.load(std::memory_order_acquire);
  }
  /// Completed, failed or cancelled (same as ready()).
  [[nodiscard]] bool done() const { return ready(); }
  /// Calls fn(AsyncResult<R>&) once the result is done: at once on this thread if it
  /// is, otherwise on the thread that completes it (the pool's service thread, or a
  /// thread waiting for a result). An exception from fn is logged and dropped.
  template <class F>
    requires std::invocable<F&, AsyncResult<R>&>
  void add_done_callback(F fn) {
    check();
    std::weak_ptr<detail::async_state<R>> w = s_;  // the state must not own itself
    s_->on_done([w, fn = std::move(fn)]() mutable {
      if (auto st = w.lock()) {
        AsyncResult<R> self(std::move(st));
        fn(self);
      }
    });
  }

  /// get() that moves the value out instead of copying it; the AsyncResult is
  /// consumed (Pool::apply and Pool::map use it).
  auto get_moved() && {
    wait_default();
    if (s_->error) std::rethrow_exception(s_->error);
    auto s = std::move(s_);
    if constexpr (std::is_void_v<R>)
      return;
    else
      return R(std::move(s->value));
  }

  /// Internal: the shared state (used by as_completed).
  [[nodiscard]] const std::shared_ptr<detail::async_state<R>>& state() const noexcept {
    return s_;
  }

 private:
  void check() const {
    if (!s_) throw state_error("AsyncResult: empty (moved-from or default-constructed)");
  }
  void wait_or_throw(std::int64_t timeout_ns) const {
    check();
    if (!s_->wait_for_ns(timeout_ns))
      throw timeout_error("AsyncResult::get: result not ready within the timeout");
  }
  /// get() without a timeout: map_options::timeout if one was given, else forever.
  void wait_default() const {
    check();
    if (s_->deadline_ns < 0) {
      s_->wait();
    } else if (!s_->wait_for_ns(s_->deadline_ns - detail::monotonic_ns())) {
      throw timeout_error("AsyncResult::get: result not ready within map_options::timeout");
    }
  }
  /// The value as a new object: moved out when no other copy shares the state.
  auto take_value() {
    if (s_->error) std::rethrow_exception(s_->error);
    if constexpr (std::is_void_v<R>)
      return;
    else if (s_.use_count() == 1)
      return R(std::move(s_->value));
    else
      return R(s_->value);
  }
  decltype(auto) take() const {
    if (s_->error) std::rethrow_exception(s_->error);
    if constexpr (std::is_void_v<R>)
      return;
    else
      return static_cast<const R&>(s_->value);
  }
  std::shared_ptr<detail::async_state<R>> s_;
};

namespace detail {

/// Indexes of `results` with distinct shared states (the first of copies sharing one),
/// so that a result listed twice is waited for and yielded once.
template <class R>
std::vector<std::size_t> distinct_results(const std::vector<AsyncResult<R>>& results,
                                          const char* who) {
  std::vector<std::pair<const void*, std::size_t>> seen;
  seen.reserve(results.size());
  for (std::size_t i = 0; i < results.size(); ++i) {
    if (!results[i].valid()) throw state_error(std::string(who) + ": an AsyncResult is empty");
    seen.emplace_back(results[i].state().get(), i);
  }
  std::stable_sort(seen.begin(), seen.end(),
                   [](const auto& a, const auto& b) { return std::less<>()(a.first, b.first); });
  std::vector<std::size_t> out;
  for (std::size_t k = 0; k < seen.size(); ++k)
    if (k == 0 || seen[k].first != seen[k - 1].first) out.push_back(seen[k].second);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace detail

/// Yields the given results as they complete (each as AsyncResult<R>&), each distinct
/// result once. With a timeout (measured from construction), advancing past the last
/// result ready in time raises timeout_error.
template <class R>
class as_completed {
 public:
  /// Waits on `results`, which must outlive this object and every AsyncResult in it
  /// must be non-empty (state_error otherwise).
  explicit as_completed(std::vector<AsyncResult<R>>& results) : as_completed(results, -1) {}
  /// As above; timeout_error once `timeout` (from now) has passed with results still pending.
  template <class Rep, class Period>
  as_completed(std::vector<AsyncResult<R>>& results, std::chrono::duration<Rep, Period> timeout)
      : as_completed(results, detail::deadline_after_ns(detail::to_ns(timeout))) {}

  /// Input iterator: each step blocks until the next result completes.
  class iterator {
   public:
    ///@{
    /// Input-iterator member (std::input_iterator).
    using value_type = AsyncResult<R>;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    explicit iterator(as_completed* o) : o_(o) { advance(); }
    AsyncResult<R>& operator*() const { return o_->results_[cur_]; }
    AsyncResult<R>* operator->() const { return &o_->results_[cur_]; }
    iterator& operator++() {
      advance();
      return *this;
    }
    void operator++(int) { advance(); }
    bool operator==(std::default_sentinel_t) const { return o_ == nullptr; }
    ///@}

   private:
    void advance() {
      if (o_->yielded_ == o_->total_) {
        o_ = nullptr;
        return;
      }
      auto& lst = *o_->listener_;
      std::unique_lock l(lst.m);
      auto ready = [&] { return !lst.done.empty(); };
      if (o_->deadline_ns_ < 0) {
        lst.cv.wait(l, ready);
      } else {
        const std::int64_t left = std::max<std::int64_t>(0, o_->deadline_ns_ - detail::monotonic_ns());
        if (!lst.cv.wait_for(l, std::chrono::nanoseconds(left), ready))
          throw timeout_error("as_completed: " + std::to_string(o_->total_ - o_->yielded_) +
                              " of " + std::to_string(o_->total_) +
                              " results not ready within the timeout");
      }
      cur_ = lst.done.front();
      lst.done.pop_front();
      ++o_->yielded_;
    }
    as_completed* o_ = nullptr;
    std::size_t cur_ = 0;
  };
  /// The first result to complete (blocks until one does).
  iterator begin() { return iterator(this); }
  /// The end: every result has been yielded.
  std::default_sentinel_t end() { return {}; }

 private:
  as_completed(std::vector<AsyncResult<R>>& results, std::int64_t deadline_ns)
      : results_(results),
        listener_(std::make_shared<detail::completion_listener>()),
        deadline_ns_(deadline_ns) {
    const auto distinct = detail::distinct_results(results_, "as_completed");
    total_ = distinct.size();
    for (std::size_t i : distinct)
      if (!results_[i].state()->listen(listener_, i)) {
        std::lock_guard g(listener_->m);
        listener_->done.push_back(i);
      }
  }

  std::vector<AsyncResult<R>>& results_;
  std::shared_ptr<detail::completion_listener> listener_;
  std::int64_t deadline_ns_;
  std::size_t total_ = 0;
  std::size_t yielded_ = 0;
};

/// concurrent.futures' return_when.
enum class return_when { first_completed, first_exception, all_completed };
/// Return when any result is done.
inline constexpr return_when FIRST_COMPLETED = return_when::first_completed;
/// Return when any result fails (or all are done).
inline constexpr return_when FIRST_EXCEPTION = return_when::first_exception;
/// Return when every result is done.
inline constexpr return_when ALL_COMPLETED = return_when::all_completed;

/// What mproc::wait returns: pointers into the vector it was given, each distinct
/// result once, in the vector's order.
template <class R>
struct wait_result {
  std::vector<AsyncResult<R>*> done;      ///< completed, failed or cancelled
  std::vector<AsyncResult<R>*> not_done;  ///< still pending
};

namespace detail {

template <class R>
wait_result<R> wait_for_results(std::vector<AsyncResult<R>>& results, return_when when,
                                std::int64_t deadline_ns) {
  const auto distinct = distinct_results(results, "mproc::wait");
  auto listener = std::make_shared<completion_listener>();
  // Python's FIRST_EXCEPTION: a task that raised (not one that was cancelled).
  auto failed = [&](std::size_t i) {
    auto& st = *results[i].state();
    std::lock_guard g(st.m);
    return st.error && st.phase.load() != async_state_base::cancelled;
  };
  std::size_t done_count = 0;
  bool any_failed = false;
  for (std::size_t i : distinct)
    if (!results[i].state()->listen(listener, i)) {
      ++done_count;
      any_failed = any_failed || failed(i);
    }
  auto satisfied = [&] {
    if (done_count == distinct.size()) return true;
    if (when == return_when::first_completed) return done_count > 0;
    if (when == return_when::first_exception) return any_failed;
    return false;
  };
  {
    std::unique_lock l(listener->m);
    auto take = [&] {
      while (!listener->done.empty()) {
        const std::size_t i = listener->done.front();
        listener->done.pop_front();
        ++done_count;
        l.unlock();  // failed() takes the result's mutex; never hold both
        any_failed = any_failed || failed(i);
        l.lock();
      }
      return satisfied();
    };
    if (deadline_ns < 0) {
      while (!take()) listener->cv.wait(l);
    } else {
      while (!take()) {
        const std::int64_t left = deadline_ns - monotonic_ns();
        if (left <= 0) break;
        listener->cv.wait_for(l, std::chrono::nanoseconds(left));
      }
    }
  }
  wait_result<R> out;
  for (std::size_t i : distinct)
    (results[i].state()->done_flag.load(std::memory_order_acquire) ? out.done : out.not_done)
        .push_back(&results[i]);
  return out;
}

}  // namespace detail

/// concurrent.futures.wait: returns once `when` is met (ALL_COMPLETED: every result is
/// done; FIRST_COMPLETED: one is; FIRST_EXCEPTION: one raised, or all are done) or the
/// timeout passes, with the results split into done and not_done.
template <class R>
wait_result<R> wait(std::vector<AsyncResult<R>>& results, return_when when = ALL_COMPLETED) {
  return detail::wait_for_results(results, when, -1);
}
/// As wait(results, when), giving up after `timeout`: what is pending then is in not_done.
template <class R, class Rep, class Period>
wait_result<R> wait(std::vector<AsyncResult<R>>& results, return_when when,
                    std::chrono::duration<Rep, Period> timeout) {
  return detail::wait_for_results(results, when, detail::deadline_after_ns(detail::to_ns(timeout)));
}
/// wait(results, ALL_COMPLETED, timeout).
template <class R, class Rep, class Period>
wait_result<R> wait(std::vector<AsyncResult<R>>& results, std::chrono::duration<Rep, Period> timeout) {
  return wait(results, ALL_COMPLETED, timeout);
}

namespace detail {

// ------------------------------------------------------------------ wire layout

struct alignas(64) pool_shared {
  std::atomic<std::uint32_t> parent_waiting;  // the service thread is about to sleep
};

struct alignas(64) worker_ctl {
  std::atomic<std::uint64_t> cur_job;
  std::atomic<std::uint64_t> cur_item;
  std::atomic<std::int64_t> cur_started_ns;  // 0 while between items
  std::atomic<std::uint32_t> initialized;
  // The last chunk the worker finished: its job and its time per item, by which map's
  // default chunking sizes chunks. Measured here: the parent's own delays (a loaded
  // machine) must not count as the items' cost, or chunks would shrink and workers wait
  // on the parent ever more.
  std::atomic<std::uint64_t> last_chunk_job;
  std::atomic<std::int64_t> last_chunk_item_ns;
  // Written by the worker after each item, read by the parent only once the worker is
  // gone: results it had written but not yet published (they are published in
  // batches) are recovered from these, so the parent knows exactly which item was
  // running. Plain stores to a line the parent does not read while the worker lives.
  std::atomic<std::uint32_t> open_len;           // bytes in the open packed record (0: none)
  std::atomic<std::uint64_t> results_committed;  // result ring position after the last record
  std::atomic<std::uint64_t> open_at;            // ring position of the open packed record
  std::atomic<std::uint64_t> chunk_job;          // the chunk last received: its job...
  std::atomic<std::uint64_t> chunk_first;        // ...and first item
};

enum class task_kind : std::uint32_t { chunk = 0, stop = 1 };
enum class result_status : std::uint32_t { ok = 0, error = 1, packed = 2 };

struct task_header {
  std::uint32_t kind;
  std::uint32_t count;
  std::uint64_t job;
  std::uint64_t first;
  std::int64_t invoker;  // code address of invoke_chunk<...>, see callable.hpp
  std::uint32_t callable_len;
  std::uint32_t item_size;  // packed items: the size of each; 0: length-prefixed items
};
struct result_header {
  std::uint64_t job;
  std::uint64_t index;   // the first item's index for packed results
  std::uint32_t status;
  std::uint32_t count;   // packed: how many values follow, back to back
};

// ------------------------------------------------------------------ worker side

class worker_context {
 public:
  worker_context(spsc_ring results, worker_ctl* ctl, pool_shared* shared, int wake_fd, bool timed)
      : results_(results), ctl_(ctl), shared_(shared), wake_fd_(wake_fd), timed_(timed) {}

  void begin_item(std::uint64_t job, std::uint64_t index) noexcept {
    // The clock is read per item only when items have a deadline; otherwise often
    // enough to publish results of a long chunk regularly.
    std::int64_t started = 1;
    if (timed_ || (++items_ & 31) == 0) {
      const std::int64_t now = monotonic_ns();
      if (now - last_publish_ns_ > 100'000 && (results_.unpublished() || packed_.base)) flush(now);
      started = now;
    }
    ctl_->cur_job.store(job, std::memory_order_relaxed);
    ctl_->cur_item.store(index, std::memory_order_relaxed);
    ctl_->cur_started_ns.store(timed_ ? started : 1, std::memory_order_release);
  }

  /// Packed results: trivially copyable values written back to back straight into
  /// the ring, one record per run of items instead of one per item.
  template <class V>
  void put_packed(std::uint64_t job, std::uint64_t index, std::uint32_t left_in_chunk, const V& v) {
    if (!packed_.base) {
      const std::size_t room = (results_.max_fragment() - sizeof(result_header)) / sizeof(V);
      packed_.cap = static_cast<std::uint32_t>(std::min<std::size_t>(left_in_chunk, room));
      packed_.elem = sizeof(V);
      packed_.job = job;
      packed_.first = index;
      packed_.count = 0;
      packed_.base = results_.reserve_wait(sizeof(result_header) + packed_.cap * sizeof(V),
                                           [this] { notify_parent(); });
      packed_.at = results_.reserved_position();
    }
    std::memcpy(packed_.base + sizeof(result_header) + packed_.count * sizeof(V), &v, sizeof(V));
    if (++packed_.count == packed_.cap) close_packed();
  }
  void close_packed() noexcept {
    if (!packed_.base) return;
    result_header h{packed_.job, packed_.first, static_cast<std::uint32_t>(result_status::packed),
                    packed_.count};
    std::memcpy(packed_.base, &h, sizeof h);
    results_.commit(sizeof h + std::size_t(packed_.count) * packed_.elem, 0);
    packed_.base = nullptr;
  }

  /// Publishes every result written so far and wakes the service thread if it sleeps.
  void flush(std::int64_t now = 0) noexcept {
    close_packed();
    results_.publish();
    last_publish_ns_ = now ? now : monotonic_ns();
    notify_parent();
  }
  /// Records how far the results go (see worker_ctl), then leaves the item.
  void end_item() noexcept {
    ctl_->results_committed.store(results_.committed_position(), std::memory_order_relaxed);
    if (packed_.base) {
      result_header h{packed_.job, packed_.first,
                      static_cast<std::uint32_t>(result_status::packed), packed_.count};
      std::memcpy(packed_.base, &h, sizeof h);
      ctl_->open_at.store(packed_.at, std::memory_order_relaxed);
      ctl_->open_len.store(static_cast<std::uint32_t>(sizeof h + packed_.count * packed_.elem),
                           std::memory_order_relaxed);
    } else {
      ctl_->open_len.store(0, std::memory_order_relaxed);
    }
    ctl_->cur_started_ns.store(0, std::memory_order_release);
  }

  template <class V>
  void emit_ok(std::uint64_t job, std::uint64_t index, const V& v) {
    std::size_t n;
    try {
      n = encoded_size(v);
    } catch (...) {
      emit_error(job, index, std::current_exception());
      return;
    }
    emit(job, index, result_status::ok, n, [&](std::byte* p) { encode_to(v, p); });
  }

  void emit_error(std::uint64_t job, std::uint64_t index, std::exception_ptr e) {
    close_packed();  // results keep their order in the ring
    encoded_exception ex = capture_exception(std::move(e));
    std::size_t n = encoded_size(ex);
    emit(job, index, result_status::error, n, [&](std::byte* p) { encode_to(ex, p); });
  }

  /// Wakes the service thread if it sleeps (after results or freed task room).
  void notify_parent() noexcept {
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (shared_->parent_waiting.load(std::memory_order_relaxed) &&
        shared_->parent_waiting.exchange(0, std::memory_order_seq_cst)) {
      std::uint64_t one = 1;
      [[maybe_unused]] auto rc = ::write(wake_fd_, &one, sizeof one);
    }
  }

 private:
  template <class Fill>
  void emit(std::uint64_t job, std::uint64_t index, result_status st, std::size_t n, Fill&& fill) {
    result_header h{job, index, static_cast<std::uint32_t>(st), 0};
    const std::size_t total = sizeof h + n;
    if (total <= results_.max_fragment()) {
      std::byte* p = results_.reserve_wait(total, [this] { notify_parent(); });
      std::memcpy(p, &h, sizeof h);
      fill(p + sizeof h);
      results_.commit(total, 0);
      return;
    } else {
      scratch_.resize(total);
      std::memcpy(scratch_.data(), &h, sizeof h);
      fill(scratch_.data() + sizeof h);
      results_.write_wait(scratch_, [this] { notify_parent(); });
      scratch_.clear();
      scratch_.shrink_to_fit();
    }
    notify_parent();
  }
  std::int64_t last_publish_ns_ = 0;
  struct packed_out {
    std::byte* base = nullptr;
    std::uint64_t at = 0;  // ring position of the record
    std::uint64_t job = 0, first = 0;
    std::uint32_t count = 0, cap = 0;
    std::size_t elem = 0;
  } packed_;
  unsigned items_ = 0;

  spsc_ring results_;
  worker_ctl* ctl_;
  pool_shared* shared_;
  int wake_fd_;
  bool timed_;
  std::vector<std::byte> scratch_;
};

struct task_view {
  std::uint64_t job;
  std::uint64_t first;
  std::uint32_t count;
  reader callable;
  reader items;  // count x [u32 len][bytes]

  reader next_item() {
    std::uint32_t len;
    items.get(&len, sizeof len, "task item length");
    items.need(len, "task item");
    reader r{items.p, items.p + len};
    items.p += len;
    return r;
  }
};

using invoker_fn = void (*)(worker_context&, task_view&);

/// Every item of the chunk fails with e.
inline void fail_chunk(worker_context& ctx, const task_view& t, const std::exception_ptr& e) {
  for (std::uint32_t k = 0; k < t.count; ++k) {
    ctx.begin_item(t.job, t.first + k);
    ctx.emit_error(t.job, t.first + k, e);
    ctx.end_item();
  }
}

template <class T>
inline constexpr bool packable_v = trivially_copyable_value<T>;

/// Runs a chunk in the worker. PackedArgs: the items are raw Arg values back to back
/// (trivially copyable arguments); results that are trivially copyable go back
/// packed too.
template <class F, class Arg, bool Star, bool PackedArgs>
void invoke_chunk(worker_context& ctx, task_view& t) {
  // A callable that cannot be rebuilt here fails the chunk's items, not the worker:
  // a new worker would fail the same way.
  std::optional<F> decoded;
  try {
    decoded.emplace(decode_callable<F>(t.callable));
    if constexpr (PackedArgs) t.items.need(std::size_t(t.count) * sizeof(Arg), "packed task items");
  } catch (...) {
    fail_chunk(ctx, t, std::current_exception());
    return;
  }
  F& f = *decoded;
  for (std::uint32_t k = 0; k < t.count; ++k) {
    const std::uint64_t index = t.first + k;
    ctx.begin_item(t.job, index);
    try {
      Arg a{};
      if constexpr (PackedArgs) {
        std::memcpy(&a, t.items.p + std::size_t(k) * sizeof(Arg), sizeof(Arg));
      } else {
        reader r = t.next_item();
        decode(r, a);
        if (r.remaining()) throw serialization_error("corrupt task: trailing bytes in arguments");
      }
      auto call = [&]() -> decltype(auto) {
        if constexpr (Star)
          return std::apply(f, std::move(a));
        else
          return std::invoke(f, std::move(a));
      };
      using R = decltype(call());
      if constexpr (std::is_void_v<R>) {
        call();
        ctx.emit_ok(t.job, index, std::monostate{});
      } else if constexpr (packable_v<std::remove_cvref_t<R>>) {
        const std::remove_cvref_t<R> res = call();
        ctx.put_packed(t.job, index, t.count - k, res);
      } else {
        const auto& res = call();
        ctx.emit_ok(t.job, index, res);
      }
    } catch (...) {
      ctx.emit_error(t.job, index, std::current_exception());
    }
    ctx.end_item();
  }
  ctx.close_packed();
}

inline std::atomic<unsigned>& pool_worker_counter() {
  static std::atomic<unsigned> c{0};
  return c;
}

/// Body of a pool worker process; returns its exit code.
inline int worker_main(spsc_ring tasks, spsc_ring results, worker_ctl* ctl, pool_shared* shared,
                       int wake_fd, const portable_call& initializer, std::size_t max_tasks,
                       bool timed, std::string name) {
  process_name_storage() = std::move(name);
  pool_worker_signals();  // Ctrl-C reaches the whole process group; the parent decides
  if (initializer) initializer();
  ctl->initialized.store(1, std::memory_order_release);
  worker_context ctx(results, ctl, shared, wake_fd, timed);
  std::vector<std::byte> scratch;
  std::size_t done = 0;
  while (true) {
    spsc_ring::record rec;
    std::span<const std::byte> msg = tasks.read_wait(scratch, rec, [&] { ctx.notify_parent(); });
    reader r{msg.data(), msg.data() + msg.size()};
    task_header h;
    r.get(&h, sizeof h, "task header");
    if (h.kind == static_cast<std::uint32_t>(task_kind::stop)) break;
    r.need(h.callable_len, "task callable");
    ctl->chunk_job.store(h.job, std::memory_order_relaxed);
    ctl->chunk_first.store(h.first, std::memory_order_relaxed);
    task_view t{h.job, h.first, h.count, reader{r.p, r.p + h.callable_len},
                reader{r.p + h.callable_len, r.end}};
    auto inv = reinterpret_cast<invoker_fn>(decode_code_address(h.invoker));
    const std::int64_t chunk_start = monotonic_ns();
    if (inv)
      inv(ctx, t);
    else
      fail_chunk(ctx, t, std::make_exception_ptr(serialization_error(
                             "pool worker: the task names no function of this program image")));
    ctl->last_chunk_job.store(h.job, std::memory_order_relaxed);
    ctl->last_chunk_item_ns.store(std::max<std::int64_t>(1, (monotonic_ns() - chunk_start) / std::max(1u, h.count)),
                                  std::memory_order_release);
    if (rec.data) {
      tasks.release(rec);
      tasks.publish_release();
    }
    ctx.flush();
    if (max_tasks && ++done >= max_tasks) break;
  }
  return 0;
}

/// A pool worker in a fresh program image (spawn, forkserver): maps the rings and
/// the pool's shared word from the received descriptors, then runs as a forked
/// worker would. fds: [worker region, pool region, wake eventfd, resource tracker
/// (if one runs)].
inline int pool_worker_entry(std::span<const std::byte> payload, std::span<const int> fds) {
  reader r{payload.data(), payload.data() + payload.size()};
  std::uint64_t capacity = 0, region_bytes = 0, shared_bytes = 0, max_tasks = 0;
  std::uint8_t timed = 0;
  std::string name;
  decode(r, capacity);
  decode(r, region_bytes);
  decode(r, shared_bytes);
  decode(r, max_tasks);
  decode(r, timed);
  decode(r, name);
  portable_call init = portable_call::decode_from(r);
  std::int32_t tracker_pid = -1;
  decode(r, tracker_pid);
  if (fds.size() != (tracker_pid > 0 ? 4u : 3u))
    throw start_method_error("pool worker: unexpected number of descriptors");
  // Segments a task creates are tracked with the program's, as in a forked worker.
  if (tracker_pid > 0) resource_tracker::instance().adopt_fd(fds[3], tracker_pid);
  shm_region region = shm_region::map(unique_fd(fds[0]), region_bytes);
  shm_region shared = shm_region::map(unique_fd(fds[1]), shared_bytes);
  const int wake_fd = fds[2];  // kept open for the life of the worker
  auto* base = static_cast<std::byte*>(region.data());
  const std::size_t ring_bytes = spsc_ring::bytes_needed(capacity);
  auto* ctl = reinterpret_cast<worker_ctl*>(base);
  spsc_ring tasks = spsc_ring::attach(base + sizeof(worker_ctl));
  spsc_ring results = spsc_ring::attach(base + sizeof(worker_ctl) + ring_bytes);
  return worker_main(tasks, results, ctl, shared.as<pool_shared>(), wake_fd, init, max_tasks,
                     timed != 0, std::move(name));
}

// ------------------------------------------------------------------ parent side

/// One map/imap/apply call as the service thread sees it.
struct job_base {
  std::uint64_t id = 0;
  std::size_t chunksize = 1;
  std::size_t dispatched = 0;  // items handed out
  std::size_t completed = 0;   // items with a result or error
  std::size_t known_total = 0; // 0 while unknown
  bool input_done = false;
  bool finish_queued = false;  // listed for the pool's finish check
  progress_fn on_progress;
  std::exception_ptr callback_error;  // on_progress threw: the call's error at the end
  std::int64_t avg_item_ns = 0;  // measured cost of one item, for the prefetch depth
  // map's default chunking (chunksize 0): chunks sized by the measured cost of the
  // items, at most Python's chunksize (max_chunk). Python's fixed chunks of len/(4 *
  // processes) put a quarter of the items in the last two chunks; when costs grow with
  // the index (factorials, growing matrices) those hold far more than their share of
  // the work, and one worker computes them while the others idle.
  bool auto_chunk = false;
  std::size_t max_chunk = 1;
  std::int64_t busy_item_ns = 0;  // the workers' own time per item (see worker_ctl)

  virtual ~job_base() = default;
  /// Serializes up to chunksize next items into buf (after a task_header placeholder
  /// the caller fills); returns the number of items (0 when the input is exhausted).
  virtual std::uint32_t next_chunk(std::vector<std::byte>& buf, std::vector<std::uint32_t>& item_offsets) = 0;
  virtual bool may_dispatch() { return true; }  // imap back-pressure
  virtual void deliver(std::uint64_t index, reader& r) = 0;
  /// `count` trivially copyable results back to back, for items first...
  virtual void deliver_packed(std::uint64_t first, std::uint32_t count, reader& r) {
    const std::size_t each = count ? r.remaining() / count : 0;
    for (std::uint32_t k = 0; k < count; ++k) {
      reader one{r.p + k * each, r.p + (k + 1) * each};
      deliver(first + k, one);
    }
  }
  virtual void fail(std::uint64_t index, std::exception_ptr e) = 0;
  /// All items are accounted for (or the pool is giving up: e set).
  virtual void complete(std::exception_ptr e) = 0;
  [[nodiscard]] bool finished() const { return input_done && completed == dispatched; }
};

template <class F, class Arg, bool Star, bool Packed>
std::int64_t invoker_address() {
  static const std::int64_t code =
      encode_code_address(reinterpret_cast<const void*>(&invoke_chunk<F, Arg, Star, Packed>));
  return code;
}

/// Encodes items from an input range, chunk by chunk.
template <class F, bool Star, class View>
class input_feed {
 public:
  using value_t = std::ranges::range_value_t<View>;
  using arg_t = wire_t<value_t>;
  // Trivially copyable inputs travel as a plain array: no per-item length or encoding.
  static constexpr bool packed =
      packable_v<arg_t> && std::is_same_v<std::remove_cvref_t<std::ranges::range_reference_t<View>>, arg_t>;

  input_feed(F f, View v) : f_(std::move(f)), view_(std::move(v)), it_(std::ranges::begin(view_)) {
    vector_writer w{&callable_};
    encode_callable(w, f_);
  }

  /// True once the input has nothing more (checked right after each chunk, so a job
  /// completes as soon as its last result arrives), or failed.
  [[nodiscard]] bool exhausted() {
    if (error_) return true;
    try {
      return it_ == std::ranges::end(view_);
    } catch (...) {
      error_ = std::current_exception();
      return true;
    }
  }
  /// What the input range (or encoding one of its items) threw; it belongs to the item
  /// after the last one handed out.
  [[nodiscard]] const std::exception_ptr& error() const noexcept { return error_; }

  /// The next chunk's items; when reading or encoding an item throws, the items before
  /// it still make a chunk and error() holds the exception.
  std::uint32_t next_chunk(std::size_t chunksize, std::uint64_t first, std::uint64_t job,
                           std::vector<std::byte>& buf, std::vector<std::uint32_t>& offsets) {
    std::uint32_t n = 0;
    try {
      n = read_chunk(chunksize, buf, offsets);
    } catch (...) {
      error_ = std::current_exception();
      n = read_items_;
      buf.resize(read_end_);  // drops the failed item's partial bytes
      if (offsets.size() > n) offsets.resize(n);
    }
    if (n == 0) return 0;
    task_header h{static_cast<std::uint32_t>(task_kind::chunk), n, job, first,
                  invoker_address<F, arg_t, Star, packed>(),
                  static_cast<std::uint32_t>(callable_.size()),
                  packed ? static_cast<std::uint32_t>(sizeof(arg_t)) : 0u};
    std::memcpy(buf.data(), &h, sizeof h);
    return n;
  }

 private:
  std::uint32_t read_chunk(std::size_t chunksize, std::vector<std::byte>& buf,
                           std::vector<std::uint32_t>& offsets) {
    offsets.clear();
    read_items_ = 0;
    read_end_ = 0;
    if (error_ || it_ == std::ranges::end(view_)) return 0;
    buf.resize(sizeof(task_header));
    buf.insert(buf.end(), callable_.begin(), callable_.end());
    read_end_ = buf.size();
    std::uint32_t n = 0;
    if constexpr (packed && std::ranges::contiguous_range<View> && std::ranges::sized_range<View>) {
      // One copy for the whole chunk.
      const auto left = static_cast<std::size_t>(std::ranges::end(view_) - it_);
      n = static_cast<std::uint32_t>(std::min(chunksize, left));
      const std::size_t at = buf.size();
      buf.resize(at + std::size_t(n) * sizeof(arg_t));
      std::memcpy(buf.data() + at, std::to_address(it_), std::size_t(n) * sizeof(arg_t));
      it_ += n;
    } else {
      for (; n < chunksize && it_ != std::ranges::end(view_); ++it_) {
        const auto& v = *it_;
        std::size_t at = buf.size();
        if constexpr (packed) {
          buf.resize(at + sizeof(arg_t));
          std::memcpy(buf.data() + at, std::addressof(v), sizeof(arg_t));
        } else {
          offsets.push_back(static_cast<std::uint32_t>(at));
          std::uint32_t len = static_cast<std::uint32_t>(encoded_size(v));
          buf.resize(at + sizeof len + len);
          std::memcpy(buf.data() + at, &len, sizeof len);
          encode_to(v, buf.data() + at + sizeof len);
        }
        read_items_ = ++n;
        read_end_ = buf.size();
      }
    }
    return n;
  }

  F f_;
  View view_;
  std::ranges::iterator_t<View> it_;
  std::vector<std::byte> callable_;
  std::exception_ptr error_;
  std::uint32_t read_items_ = 0;  // items of the chunk being read that are complete
  std::size_t read_end_ = 0;      // where they end in the buffer
};

template <class F, class Arg>
using star_result_t = decltype(std::apply(std::declval<F&>(), std::declval<Arg>()));

template <class F, class Arg, bool Star>
struct task_result {
  static_assert(std::is_invocable_v<F&, Arg>,
                "mproc: the function cannot be called with the element type of the inputs");
  using type = std::invoke_result_t<F&, Arg>;
};
template <class F, class Arg>
struct task_result<F, Arg, true> {
  using type = star_result_t<F, Arg>;
};

/// map_async / starmap_async / apply_async: results gathered into one AsyncResult.
template <class F, bool Star, class View, class R, bool Single>
class gather_job final : public job_base {
 public:
  using out_t = std::conditional_t<Single, stored_t<R>, std::vector<stored_t<R>>>;
  gather_job(F f, View v, std::shared_ptr<async_state<std::conditional_t<Single, R, std::vector<stored_t<R>>>>> st)
      : feed_(std::move(f), std::move(v)), st_(std::move(st)) {
    input_done = feed_.exhausted();  // an empty input completes at once
    if (feed_.error()) std::rethrow_exception(feed_.error());
  }

  std::uint32_t next_chunk(std::vector<std::byte>& buf, std::vector<std::uint32_t>& offs) override {
    if (!st_->try_start()) {  // cancelled before it started, or abandoned: run no more
      input_done = true;
      known_total = dispatched;
      return 0;
    }
    std::uint32_t n = feed_.next_chunk(chunksize, dispatched, id, buf, offs);
    if (feed_.exhausted()) {
      input_done = true;
      known_total = dispatched + n;
    }
    // The input's own exception is the job's error, at the place of the item it failed
    // to produce: the items before it still run.
    if (feed_.error()) fail(dispatched + n, feed_.error());
    if constexpr (!Single) st_->value.resize(dispatched + n);
    return n;
  }
  void deliver(std::uint64_t index, reader& r) override {
    try {
      if constexpr (Single)
        decode(r, st_->value);
      else
        decode(r, st_->value[index]);
    } catch (...) {
      fail(index, std::current_exception());
    }
  }
  void deliver_packed(std::uint64_t first, std::uint32_t count, reader& r) override {
    if constexpr (!Single && packable_v<stored_t<R>>) {
      // straight into their place in the output
      r.need(std::size_t(count) * sizeof(stored_t<R>), "packed results");
      std::memcpy(st_->value.data() + first, r.p, std::size_t(count) * sizeof(stored_t<R>));
    } else {
      job_base::deliver_packed(first, count, r);
    }
  }
  void fail(std::uint64_t index, std::exception_ptr e) override {
    if (!first_error_ || index < first_error_index_) {
      first_error_ = std::move(e);
      first_error_index_ = index;
    }
  }
  void complete(std::exception_ptr e) override {
    if (st_->phase.load() == async_state_base::cancelled) return;  // cancel() finished it
    if (!e && st_->abandoned.load())
      e = std::make_exception_ptr(timeout_error("Pool::map: not finished within map_options::timeout"));
    if (!e) e = first_error_;
    // A callback that throws makes its exception the result's error; the pool's
    // service thread is not the place for it.
    try {
      if (e) {
        if (st_->on_error) st_->on_error(e);
      } else if (st_->on_value) {
        st_->on_value(st_->value);
      }
    } catch (...) {
      e = std::current_exception();
    }
    st_->finish(std::move(e));
  }

 private:
  input_feed<F, Star, View> feed_;
  std::shared_ptr<async_state<std::conditional_t<Single, R, std::vector<stored_t<R>>>>> st_;
  std::exception_ptr first_error_;
  std::uint64_t first_error_index_ = 0;
};

/// Shared between an imap_range and its job.
template <class R>
struct imap_state {
  std::mutex m;
  std::condition_variable cv;
  bool ordered = true;
  std::map<std::uint64_t, std::variant<stored_t<R>, std::exception_ptr>> ready;  // ordered
  std::deque<std::variant<stored_t<R>, std::exception_ptr>> fifo;                // unordered
  std::uint64_t next = 0;        // ordered: next index to yield
  std::uint64_t consumed = 0;    // items handed to the caller
  std::uint64_t total = UINT64_MAX;
  std::exception_ptr fatal;      // the pool went away
  std::int64_t timeout_ns = 0;   // map_options::timeout for each next result; 0: none
  std::atomic<bool> abandoned{false};
  std::atomic<bool> blocked{false};  // the job waits for the consumer (back-pressure)
  std::weak_ptr<pool_helper> helper;
};

template <class F, bool Star, class View, class R>
class imap_job final : public job_base {
 public:
  imap_job(F f, View v, std::shared_ptr<imap_state<R>> st, std::size_t window)
      : feed_(std::move(f), std::move(v)), st_(std::move(st)), window_(window) {
    if (feed_.exhausted()) {
      if (feed_.error()) std::rethrow_exception(feed_.error());
      input_done = true;
      st_->total = 0;
    }
  }

  std::uint32_t next_chunk(std::vector<std::byte>& buf, std::vector<std::uint32_t>& offs) override {
    if (st_->abandoned.load()) {
      input_done = true;
      return 0;
    }
    std::uint32_t n = feed_.next_chunk(chunksize, dispatched, id, buf, offs);
    if (feed_.exhausted()) {
      input_done = true;
      known_total = dispatched + n;
      // The input's own exception comes after the results of the items before it.
      const bool failed = bool(feed_.error());
      if (failed) push(dispatched + n, feed_.error());
      std::lock_guard l(st_->m);
      st_->total = dispatched + n + (failed ? 1 : 0);
      st_->cv.notify_all();
    }
    return n;
  }
  bool may_dispatch() override {
    std::lock_guard l(st_->m);
    bool ok = dispatched < st_->consumed + window_ || st_->abandoned.load();
    st_->blocked.store(!ok);
    return ok;
  }
  void deliver(std::uint64_t index, reader& r) override {
    stored_t<R> v{};
    try {
      decode(r, v);
    } catch (...) {
      fail(index, std::current_exception());
      return;
    }
    push(index, std::move(v));
  }
  void fail(std::uint64_t index, std::exception_ptr e) override { push(index, std::move(e)); }
  void complete(std::exception_ptr e) override {
    const bool all_delivered = input_done && completed == dispatched;
    {
      std::lock_guard l(st_->m);
      // Without an error every item has its result. With one, a total set now would
      // end the sequence quietly at the first missing result: it must raise there.
      if (st_->total == UINT64_MAX && (!e || all_delivered)) st_->total = dispatched;
      // Items already delivered are still yielded; the error surfaces after them: as
      // one more item when every item has its result (on_progress threw), else when
      // the missing results are reached.
      if (e && all_delivered && !st_->abandoned.load()) {
        if (st_->ordered)
          st_->ready.emplace(st_->total, e);
        else
          st_->fifo.emplace_back(e);
        ++st_->total;
      } else if (e) {
        st_->fatal = std::move(e);
      }
    }
    st_->cv.notify_all();
  }

 private:
  template <class V>
  void push(std::uint64_t index, V&& v) {
    if (st_->abandoned.load()) return;
    {
      std::lock_guard l(st_->m);
      if (st_->ordered)
        st_->ready.emplace(index, std::forward<V>(v));
      else
        st_->fifo.emplace_back(std::forward<V>(v));
    }
    st_->cv.notify_all();
  }
  input_feed<F, Star, View> feed_;
  std::shared_ptr<imap_state<R>> st_;
  std::size_t window_;
};

}  // namespace detail

/// The lazy result sequence of imap / imap_unordered (an input range).
template <class R>
class imap_range {
 public:
  /// Internal: made by imap / imap_unordered.
  explicit imap_range(std::shared_ptr<detail::imap_state<R>> s) : s_(std::move(s)) {}
  /// Moves the sequence; the moved-from object is empty.
  imap_range(imap_range&&) noexcept = default;
  /// Moves the sequence; the moved-from object is empty.
  imap_range& operator=(imap_range&&) noexcept = default;
  ~imap_range() {
    if (s_) {
      s_->abandoned.store(true);
      detail::pool_helper::wake_pool(s_->helper);
    }
  }

  /// Input iterator: each step blocks until the next result arrives, and rethrows the
  /// exception of a task that failed.
  class iterator {
   public:
    ///@{
    /// Input-iterator member (std::input_iterator).
    using value_type = detail::stored_t<R>;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    explicit iterator(imap_range* r) : r_(r) { fetch(); }
    value_type& operator*() const { return *cur_; }
    value_type* operator->() const { return &*cur_; }
    iterator& operator++() {
      fetch();
      return *this;
    }
    void operator++(int) { fetch(); }
    bool operator==(std::default_sentinel_t) const { return r_ == nullptr; }
    ///@}

   private:
    void fetch() {
      auto& s = *r_->s_;
      std::variant<value_type, std::exception_ptr> item;
      auto has = [&] {
        if (s.consumed >= s.total) return true;
        if (s.ordered) return !s.ready.empty() && s.ready.begin()->first == s.next;
        return !s.fifo.empty();
      };
      const std::int64_t deadline = s.timeout_ns > 0 ? detail::deadline_after_ns(s.timeout_ns) : -1;
      detail::help_while_waiting(
          s.helper,
          [&] {
            std::lock_guard l(s.m);
            return has() || bool(s.fatal);
          },
          deadline);
      {
        std::unique_lock l(s.m);
        if (deadline < 0) {
          s.cv.wait(l, [&] { return has() || s.fatal; });
        } else {
          const std::int64_t left = std::max<std::int64_t>(0, deadline - detail::monotonic_ns());
          // Nothing is consumed: iterating again waits for the same result.
          if (!s.cv.wait_for(l, std::chrono::nanoseconds(left), [&] { return has() || s.fatal; }))
            throw timeout_error("imap: the next result was not ready within map_options::timeout");
        }
        if (!has()) std::rethrow_exception(s.fatal);
        if (s.consumed >= s.total) {
          r_ = nullptr;
          cur_.reset();
          return;
        }
        if (s.ordered) {
          auto node = s.ready.extract(s.ready.begin());
          item = std::move(node.mapped());
          ++s.next;
        } else {
          item = std::move(s.fifo.front());
          s.fifo.pop_front();
        }
        ++s.consumed;
      }
      if (s.blocked.load()) detail::pool_helper::wake_pool(s.helper);
      if (auto* e = std::get_if<std::exception_ptr>(&item)) std::rethrow_exception(*e);
      cur_ = std::move(std::get<value_type>(item));
    }
    imap_range* r_ = nullptr;
    mutable std::optional<value_type> cur_;
  };

  /// The first result (blocks until it arrives; rethrows a task's exception).
  iterator begin() { return iterator(this); }
  /// The end: every input's result has been yielded.
  std::default_sentinel_t end() { return {}; }

  /// Internal: the shared state (used by the pools).
  [[nodiscard]] const std::shared_ptr<detail::imap_state<R>>& state() const noexcept { return s_; }

 private:
  std::shared_ptr<detail::imap_state<R>> s_;
};

namespace detail {

struct outstanding_chunk {
  job_base* job;
  std::uint64_t first;
  std::uint32_t count;
  std::uint32_t done = 0;
  std::uint32_t deaths = 0;                // workers that died on it in a row, no item done
  std::vector<std::byte> bytes;            // the task message, kept to resend on a crash
  std::vector<std::uint32_t> item_offsets; // where each item starts in bytes
};

struct worker_slot {
  pid_t pid = -1;
  unique_fd pidfd;
  unique_fd status;  // forkserver: the exit code arrives here (not our child to reap)
  shm_region region;
  worker_ctl* ctl = nullptr;
  spsc_ring tasks, results;
  std::deque<outstanding_chunk> outstanding;
  std::size_t outstanding_items = 0;
  std::size_t write_offset = 0;  // bytes of outstanding[write_index] already in the ring
  std::size_t write_index = 0;   // first chunk not yet fully written
  std::vector<std::byte> rx;     // reassembly of a fragmented result
  bool stopping = false;         // a stop message was queued
  bool timed_out = false;
  std::uint64_t timed_out_item = 0, timed_out_job = 0;
  unsigned number = 0;
  std::int64_t last_result_ns = 0;
};

}  // namespace detail

namespace detail {

/// Python's callback / error_callback, attached to a result's shared state.
template <class R, class C, class E>
void set_callbacks(async_state<R>& st, callbacks<C, E>& cb) {
  if constexpr (!std::is_same_v<C, std::nullptr_t>) {
    if constexpr (std::is_void_v<R>)
      st.on_value = [c = std::move(cb.callback)](const std::monostate&) mutable { c(); };
    else
      st.on_value = std::move(cb.callback);
  }
  if constexpr (!std::is_same_v<E, std::nullptr_t>) st.on_error = std::move(cb.error_callback);
}

}  // namespace detail

/// The calls every pool offers: map, starmap, imap, imap_unordered, apply, submit and
/// the _async forms. mproc::Pool and mproc::mpi::Pool inherit them, so both take the
/// same tasks and return the same result types. Written once in terms of the three
/// calls a pool implements: submit_gather<Star>(f, inputs, options, callbacks),
/// submit_imap(f, inputs, options, ordered) and apply_async(callbacks, f, args...).
///
/// Tasks (`f`) are free functions, captureless lambdas, stateless function objects or
/// function objects with a serialize() member; arguments and results must be able to
/// cross a process boundary (see serialization.hpp).
template <class Derived>
class pool_interface {
  /// o, its chunksize checked: a negative int arrives as a huge size_t.
  static map_options checked(map_options o) {
    if (o.chunksize > UINT32_MAX)
      throw value_error("mproc::Pool: chunksize " + std::to_string(o.chunksize) +
                        " is negative or too large (at most " + std::to_string(UINT32_MAX) + ")");
    return o;
  }
  /// imap's positional chunksize: at least 1, as in Python.
  static map_options imap_chunksize(std::size_t chunksize) {
    if (chunksize == 0) throw value_error("mproc::Pool::imap: chunksize must be at least 1, not 0");
    return checked(map_options{.chunksize = chunksize});
  }

 public:
  /// Calls `f` on every element of `inputs` (any input range) in the workers and returns a
  /// std::vector of the results in input order. Blocks until every item has finished, then
  /// rethrows the exception of the lowest failing index, if any (worker_died for an item
  /// whose worker died, timeout_error for one over pool_options::task_timeout).
  /// `chunksize`: items per task message; 0 sizes chunks by measured cost (see map_options).
  template <class F, std::ranges::input_range In>
  auto map(F f, In&& inputs, std::size_t chunksize = 0) {
    return map(f, std::forward<In>(inputs), map_options{.chunksize = chunksize});
  }
  /// As map(f, inputs, chunksize), with map_options (chunksize, on_progress).
  template <class F, std::ranges::input_range In>
  auto map(F f, In&& inputs, map_options o) {
    return finish_map(map_async(f, std::forward<In>(inputs), std::move(o)));
  }
  /// As map(), unpacking each element (a std::tuple or std::pair) into f's arguments.
  template <class F, std::ranges::input_range In>
  auto starmap(F f, In&& inputs, std::size_t chunksize = 0) {
    return starmap(f, std::forward<In>(inputs), map_options{.chunksize = chunksize});
  }
  /// As starmap(f, inputs, chunksize), with map_options.
  template <class F, std::ranges::input_range In>
  auto starmap(F f, In&& inputs, map_options o) {
    return finish_map(starmap_async(f, std::forward<In>(inputs), std::move(o)));
  }

  /// As map(), without waiting: returns an AsyncResult<std::vector<R>> at once; `cb`
  /// gives Python's callback / error_callback.
  template <class F, std::ranges::input_range In, class C = std::nullptr_t, class E = std::nullptr_t>
  auto map_async(F f, In&& inputs, map_options o = {}, callbacks<C, E> cb = {}) {
    const std::int64_t timeout = o.timeout.ns();
    return with_deadline(self().template submit_gather<false>(f, std::forward<In>(inputs),
                                                              checked(std::move(o)), std::move(cb)),
                         timeout);
  }
  /// As map_async(f, inputs, options), with only a chunksize.
  template <class F, std::ranges::input_range In>
  auto map_async(F f, In&& inputs, std::size_t chunksize) {
    return map_async(f, std::forward<In>(inputs), map_options{.chunksize = chunksize});
  }
  /// As starmap(), without waiting: returns an AsyncResult<std::vector<R>> at once.
  template <class F, std::ranges::input_range In, class C = std::nullptr_t, class E = std::nullptr_t>
  auto starmap_async(F f, In&& inputs, map_options o = {}, callbacks<C, E> cb = {}) {
    const std::int64_t timeout = o.timeout.ns();
    return with_deadline(self().template submit_gather<true>(f, std::forward<In>(inputs),
                                                             checked(std::move(o)), std::move(cb)),
                         timeout);
  }
  /// As starmap_async(f, inputs, options), with only a chunksize.
  template <class F, std::ranges::input_range In>
  auto starmap_async(F f, In&& inputs, std::size_t chunksize) {
    return starmap_async(f, std::forward<In>(inputs), map_options{.chunksize = chunksize});
  }

  /// Ordered lazy results; the input is consumed lazily with a bounded number of
  /// tasks in flight, so an endless input works.
  template <class F, std::ranges::input_range In>
  auto imap(F f, In&& inputs, std::size_t chunksize = 1) {
    return imap(f, std::forward<In>(inputs), imap_chunksize(chunksize));
  }
  /// As imap(f, inputs, chunksize), with map_options (chunksize, on_progress).
  template <class F, std::ranges::input_range In>
  auto imap(F f, In&& inputs, map_options o) {
    const std::int64_t timeout = o.timeout.ns();
    auto r = self().submit_imap(f, std::forward<In>(inputs), checked(std::move(o)), true);
    r.state()->timeout_ns = timeout;
    return r;
  }
  /// As imap(), yielding each result as soon as it is ready (completion order).
  template <class F, std::ranges::input_range In>
  auto imap_unordered(F f, In&& inputs, std::size_t chunksize = 1) {
    return imap_unordered(f, std::forward<In>(inputs), imap_chunksize(chunksize));
  }
  /// As imap_unordered(f, inputs, chunksize), with map_options.
  template <class F, std::ranges::input_range In>
  auto imap_unordered(F f, In&& inputs, map_options o) {
    const std::int64_t timeout = o.timeout.ns();
    auto r = self().submit_imap(f, std::forward<In>(inputs), checked(std::move(o)), false);
    r.state()->timeout_ns = timeout;
    return r;
  }

  /// Runs `f(args...)` in a worker; returns its AsyncResult at once.
  template <class F, class... A>
    requires(!detail::is_specialization_v<std::decay_t<F>, callbacks>)
  auto apply_async(F f, A&&... args) {
    return self().apply_async(callbacks<>{}, f, std::forward<A>(args)...);
  }
  /// concurrent.futures spelling of apply_async.
  template <class F, class... A>
  auto submit(F f, A&&... args) {
    return apply_async(f, std::forward<A>(args)...);
  }
  /// Runs `f(args...)` in a worker and returns its result (or rethrows its exception).
  template <class F, class... A>
  decltype(auto) apply(F f, A&&... args) {
    auto r = apply_async(f, std::forward<A>(args)...);
    return std::move(r).get_moved();
  }

 private:
  Derived& self() noexcept { return static_cast<Derived&>(*this); }

  template <class R>
  static AsyncResult<R> with_deadline(AsyncResult<R> r, std::int64_t timeout_ns) {
    if (timeout_ns > 0) r.state()->deadline_ns = detail::deadline_after_ns(timeout_ns);
    return r;
  }
  /// map/starmap: the result, or timeout_error once map_options::timeout has passed;
  /// then nothing more of the map is handed out (items running finish unread).
  template <class R>
  static R finish_map(AsyncResult<R> r) {
    try {
      return std::move(r).get_moved();
    } catch (const timeout_error&) {
      if (r.valid() && !r.ready()) {
        r.state()->abandoned.store(true);
        detail::pool_helper::wake_pool(r.state()->helper);
        throw;
      }
      throw;
    }
  }
};

/// Worker pool, as Python's multiprocessing.Pool. `basic_pool<Policy>` starts its
/// workers with Policy; mproc::Pool (basic_pool<dynamic_policy>) reads the start method
/// at run time. Not copyable; all members may be called from any thread.
///
/// A worker that dies mid-task fails exactly that task with worker_died and is
/// replaced; close() refuses new work, join() waits for it, and the destructor does
/// both, so outstanding work is never lost. The task calls (map, imap, apply_async, ...)
/// are those of pool_interface.
/// \code
/// mproc::Pool pool(4);
/// std::vector<int> squares = pool.map(square, std::views::iota(1, 11));
/// for (int s : pool.imap(square, std::views::iota(0))) if (s > 100) break;  // lazy
/// auto r = pool.apply_async(square, 12);   // AsyncResult<int>
/// int v = r.get(std::chrono::seconds(2));  // timeout_error if not ready by then
/// \endcode
template <class Policy>
class basic_pool : public pool_interface<basic_pool<Policy>> {
  friend class pool_interface<basic_pool>;

 public:
  /// A pool of cpu_count() workers.
  basic_pool() : basic_pool(pool_options{}) {}
  /// A pool of `processes` workers (0: cpu_count()).
  explicit basic_pool(std::size_t processes) : basic_pool(pool_options{.processes = processes}) {}
  /// A pool with `opts` (workers, start method, initializer, max_tasks_per_child, task_timeout).
  explicit basic_pool(pool_options opts) : opts_(std::move(opts)) {
    // A negative int arrives as a huge size_t; no system runs more processes than
    // its pid space (PID_MAX_LIMIT).
    if (opts_.processes > (std::size_t(1) << 22))
      throw value_error("mproc::Pool: processes " + std::to_string(opts_.processes) +
                        " is negative or too large (0 means cpu_count())");
    if (opts_.max_tasks_per_child > std::size_t(PTRDIFF_MAX))
      throw value_error("mproc::Pool: max_tasks_per_child " + std::to_string(opts_.max_tasks_per_child) +
                        " is negative (0 means no limit)");
    if (opts_.processes == 0) opts_.processes = cpu_count();
    shared_region_ = detail::shm_region::create(sizeof(detail::pool_shared), "mproc-pool");
    shared_ = new (shared_region_.data()) detail::pool_shared{};
    wake_fd_.reset(static_cast<int>(
        detail::check(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), "eventfd")));
    helper_ = std::make_shared<detail::pool_helper>();
    helper_->pool = this;
    helper_->try_step = &helper_try_step;
    helper_->end_help = &helper_end_help;
    helper_->wake = &helper_wake;
    workers_.resize(opts_.processes);
    for (auto& w : workers_) start_worker(w);
    detail::log(log_level::info, "pool started with %zu workers", workers_.size());
    thread_ = std::thread([this] {
      detail::block_async_signals();  // the program's signals go to the program's threads
      service();
    });
  }

  basic_pool(const basic_pool&) = delete;
  basic_pool& operator=(const basic_pool&) = delete;

  /// Closes and joins: outstanding work finishes, nothing is lost.
  ~basic_pool() {
    try {
      if (!joined_) {
        close();
        join();
      }
    } catch (...) {
      terminate();
    }
    std::lock_guard hl(helper_->m);  // results outliving the pool stop driving it
    helper_->pool = nullptr;
  }

  /// The number of worker processes.
  [[nodiscard]] std::size_t processes() const noexcept { return opts_.processes; }

  using pool_interface<basic_pool>::apply_async;

  // ------------------------------------------------------------ single calls

  /// apply_async with Python's callback / error_callback (see callbacks): `callback` gets
  /// the result, `error_callback` the exception; both run on the pool's service thread.
  template <class C, class E, class F, class... A>
  auto apply_async(callbacks<C, E> cb, F f, A&&... args) {
    using D = std::decay_t<F>;
    detail::require_portable_callable<D>();
    using Tup = detail::args_tuple_t<A...>;
    static_assert(detail::encodable<Tup>, "mproc: a task argument cannot cross a process boundary");
    using R = detail::star_result_t<D, Tup>;
    auto st = std::make_shared<detail::async_state<R>>();
    st->helper = helper_;
    detail::set_callbacks(*st, cb);
    detail::single_input<Tup> one(Tup(std::forward<A>(args)...));
    auto job = std::make_unique<detail::gather_job<D, true, decltype(one), R, true>>(
        static_cast<D>(f), std::move(one), st);
    job->chunksize = 1;
    enqueue(std::move(job));
    return AsyncResult<R>(std::move(st));
  }
  // ------------------------------------------------------------ lifecycle

  /// No more tasks may be submitted; running work continues.
  void close() {
    {
      std::lock_guard l(m_);
      if (state_ == run_state::running) state_ = run_state::closed;
    }
    force_wake();  // the service thread decides when everything is done
  }
  /// Waits for the workers to finish everything and exit. Requires close() or
  /// terminate() first, as in Python.
  void join() {
    {
      std::lock_guard l(m_);
      if (state_ == run_state::running)
        throw state_error("Pool::join: call close() or terminate() first");
    }
    std::lock_guard jl(join_m_);
    if (thread_.joinable()) thread_.join();
    joined_ = true;
  }
  /// Stops the workers now; unfinished tasks fail with pool_not_running.
  void terminate() {
    {
      std::lock_guard l(m_);
      state_ = run_state::terminating;
    }
    force_wake();
    std::lock_guard jl(join_m_);
    if (thread_.joinable()) thread_.join();
    joined_ = true;
  }

 private:
  enum class run_state { running, closed, terminating };


  template <bool Star, class F, class In, class C, class E>
  auto submit_gather(F f, In&& inputs, map_options o, callbacks<C, E> cb) {
    using D = std::decay_t<F>;
    detail::require_portable_callable<D>();
    using V = decltype(detail::as_input_view(std::forward<In>(inputs)));
    using Arg = detail::wire_t<std::ranges::range_value_t<V>>;
    detail::require_encodable<Arg>();
    using R = result_of<D, Arg, Star>;
    using Out = std::vector<detail::stored_t<R>>;
    auto st = std::make_shared<detail::async_state<Out>>();
    st->helper = helper_;
    detail::set_callbacks(*st, cb);
    std::size_t chunksize = o.chunksize;
    std::size_t total = 0;
    if constexpr (std::ranges::sized_range<V> || std::ranges::forward_range<V>) {
      total = static_cast<std::size_t>(std::ranges::distance(inputs));
      if (chunksize == 0) {
        // Python: divmod(len, 4 * processes), rounded up
        std::size_t d = 4 * opts_.processes;
        chunksize = total / d + (total % d ? 1 : 0);
      }
    }
    const bool auto_chunk = o.chunksize == 0;
    if (chunksize == 0) chunksize = 1;
    auto job = std::make_unique<detail::gather_job<D, Star, V, R, false>>(
        static_cast<D>(f), detail::as_input_view(std::forward<In>(inputs)), st);
    job->chunksize = chunksize;
    job->auto_chunk = auto_chunk;
    job->max_chunk = chunksize;
    job->known_total = total;
    job->on_progress = std::move(o.on_progress);
    if constexpr (std::ranges::sized_range<V>) st->value.reserve(total);
    enqueue(std::move(job));
    return AsyncResult<Out>(std::move(st));
  }

  template <class F, class In>
  auto submit_imap(F f, In&& inputs, map_options o, bool ordered) {
    constexpr bool Star = false;
    using D = std::decay_t<F>;
    detail::require_portable_callable<D>();
    using V = decltype(detail::as_input_view(std::forward<In>(inputs)));
    using Arg = detail::wire_t<std::ranges::range_value_t<V>>;
    detail::require_encodable<Arg>();
    using R = result_of<D, Arg, Star>;
    std::size_t known = 0;  // progress can show a total at once for sized inputs
    if constexpr (std::ranges::sized_range<In>)
      known = static_cast<std::size_t>(std::ranges::size(inputs));
    auto st = std::make_shared<detail::imap_state<R>>();
    st->ordered = ordered;
    st->helper = helper_;
    std::size_t chunksize = o.chunksize ? o.chunksize : 1;
    // Enough in flight to keep every worker busy, little enough to bound memory.
    std::size_t window = std::max<std::size_t>(64, 8 * opts_.processes * chunksize);
    auto job = std::make_unique<detail::imap_job<D, Star, V, R>>(
        static_cast<D>(f), detail::as_input_view(std::forward<In>(inputs)), st, window);
    job->chunksize = chunksize;
    job->on_progress = std::move(o.on_progress);
    job->known_total = known;
    enqueue(std::move(job));
    return imap_range<R>(std::move(st));
  }

  template <class D, class Arg, bool Star>
  using result_of = typename detail::task_result<D, Arg, Star>::type;

  void enqueue(std::unique_ptr<detail::job_base> job) {
    {
      std::lock_guard l(m_);
      if (state_ != run_state::running)
        throw pool_not_running("Pool: cannot submit work to a closed or terminated pool");
      job->id = ++next_job_id_;
      incoming_.push_back(std::move(job));
      has_incoming_.store(true, std::memory_order_seq_cst);
    }
    nudge();
  }

  // ------------------------------------------------------------ workers

  static constexpr std::size_t ring_capacity = 256 * 1024;

  void start_worker(detail::worker_slot& w) {
    using namespace detail;
    const std::size_t ring_bytes = spsc_ring::bytes_needed(ring_capacity);
    w.region = shm_region::create(sizeof(worker_ctl) + 2 * ring_bytes, "mproc-pool-worker");
    auto* base = static_cast<std::byte*>(w.region.data());
    w.ctl = new (base) worker_ctl{};
    w.tasks = spsc_ring::init(base + sizeof(worker_ctl), ring_capacity);
    w.results = spsc_ring::init(base + sizeof(worker_ctl) + ring_bytes, ring_capacity);
    w.outstanding.clear();
    w.outstanding_items = 0;
    w.write_offset = w.write_index = 0;
    w.rx.clear();
    w.stopping = w.timed_out = false;
    w.last_result_ns = 0;
    w.number = ++pool_worker_counter();
    std::string name = "PoolWorker-" + std::to_string(w.number);
    auto tasks = w.tasks, results = w.results;
    auto* ctl = w.ctl;
    auto* shared = shared_;
    int wfd = wake_fd_.get();
    const portable_call& init = opts_.initializer;
    std::size_t max_tasks = opts_.max_tasks_per_child;
    const bool timed = bool(opts_.task_timeout);
    auto body = [&]() -> int {
      return worker_main(tasks, results, ctl, shared, wfd, init, max_tasks, timed, name);
    };
    // The same worker for a fresh program image: rings and wake-up by descriptor.
    std::vector<std::byte> payload;
    vector_writer pw{&payload};
    encode(pw, std::uint64_t(ring_capacity));
    encode(pw, std::uint64_t(w.region.size()));
    encode(pw, std::uint64_t(shared_region_.size()));
    encode(pw, std::uint64_t(max_tasks));
    encode(pw, std::uint8_t(timed));
    encode(pw, name);
    init.encode_to_writer(pw);
    // A fresh image shares the program's resource tracker (started now if need be,
    // as for a spawned Process); a forked worker inherits it anyway.
    bool fresh_image = !std::is_same_v<Policy, fork_policy>;
    if constexpr (std::is_same_v<Policy, dynamic_policy>)
      fresh_image = opts_.method.value_or(get_start_method()) != start_method::fork;
    if (fresh_image) resource_tracker::instance().ensure_running();
    const auto [tracker_fd, tracker_pid] = resource_tracker::instance().running();
    encode(pw, std::int32_t(tracker_fd >= 0 ? tracker_pid : -1));
    const int fds[4] = {w.region.fd(), shared_region_.fd(), wfd, tracker_fd};
    launch_request req{name, true, opts_.method, body};
    req.entry = &pool_worker_entry;
    req.payload = payload;
    req.fds = std::span<const int>(fds, tracker_fd >= 0 ? 4 : 3);
    launched_child child = Policy::launch(req);
    w.pid = child.pid;
    w.status = std::move(child.status);
    if (child.pidfd)
      w.pidfd = std::move(child.pidfd);
    else if (!w.status)
      w.pidfd = pidfd_open(w.pid);
    log(log_level::debug, "started %s (pid %d)", name.c_str(), static_cast<int>(w.pid));
  }

  // ------------------------------------------------------------ the engine
  //
  // All service state (worker slots, jobs) is guarded by engine_m_. The service thread
  // holds it while it steps; a caller waiting for a result may take it too and step
  // itself (try_step), which keeps the service thread asleep. Only the service thread
  // sleeps in poll() and handles worker exits.

  /// One pass: accept new jobs, collect results, hand out work, complete jobs.
  bool step() {
    if (stopped_) return false;  // the workers are gone; jobs were completed and freed
    bool progress = false;
    if (has_incoming_.load(std::memory_order_acquire)) {
      std::lock_guard l(m_);
      for (auto& j : incoming_) {
        detail::job_base* p = j.get();
        if (p->input_done)
          queue_finish(p);  // an empty input
        else
          feeding_.push_back(p->id);
        jobs_.emplace(p->id, std::move(j));
      }
      incoming_.clear();
      has_incoming_.store(false, std::memory_order_relaxed);
      progress = true;
    }
    for (auto& w : workers_) progress |= drain_results(w);
    for (auto& w : workers_) progress |= feed(w);
    finish_jobs();  // also completes jobs whose last item failed with a worker's death
    if (opts_.task_timeout) enforce_timeouts();
    active_.store(!jobs_.empty() || !retry_.empty(), std::memory_order_release);
    return progress;
  }

  static bool helper_try_step(void* self) { return static_cast<basic_pool*>(self)->try_step(); }
  static void helper_end_help(void* self) { static_cast<basic_pool*>(self)->end_help(); }
  static void helper_wake(void* self) { static_cast<basic_pool*>(self)->nudge(); }

  /// Called by user threads after they change what the engine should do (new job,
  /// consumer caught up): step once right here, then leave the usual way, so the
  /// change is acted on whether or not the service thread is awake.
  void nudge() {
    try_step();
    end_help();
  }

  bool try_step() {
    if (engine_owner_.load(std::memory_order_relaxed) == std::this_thread::get_id())
      return false;  // a callback running inside step() is waiting on a result
    std::unique_lock el(engine_m_, std::try_to_lock);
    if (!el) return false;
    engine_owner_.store(std::this_thread::get_id(), std::memory_order_relaxed);
    // The service thread sleeps while we drive; workers need not wake it.
    shared_->parent_waiting.store(0, std::memory_order_relaxed);
    last_help_ns_.store(detail::monotonic_ns(), std::memory_order_relaxed);
    bool p = false;
    try {
      p = step();
    } catch (...) {
      // A broken protocol is fatal for the pool: the service thread ends it.
      if (!fatal_) fatal_ = std::current_exception();
      force_wake();
    }
    engine_owner_.store({}, std::memory_order_relaxed);
    return p;
  }

  /// A caller stops driving: if work is still in flight, make sure the service thread
  /// hears of results (the same arm-then-recheck protocol it uses before sleeping).
  void end_help() {
    if (!active_.load(std::memory_order_acquire) && !has_incoming_.load(std::memory_order_acquire))
      return;
    if (engine_owner_.load(std::memory_order_relaxed) == std::this_thread::get_id()) return;
    shared_->parent_waiting.store(1, std::memory_order_seq_cst);
    if (opts_.task_timeout) {  // deadlines must be re-armed by the service thread
      force_wake();
      return;
    }
    // Anything a worker did before the flag was armed is seen by one more step; what
    // it does after will wake the service thread. If the engine is busy, its holder
    // may already be past its last look before sleeping: wake the service thread.
    std::unique_lock el(engine_m_, std::try_to_lock);
    if (!el) {
      force_wake();
      return;
    }
    engine_owner_.store(std::this_thread::get_id(), std::memory_order_relaxed);
    bool p = false;
    try {
      p = step();
    } catch (...) {
      if (!fatal_) fatal_ = std::current_exception();
      p = true;
    }
    engine_owner_.store({}, std::memory_order_relaxed);
    if (p) force_wake();
  }

  void force_wake() {
    std::uint64_t one = 1;
    [[maybe_unused]] auto rc = ::write(wake_fd_.get(), &one, sizeof one);
  }

  void service() {
    std::exception_ptr fatal;
    try {
      service_loop();
    } catch (...) {
      fatal = std::current_exception();
      detail::log(log_level::error, "pool service thread failed");
    }
    std::lock_guard el(engine_m_);
    shutdown_workers(fatal);
  }

  void service_loop() {
    std::int64_t idle_since = 0;
    std::size_t iterations = 0;
    std::vector<pollfd> fds;
    while (true) {
      std::unique_lock el(engine_m_);
      engine_owner_.store(std::this_thread::get_id(), std::memory_order_relaxed);
      run_state st;
      {
        std::lock_guard l(m_);
        st = state_;
      }
      if (st == run_state::terminating) return;
      if (fatal_) std::rethrow_exception(fatal_);
      const bool progress = step();
      if (st == run_state::closed && jobs_.empty() && retry_.empty()) {
        std::lock_guard l(m_);
        if (incoming_.empty()) return;
      }
      // Deaths are seen on every sleep and every 256 busy rounds.
      if (progress) {
        idle_since = 0;
        if (++iterations % 256 == 0) handle_events(poll_events(fds, 0));
        engine_owner_.store({}, std::memory_order_relaxed);
        continue;
      }
      const std::int64_t now = detail::monotonic_ns();
      if (idle_since == 0) idle_since = now;
      // While a waiting caller drives the engine, spinning here would only take a
      // core from it or from a worker: go straight back to sleep.
      const bool caller_driving = now - last_help_ns_.load(std::memory_order_relaxed) < 200'000;
      if (!caller_driving && now - idle_since < spin_ns) {
        engine_owner_.store({}, std::memory_order_relaxed);
        el.unlock();
        sched_yield();
        continue;
      }
      // Sleep until a worker or a caller wakes us, a worker exits or a deadline passes.
      // Arm the flag, then look once more: a worker that published results or freed
      // ring room before it saw the flag is caught by this step.
      shared_->parent_waiting.store(1, std::memory_order_seq_cst);
      if (step()) {
        shared_->parent_waiting.store(0, std::memory_order_relaxed);
        engine_owner_.store({}, std::memory_order_relaxed);
        idle_since = 0;
        continue;
      }
      bool pending;
      {
        std::lock_guard l(m_);
        pending = state_ != st;
      }
      const int timeout = pending ? 0 : next_deadline_ms();
      build_pollfds(fds);
      engine_owner_.store({}, std::memory_order_relaxed);
      el.unlock();  // callers may drive while we sleep; worker slots only change here
      int rc = detail::retry_eintr([&] { return ::poll(fds.data(), fds.size(), timeout); });
      if (rc < 0) detail::throw_errno("poll(pool)");
      el.lock();
      engine_owner_.store(std::this_thread::get_id(), std::memory_order_relaxed);
      shared_->parent_waiting.store(0, std::memory_order_relaxed);
      handle_events(fds);
      engine_owner_.store({}, std::memory_order_relaxed);
      idle_since = 0;
    }
  }

  static constexpr std::int64_t spin_ns = 30'000;

  /// ms until the earliest task deadline, -1 if none.
  int next_deadline_ms() {
    if (!opts_.task_timeout) return -1;
    std::int64_t best = -1;
    const std::int64_t now = detail::monotonic_ns();
    for (auto& w : workers_) {
      std::int64_t s = w.ctl->cur_started_ns.load(std::memory_order_acquire);
      if (!s) continue;
      std::int64_t left = s + opts_.task_timeout.ns() - now;
      if (left < 0) left = 0;
      if (best < 0 || left < best) best = left;
    }
    if (best < 0 && active_.load()) best = opts_.task_timeout.ns();  // work may start soon
    return best < 0 ? -1 : static_cast<int>(std::min<std::int64_t>(best / 1'000'000 + 1, 60'000));
  }

  void build_pollfds(std::vector<pollfd>& fds) {
    fds.clear();
    fds.push_back({wake_fd_.get(), POLLIN, 0});
    for (auto& w : workers_) fds.push_back({w.status ? w.status.get() : w.pidfd.get(), POLLIN, 0});
  }

  std::vector<pollfd>& poll_events(std::vector<pollfd>& fds, int timeout_ms) {
    build_pollfds(fds);
    int rc = detail::retry_eintr([&] { return ::poll(fds.data(), fds.size(), timeout_ms); });
    if (rc < 0) detail::throw_errno("poll(pool)");
    return fds;
  }

  /// Acts on poll results: drains the wake counter, handles worker exits.
  void handle_events(std::vector<pollfd>& fds) {
    if (fds[0].revents & POLLIN) {
      std::uint64_t v;
      [[maybe_unused]] auto r = ::read(wake_fd_.get(), &v, sizeof v);
    }
    for (std::size_t i = 0; i + 1 < fds.size() && i < workers_.size(); ++i)
      if (fds[i + 1].revents) handle_exit(workers_[i]);
  }

  void enforce_timeouts() {
    const std::int64_t now = detail::monotonic_ns();
    for (auto& w : workers_) {
      std::int64_t s = w.ctl->cur_started_ns.load(std::memory_order_acquire);
      if (!s || w.timed_out || now - s < opts_.task_timeout.ns()) continue;
      w.timed_out = true;
      w.timed_out_job = w.ctl->cur_job.load();
      w.timed_out_item = w.ctl->cur_item.load();
      detail::log(log_level::warning, "task overran task_timeout; killing worker %d",
                  static_cast<int>(w.pid));
      ::kill(w.pid, SIGKILL);
    }
  }

  /// Reads every complete result a worker has published.
  bool drain_results(detail::worker_slot& w) {
    std::size_t n = 0;
    const std::size_t items_before = w.outstanding_items;
    last_job_ = nullptr;
    detail::spsc_ring::record rec;
    while (w.results.try_peek(rec)) {
      ++n;
      if (rec.flags & detail::spsc_ring::flag_more) {
        w.rx.insert(w.rx.end(), rec.data, rec.data + rec.len);
        w.results.release(rec);
        w.results.publish_release();  // the worker streams the rest into this room
        continue;
      }
      if (!w.rx.empty()) {
        w.rx.insert(w.rx.end(), rec.data, rec.data + rec.len);
        w.results.release(rec);
        handle_result(w, w.rx);
        w.rx.clear();
      } else {
        handle_result(w, {rec.data, rec.len});
        w.results.release(rec);
      }
    }
    if (!n) return false;
    w.results.publish_release();
    const std::int64_t now = detail::monotonic_ns();
    if (w.last_result_ns && last_job_) {
      const std::int64_t per = (now - w.last_result_ns) / std::int64_t(n);
      auto& avg = last_job_->avg_item_ns;
      avg = avg ? (avg * 3 + per) / 4 : per;
    }
    w.last_result_ns = now;
    // The worker's own time per item in its last chunk, weighted towards the latest so
    // that chunks follow costs that grow along the input.
    if (last_job_ && items_before != w.outstanding_items) {
      const std::int64_t per = w.ctl->last_chunk_item_ns.load(std::memory_order_acquire);
      if (per > 0 && w.ctl->last_chunk_job.load(std::memory_order_relaxed) == last_job_->id) {
        auto& busy = last_job_->busy_item_ns;
        busy = busy ? (busy + per) / 2 : per;
      }
    }
    return true;
  }

  void handle_result(detail::worker_slot& w, std::span<const std::byte> msg) {
    detail::reader r{msg.data(), msg.data() + msg.size()};
    detail::result_header h;
    r.get(&h, sizeof h, "result header");
    if (w.outstanding.empty()) throw serialization_error("pool: result for no outstanding task");
    auto& c = w.outstanding.front();
    if (c.job->id != h.job || c.first + c.done != h.index)
      throw serialization_error("pool: result out of order");
    last_job_ = c.job;
    if (h.status == static_cast<std::uint32_t>(detail::result_status::packed)) {
      if (h.count == 0 || h.count > c.count - c.done)
        throw serialization_error("pool: packed result count out of range");
      c.job->deliver_packed(h.index, h.count, r);
      items_completed(w, c, h.count);
      return;
    }
    if (h.status == static_cast<std::uint32_t>(detail::result_status::ok)) {
      c.job->deliver(h.index, r);
    } else {
      detail::encoded_exception ex;
      std::exception_ptr e;
      try {
        detail::decode(r, ex);
        e = detail::to_exception_ptr(ex, w.pid);
      } catch (...) {
        e = std::current_exception();
      }
      c.job->fail(h.index, std::move(e));
    }
    items_completed(w, c, 1);
  }

  static constexpr std::uint32_t max_chunk_deaths = 3;

  /// A throwing on_progress fails its own call (and is not called again), never the
  /// service thread.
  static void report_progress(detail::job_base& job) {
    if (!job.on_progress) return;
    try {
      job.on_progress(job.completed, job.input_done ? job.dispatched : job.known_total);
    } catch (...) {
      job.callback_error = std::current_exception();
      job.on_progress = nullptr;
    }
  }

  void items_completed(detail::worker_slot& w, detail::outstanding_chunk& c, std::uint32_t n) {
    c.done += n;
    w.outstanding_items -= n;
    auto* job = c.job;
    job->completed += n;
    report_progress(*job);
    if (job->finished()) queue_finish(job);
    if (c.done == c.count) {
      recycle(std::move(c));
      w.outstanding.pop_front();
      if (w.write_index > 0) --w.write_index;
    }
  }

  /// Finished chunks give their buffers back, so steady streams allocate nothing.
  void recycle(detail::outstanding_chunk&& c) {
    if (spare_.size() < 64 && c.bytes.capacity() <= (1u << 20)) {
      c.bytes.clear();
      c.item_offsets.clear();
      spare_.push_back({std::move(c.bytes), std::move(c.item_offsets)});
    }
  }

  /// How many items a worker may hold for a job: enough to hide the wake-up latency
  /// for tiny tasks, few enough that slow or unknown ones stay balanced (Python hands
  /// out one task at a time).
  static std::size_t prefetch_limit(const detail::job_base* j) {
    if (!j || j->avg_item_ns <= 0) return 1;
    // Once the cost is known, a second chunk waits in the ring, so a worker never sits
    // idle while the parent wakes up to hand out the next one.
    std::int64_t n = 2'000'000 / std::max<std::int64_t>(j->avg_item_ns, 1);  // ~2 ms of work
    return static_cast<std::size_t>(std::clamp<std::int64_t>(n, std::int64_t(2 * j->chunksize), 4096));
  }

  /// map's default chunk: about 1 ms of work by the measured cost per item, and no
  /// more than a quarter of each worker's share of what is left (unless that is under
  /// 0.1 ms of work), never more than Python's size. The estimate trails costs that
  /// grow along the input; the share of what is left keeps the late, costly chunks
  /// small anyway, so the last ones end close together, while the 2 us a chunk costs
  /// to hand out stays under 2%. Until a cost is known, Python's size: a smaller probe
  /// costs tiny tasks an extra round trip.
  std::size_t auto_chunksize(const detail::job_base& j) const {
    if (j.busy_item_ns <= 0) return j.max_chunk;
    const std::int64_t per = j.busy_item_ns;
    std::int64_t n = 1'000'000 / per;
    if (j.known_total > j.dispatched) {
      const auto left = static_cast<std::int64_t>(j.known_total - j.dispatched);
      const std::int64_t share = left / std::int64_t(4 * opts_.processes);
      n = std::min(n, std::max(share, std::int64_t(100'000) / per));
    }
    return static_cast<std::size_t>(std::clamp<std::int64_t>(n, 1, std::int64_t(j.max_chunk)));
  }

  /// Gives a worker more work and pushes pending bytes into its ring.
  bool feed(detail::worker_slot& w) {
    bool any = false;
    while (!w.stopping) {
      if (!retry_.empty()) {
        if (!w.outstanding.empty()) break;  // re-sent work goes one chunk at a time
        w.outstanding.push_back(std::move(retry_.front()));
        retry_.pop_front();
        w.outstanding_items += w.outstanding.back().count;
        any = true;
        continue;
      }
      detail::job_base* j = next_job();
      if (!j) break;
      if (!w.outstanding.empty() && w.outstanding_items >= prefetch_limit(j)) break;
      detail::outstanding_chunk c;
      if (!spare_.empty()) {
        c.bytes = std::move(spare_.back().first);
        c.item_offsets = std::move(spare_.back().second);
        spare_.pop_back();
      }
      c.job = j;
      c.first = j->dispatched;
      if (j->auto_chunk) j->chunksize = auto_chunksize(*j);
      c.count = j->next_chunk(c.bytes, c.item_offsets);
      if (j->input_done) queue_finish(j);
      if (c.count == 0) continue;  // input ended exactly at a chunk boundary
      j->dispatched += c.count;
      w.outstanding_items += c.count;
      w.outstanding.push_back(std::move(c));
      any = true;
      if (w.outstanding.size() > 256) break;
    }
    any |= push_bytes(w);
    return any;
  }

  /// The oldest job that can hand out more items. Jobs whose input is done leave the
  /// queue, so with many jobs in flight this stays cheap.
  detail::job_base* next_job() {
    for (auto it = feeding_.begin(); it != feeding_.end();) {
      auto found = jobs_.find(*it);
      detail::job_base* j = found == jobs_.end() ? nullptr : found->second.get();
      if (!j || j->input_done) {
        if (it == feeding_.begin()) {
          feeding_.pop_front();
          it = feeding_.begin();
        } else {
          ++it;
        }
        continue;
      }
      if (j->may_dispatch()) return j;
      ++it;
    }
    return nullptr;
  }

  /// j may have finished: finish_jobs looks at it (and only at such jobs).
  void queue_finish(detail::job_base* j) {
    if (j->finish_queued) return;
    j->finish_queued = true;
    finishing_.push_back(j);
  }

  bool push_bytes(detail::worker_slot& w) {
    bool any = false;
    while (w.write_index < w.outstanding.size()) {
      auto& c = w.outstanding[w.write_index];
      const std::size_t left = c.bytes.size() - w.write_offset;
      const std::size_t frag = std::min(left, w.tasks.max_fragment());
      std::byte* p = w.tasks.try_reserve(frag);
      if (!p) break;
      std::memcpy(p, c.bytes.data() + w.write_offset, frag);
      w.write_offset += frag;
      const bool last = w.write_offset == c.bytes.size();
      w.tasks.commit(frag, last ? 0 : detail::spsc_ring::flag_more);
      any = true;
      if (last) {
        ++w.write_index;
        w.write_offset = 0;
      } else {
        w.tasks.publish();  // the worker reassembles as it goes, making room
      }
    }
    if (any) w.tasks.publish();
    return any;
  }

  void finish_jobs() {
    if (finishing_.empty()) return;
    std::vector<detail::job_base*> now;
    now.swap(finishing_);
    for (auto* j : now) {
      j->finish_queued = false;
      if (j->finished() && !chunks_reference(j)) {
        auto owned = std::move(jobs_.at(j->id));
        jobs_.erase(j->id);
        owned->complete(owned->callback_error);
      }
    }
  }
  bool chunks_reference(const detail::job_base* j) const {
    for (auto& c : retry_)
      if (c.job == j) return true;
    return false;
  }

  /// A worker's pidfd fired: account for its tasks and start a replacement.
  void handle_exit(detail::worker_slot& w) {
    int code = 255;
    if (w.status) {
      std::int32_t c = 0;
      ssize_t n = detail::retry_eintr([&] { return ::read(w.status.get(), &c, sizeof c); });
      code = n == sizeof c ? c : 255;
      w.status.reset();
    } else {
      int status = 0;
      pid_t r = detail::waitpid_eintr(w.pid, &status, WNOHANG);
      if (r == 0) return;  // not actually gone yet
      code = r > 0 ? detail::exitcode_from_status(status) : 255;
    }
    // Every result it finished counts, published or not: then the item it was running
    // is exactly the next one of its first chunk.
    w.results.adopt_unpublished(w.ctl->results_committed.load(std::memory_order_acquire),
                                w.ctl->open_at.load(std::memory_order_acquire),
                                w.ctl->open_len.load(std::memory_order_acquire));
    drain_results(w);
    w.rx.clear();  // a result it was still streaming out will not be completed
    const bool was_initialized = w.ctl->initialized.load(std::memory_order_acquire) != 0;
    const std::int64_t started = w.ctl->cur_started_ns.load(std::memory_order_acquire);
    const std::uint64_t cur_job = w.ctl->cur_job.load(), cur_item = w.ctl->cur_item.load();
    const std::uint64_t chunk_job = w.ctl->chunk_job.load(), chunk_first = w.ctl->chunk_first.load();
    if (code != 0 || w.timed_out)
      detail::log(log_level::warning, "pool worker %d died (exit code %d)",
                  static_cast<int>(w.pid), code);
    bool first = true;
    for (auto& c : w.outstanding) {
      std::uint32_t from = c.done;
      bool item_failed = false;
      if (first && (started || w.timed_out) && c.job->id == cur_job &&
          c.first + c.done == cur_item) {
        // The item it was running when it died: that one fails.
        std::exception_ptr e;
        if (w.timed_out && w.timed_out_item == cur_item && w.timed_out_job == cur_job) {
          e = std::make_exception_ptr(timeout_error(
              "task " + std::to_string(cur_item) + " exceeded task_timeout; its worker (pid " +
              std::to_string(w.pid) + ") was killed"));
        } else {
          const int sig = code < 0 ? -code : 0;
          std::string what = "worker process " + std::to_string(w.pid) +
                             " died while running task " + std::to_string(cur_item) +
                             (sig ? " (killed by signal " + std::to_string(sig) + ")"
                                  : " (exit code " + std::to_string(code) + ")");
          e = std::make_exception_ptr(worker_died(what, w.pid, code, sig));
        }
        c.job->fail(cur_item, std::move(e));
        ++c.job->completed;
        report_progress(*c.job);
        from = c.done + 1;
        item_failed = true;
      }
      // A chunk the worker had received and died on before finishing or starting any
      // item (it failed while decoding it, say) is sent again; after
      // max_chunk_deaths such deaths in a row its items fail instead, so a task that
      // kills every worker cannot keep the pool restarting workers for ever.
      const bool progressed = c.done > 0 || item_failed;
      std::uint32_t deaths = progressed ? 0 : c.deaths;
      if (first && !progressed && code != 0 && c.job->id == chunk_job && c.first == chunk_first)
        ++deaths;
      first = false;
      queue_finish(c.job);
      if (deaths >= max_chunk_deaths) {
        const int sig = code < 0 ? -code : 0;
        for (std::uint32_t k = from; k < c.count; ++k) {
          std::string what = "worker processes died " + std::to_string(deaths) +
                             " times in a row running the chunk of task " +
                             std::to_string(c.first + k) + " before any of its tasks finished" +
                             (sig ? " (last killed by signal " + std::to_string(sig) + ")"
                                  : " (last exit code " + std::to_string(code) + ")");
          c.job->fail(c.first + k, std::make_exception_ptr(worker_died(what, w.pid, code, sig)));
          ++c.job->completed;
        }
        report_progress(*c.job);
        continue;
      }
      if (from < c.count) {
        retry_.push_back(rebuild_chunk(c, from));
        retry_.back().deaths = deaths;
      }
    }
    w.outstanding.clear();
    std::lock_guard l(m_);
    if (state_ == run_state::terminating) return;
    // A worker that dies before it finished starting while another one did start was
    // killed from outside (the start itself works): replace it, never give up on it.
    if (!was_initialized && code != 0 && !another_worker_started(w)) {
      if (++failed_starts_ >= 3) {
        throw error("Pool: workers keep dying before they finish starting (exit code " +
                    std::to_string(code) + "); is the initializer failing?");
      }
    } else {
      failed_starts_ = 0;
    }
    if (w.stopping) {
      w.pid = -1;
      return;
    }
    start_replacement(w);
  }

  [[nodiscard]] bool another_worker_started(const detail::worker_slot& w) const {
    for (const auto& o : workers_)
      if (&o != &w && o.pid > 0 && o.ctl && o.ctl->initialized.load(std::memory_order_acquire))
        return true;
    return false;
  }

  /// Starts the replacement of a dead worker. A replacement killed before it reached
  /// mproc::init (spawn) fails to launch: that is one more worker dying while starting,
  /// and counts as such.
  void start_replacement(detail::worker_slot& w) {
    for (int launch_failures = 0;;) {
      try {
        start_worker(w);
        return;
      } catch (const start_method_error&) {
        w.pid = -1;
        w.pidfd.reset();
        w.status.reset();
        const bool others_start = another_worker_started(w);
        if ((!others_start && ++failed_starts_ >= 3) || ++launch_failures >= 100) throw;
        detail::log(log_level::warning, "pool worker died while starting; starting another");
      }
    }
  }

  /// A chunk holding items [from, count) of c, to run again elsewhere.
  static detail::outstanding_chunk rebuild_chunk(const detail::outstanding_chunk& c,
                                                 std::uint32_t from) {
    detail::outstanding_chunk n;
    n.job = c.job;
    n.first = c.first + from;
    n.count = c.count - from;
    detail::task_header h;
    std::memcpy(&h, c.bytes.data(), sizeof h);
    const std::size_t prefix = sizeof h + h.callable_len;
    n.bytes.assign(c.bytes.begin(), c.bytes.begin() + static_cast<std::ptrdiff_t>(prefix));
    if (h.item_size) {  // packed: fixed-size items, no offsets kept
      const std::size_t begin = prefix + std::size_t(from) * h.item_size;
      n.bytes.insert(n.bytes.end(), c.bytes.begin() + static_cast<std::ptrdiff_t>(begin),
                     c.bytes.end());
    }
    for (std::uint32_t k = from; !h.item_size && k < c.count; ++k) {
      const std::size_t begin = c.item_offsets[k];
      const std::size_t end = k + 1 < c.count ? c.item_offsets[k + 1] : c.bytes.size();
      n.item_offsets.push_back(static_cast<std::uint32_t>(n.bytes.size()));
      n.bytes.insert(n.bytes.end(), c.bytes.begin() + static_cast<std::ptrdiff_t>(begin),
                     c.bytes.begin() + static_cast<std::ptrdiff_t>(end));
    }
    h.first = n.first;
    h.count = n.count;
    std::memcpy(n.bytes.data(), &h, sizeof h);
    return n;
  }

  /// Stops every worker: politely when all work is done, by SIGKILL otherwise.
  void shutdown_workers(std::exception_ptr fatal) {
    bool terminating;
    {
      std::lock_guard l(m_);
      terminating = state_ == run_state::terminating || fatal;
      if (fatal) state_ = run_state::terminating;
    }
    if (!terminating) {
      for (auto& w : workers_) {
        w.stopping = true;
        detail::task_header h{static_cast<std::uint32_t>(detail::task_kind::stop), 0, 0, 0, 0, 0, 0};
        std::byte* p = nullptr;
        const std::int64_t deadline = detail::monotonic_ns() + 2'000'000'000;
        while (!(p = w.tasks.try_reserve(sizeof h)) && detail::monotonic_ns() < deadline)
          std::this_thread::sleep_for(std::chrono::microseconds(100));
        if (p) {
          std::memcpy(p, &h, sizeof h);
          w.tasks.commit(sizeof h, 0);
          w.tasks.publish();
        }
      }
    }
    for (auto& w : workers_) {
      if (w.pid <= 0) continue;
      if (terminating) ::kill(w.pid, SIGKILL);
      pollfd p{w.status ? w.status.get() : w.pidfd.get(), POLLIN, 0};
      if (detail::poll_until(&p, 1, detail::monotonic_ns() + 5'000'000'000) == 0) {
        ::kill(w.pid, SIGKILL);
        detail::poll_until(&p, 1, detail::monotonic_ns() + 5'000'000'000);
      }
      if (!w.status) {  // a forkserver's child is reaped by the forkserver
        int status;
        detail::waitpid_eintr(w.pid, &status, 0);
      }
      w.pid = -1;
      w.pidfd.reset();
      w.status.reset();
    }
    // Anything still pending can no longer run.
    auto gone = fatal ? fatal
                      : std::make_exception_ptr(
                            pool_not_running("Pool: terminated before the task completed"));
    std::vector<std::unique_ptr<detail::job_base>> all;
    {
      std::lock_guard l(m_);
      for (auto& j : incoming_) all.push_back(std::move(j));
      incoming_.clear();
      state_ = run_state::terminating;
    }
    for (auto& [p, j] : jobs_) all.push_back(std::move(j));
    jobs_.clear();
    feeding_.clear();
    finishing_.clear();
    retry_.clear();
    // Nothing may refer to the jobs once they are freed: a caller stepping the engine
    // after this (an imap_range going out of scope, say) finds no work.
    for (auto& w : workers_) {
      w.outstanding.clear();
      w.outstanding_items = 0;
      w.write_index = w.write_offset = 0;
      w.rx.clear();
    }
    last_job_ = nullptr;
    stopped_ = true;
    active_.store(false, std::memory_order_release);
    for (auto& j : all) j->complete(gone);
    detail::log(log_level::info, "pool stopped");
  }

  pool_options opts_;
  detail::shm_region shared_region_;
  detail::pool_shared* shared_ = nullptr;
  detail::unique_fd wake_fd_;
  std::vector<detail::worker_slot> workers_;

  std::mutex m_;  // guards state_ and incoming_
  run_state state_ = run_state::running;
  std::vector<std::unique_ptr<detail::job_base>> incoming_;
  std::atomic<bool> has_incoming_{false};
  std::uint64_t next_job_id_ = 0;

  // Owned by the service thread.
  std::unordered_map<std::uint64_t, std::unique_ptr<detail::job_base>> jobs_;  // by id
  std::deque<std::uint64_t> feeding_;         // jobs whose input was not done, oldest first
  std::vector<detail::job_base*> finishing_;  // may have finished
  bool stopped_ = false;                      // shutdown_workers ran
  std::deque<detail::outstanding_chunk> retry_;
  detail::job_base* last_job_ = nullptr;  // job of the last result handled
  std::exception_ptr fatal_;              // set by a helper whose step failed
  std::vector<std::pair<std::vector<std::byte>, std::vector<std::uint32_t>>> spare_;
  int failed_starts_ = 0;

  std::mutex engine_m_;  // guards everything the service thread owns
  std::atomic<std::thread::id> engine_owner_{};
  std::atomic<bool> active_{false};  // jobs in flight (readable without engine_m_)
  std::atomic<std::int64_t> last_help_ns_{0};  // when a caller last stepped the engine
  std::shared_ptr<detail::pool_helper> helper_;

  std::mutex join_m_;
  std::thread thread_;
  bool joined_ = false;
};

/// The pool most programs use: its start method is pool_options::method, else
/// get_start_method(). See basic_pool.
using Pool = basic_pool<dynamic_policy>;

}  // namespace mproc
