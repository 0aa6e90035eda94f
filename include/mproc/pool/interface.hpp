/// \file
/// Pool stage 7, the calls a user makes: pool_interface (map, imap, apply, submit, ...), written
/// once for mproc::Pool and mproc::mpi::Pool. Before: imap_range.hpp; next: engine.hpp.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <ranges>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "async_result.hpp"
#include "imap_range.hpp"
#include "jobs.hpp"
#include "options.hpp"
#include "../detail/callable.hpp"
#include "../errors.hpp"

namespace mproc {

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

/// A pool's run state, Python's RUN / CLOSE / TERMINATE: close() lets submitted work
/// finish, terminate() fails what is unfinished, and join() waits for the backend's
/// service thread to see that and end. The same for every backend: each adds its own
/// state under m_ and wakes its service thread (wake_service()) when the state moves.
enum class run_state { running, closed, terminating };

class run_control {
 protected:
  /// Moves to `to`; closed only from running (terminating wins over closed).
  void set_state(run_state to) {
    std::lock_guard l(m_);
    if (to == run_state::terminating || state_ == run_state::running) state_ = to;
  }
  /// The submission gate, with m_ held.
  void require_running(const char* pool) const {
    if (state_ != run_state::running)
      throw pool_not_running(std::string(pool) + ": cannot submit work to a closed or terminated pool");
  }
  /// join(): Python's rule first (close() or terminate() before join()).
  void join_service(const char* pool) {
    {
      std::lock_guard l(m_);
      if (state_ == run_state::running)
        throw state_error(std::string(pool) + "::join: call close() or terminate() first");
    }
    wait_service();
  }
  void wait_service() {
    std::lock_guard jl(join_m_);  // concurrent joiners: one joins, the others wait here
    if (thread_.joinable()) thread_.join();
    joined_ = true;
  }

  std::mutex m_;  // guards state_ and the backend's submission queue
  run_state state_ = run_state::running;
  std::mutex join_m_;
  std::thread thread_;  // the backend's service thread
  bool joined_ = false;
};

}  // namespace detail

/// The calls every pool offers: map, starmap, imap, imap_unordered, apply, submit and
/// the _async forms. mproc::Pool and mproc::mpi::Pool inherit them, so both take the
/// same tasks and return the same result types. The submission stage (checking a task,
/// sizing chunks, building its job) is written here once; a backend supplies only
///   processes()                        how many workers share the work,
///   imap_window(chunksize)             items an imap keeps in flight,
///   attach(state)                      what the backend adds to a result's state,
///   enqueue_task<D, V, Star>(job)      the hand-over to its transport.
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
    return with_deadline(submit_gather<false>(f, std::forward<In>(inputs),
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
    return with_deadline(submit_gather<true>(f, std::forward<In>(inputs),
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
    auto r = submit_imap(f, std::forward<In>(inputs), checked(std::move(o)), true);
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
    auto r = submit_imap(f, std::forward<In>(inputs), checked(std::move(o)), false);
    r.state()->timeout_ns = timeout;
    return r;
  }

  /// Runs `f(args...)` in a worker; returns its AsyncResult at once.
  template <class F, class... A>
    requires(!detail::is_specialization_v<std::decay_t<F>, callbacks>)
  auto apply_async(F f, A&&... args) {
    return apply_async(callbacks<>{}, f, std::forward<A>(args)...);
  }
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
    self().attach(*st);
    detail::set_callbacks(*st, cb);
    detail::single_input<Tup> one(Tup(std::forward<A>(args)...));
    using V = decltype(one);
    auto job = std::make_unique<detail::gather_job<D, true, V, R, true>>(static_cast<D>(f),
                                                                         std::move(one), st);
    job->chunksize = 1;
    self().template enqueue_task<D, V, true>(std::move(job));
    return AsyncResult<R>(std::move(st));
  }
  /// concurrent.futures spelling of apply_async.
  template <class F, class... A>
  auto submit(F f, A&&... args) {
    return apply_async(f, std::forward<A>(args)...);
  }
  /// No more tasks may be submitted; submitted work continues.
  void close() {
    self().set_state(detail::run_state::closed);
    self().wake_service();  // the service thread decides when everything is done
  }
  /// Waits until all submitted work is done and the pool's service thread has ended.
  /// Requires close() or terminate() first, as in Python (state_error otherwise).
  void join() { self().join_service(Derived::pool_name); }
  /// Stops now: unfinished tasks fail with pool_not_running and running ones are
  /// stopped (mpi::Pool with local_processes = -1 waits for the chunks running in its
  /// ranks and drops their results, so the ranks are free for the next pool).
  void terminate() {
    self().set_state(detail::run_state::terminating);
    self().wake_service();
    self().wait_service();
  }

  /// Runs `f(args...)` in a worker and returns its result (or rethrows its exception).
  template <class F, class... A>
  decltype(auto) apply(F f, A&&... args) {
    auto r = apply_async(f, std::forward<A>(args)...);
    return std::move(r).get_moved();
  }

 private:
  Derived& self() noexcept { return static_cast<Derived&>(*this); }

  template <class D, class Arg, bool Star>
  using result_of = typename detail::task_result<D, Arg, Star>::type;

  /// map/starmap's job: every item, results gathered in input order.
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
    self().attach(*st);
    detail::set_callbacks(*st, cb);
    std::size_t chunksize = o.chunksize;
    std::size_t total = 0;
    if constexpr (std::ranges::sized_range<V> || std::ranges::forward_range<V>) {
      total = static_cast<std::size_t>(std::ranges::distance(inputs));
      if (chunksize == 0) {
        // Python: divmod(len, 4 * processes), rounded up
        const std::size_t d = 4 * self().processes();
        chunksize = total / d + (total % d ? 1 : 0);
      }
    }
    if (chunksize == 0) chunksize = 1;
    auto job = std::make_unique<detail::gather_job<D, Star, V, R, false>>(
        static_cast<D>(f), detail::as_input_view(std::forward<In>(inputs)), st);
    job->chunksize = chunksize;
    // chunksize 0: a backend that measures item cost may size chunks below Python's
    job->auto_chunk = o.chunksize == 0;
    job->max_chunk = chunksize;
    job->known_total = total;
    job->on_progress = std::move(o.on_progress);
    if constexpr (std::ranges::sized_range<V>) st->value.reserve(total);
    self().template enqueue_task<D, V, Star>(std::move(job));
    return AsyncResult<Out>(std::move(st));
  }

  /// imap/imap_unordered's job: the input read lazily, a bounded window in flight.
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
    self().attach(*st);
    const std::size_t chunksize = o.chunksize ? o.chunksize : 1;
    auto job = std::make_unique<detail::imap_job<D, Star, V, R>>(
        static_cast<D>(f), detail::as_input_view(std::forward<In>(inputs)), st,
        self().imap_window(chunksize));
    job->chunksize = chunksize;
    job->on_progress = std::move(o.on_progress);
    job->known_total = known;
    self().template enqueue_task<D, V, Star>(std::move(job));
    return imap_range<R>(std::move(st));
  }

  template <class R>
  static AsyncResult<R> with_deadline(AsyncResult<R> r, std::int64_t timeout_ns) {
    if (timeout_ns > 0) r.state()->deadline_ns = detail::deadline_after(timeout_ns);
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

}  // namespace mproc
