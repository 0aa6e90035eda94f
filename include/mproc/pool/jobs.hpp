/// \file
/// Pool stage 5, parent side: a call as the service thread sees it (job_base), its inputs
/// encoded chunk by chunk and its results gathered. Before: worker.hpp; next: imap_range.hpp.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <ranges>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "async_result.hpp"
#include "options.hpp"
#include "worker.hpp"
#include "../detail/callable.hpp"
#include "../detail/input_view.hpp"
#include "../serialization.hpp"

namespace mproc {

namespace detail {

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

  /// Calls on_progress after items completed. A throwing on_progress fails its own call
  /// (callback_error, raised when the call completes; not called again), never the
  /// thread that reports: the same for every backend.
  void report_progress() noexcept {
    if (!on_progress) return;
    try {
      on_progress(completed, input_done ? dispatched : known_total);
    } catch (...) {
      callback_error = std::current_exception();
      on_progress = nullptr;
    }
  }
};

template <class F, class Arg, bool Star, bool Packed>
std::int64_t invoker_address() {
  // Not cached in a local static: a fork while another thread ran its initialiser would
  // leave the guard taken in the child. Encoding is a scan of the few loaded modules.
  return encode_code_address(reinterpret_cast<const void*>(&invoke_chunk<worker_context, F, Arg, Star, Packed>));
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
      // Otherwise the end is left to complete(): a total shown now would let the
      // caller's loop end after the last result and miss the error of an on_progress
      // that throws on that last report.
      if (feed_.error()) {
        push(dispatched + n, feed_.error());
        std::lock_guard l(st_->m);
        st_->total = dispatched + n + 1;
        st_->cv.notify_all();
      }
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

}  // namespace mproc
