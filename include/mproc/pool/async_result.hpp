/// \file
/// Pool stage 2, results: AsyncResult, wait and as_completed, where a call's outcome waits
/// for the caller. Before: options.hpp; next: wire.hpp, how a task travels to a worker.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <iterator>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <sched.h>

#include "options.hpp"
#include "../detail/log.hpp"
#include "../detail/posix/posix.hpp"
#include "../detail/remote_exception.hpp"
#include "../version.hpp"
#include "../errors.hpp"

namespace mproc {

namespace detail {

template <class R>
using stored_t = std::conditional_t<std::is_void_v<R>, std::monostate, R>;

/// Waits on cv (with l held) until pred() holds or the deadline passes (no_deadline:
/// never); false when it passed first.
template <class Lock, class Pred>
bool wait_until_deadline(std::condition_variable& cv, Lock& l, deadline_t d, Pred pred) {
  if (d == no_deadline) {
    cv.wait(l, pred);
    return true;
  }
  return cv.wait_for(l, std::chrono::nanoseconds(ns_left(d)), pred);
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
    if (!progress) detail::yield_cpu();  // on a busy machine the worker may need this core
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
  deadline_t deadline_ns = no_deadline;  // map_options::timeout for get()/wait()

  /// Called by the pool before it hands out the task's first item; false: cancelled
  /// or abandoned, run nothing.
  bool try_start() noexcept {
    std::uint8_t p = pending;
    if (!phase.compare_exchange_strong(p, running, std::memory_order_acq_rel))
      return p == running && !abandoned.load(std::memory_order_acquire);
    return !abandoned.load(std::memory_order_acquire);
  }
  /// concurrent.futures' cancel(): succeeds only before the task was handed out.
  bool cancel();
  /// Registers a listener for completion as `index`; false when already done.
  bool listen(const std::shared_ptr<completion_listener>& l, std::size_t index);
  /// Runs fn once done: now (on this thread) if already done.
  void on_done(std::function<void()> fn);
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

  /// Waits until done or the deadline passes; true when done.
  bool wait_until(deadline_t d);
  void wait() { wait_until(no_deadline); }
  bool wait_for_ns(std::int64_t ns) { return wait_until(deadline_after(std::max<std::int64_t>(ns, 0))); }
  [[nodiscard]] bool ready() {
    std::lock_guard l(m);
    return done;
  }
  /// Marks the result final; the value (if any) was stored before.
  void finish(std::exception_ptr e);
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
    s_->wait_until(s_->deadline_ns);
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
    if (!s_->wait_until(s_->deadline_ns))
      throw timeout_error("AsyncResult::get: result not ready within map_options::timeout");
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
      : as_completed(results, detail::deadline_after(detail::to_ns(timeout))) {}

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
      if (!detail::wait_until_deadline(lst.cv, l, o_->deadline_ns_, ready))
        throw timeout_error("as_completed: " + std::to_string(o_->total_ - o_->yielded_) +
                            " of " + std::to_string(o_->total_) +
                            " results not ready within the timeout");
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
        const std::int64_t left = ns_left(deadline_ns);
        if (left == 0) break;
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
  return detail::wait_for_results(results, when, detail::deadline_after(detail::to_ns(timeout)));
}
/// wait(results, ALL_COMPLETED, timeout).
template <class R, class Rep, class Period>
wait_result<R> wait(std::vector<AsyncResult<R>>& results, std::chrono::duration<Rep, Period> timeout) {
  return wait(results, ALL_COMPLETED, timeout);
}

}  // namespace mproc

#if MPROC_HEADER_ONLY
#include "async_result_impl.hpp"
#endif
