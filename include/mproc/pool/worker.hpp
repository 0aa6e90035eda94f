/// \file
/// Pool stage 4, worker side: the worker process's item loop (decode an item in place, call
/// the function, write the result). Before: wire.hpp; next: jobs.hpp, the parent side.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <unistd.h>

#include "wire.hpp"
#include "options.hpp"
#include "../detail/callable.hpp"
#include "../detail/log.hpp"
#include "../detail/posix/fork.hpp"
#include "../detail/posix/posix.hpp"
#include "../detail/posix/shm_region.hpp"
#include "../detail/remote_exception.hpp"
#include "../detail/spsc_ring.hpp"
#include "../detail/posix/tracker.hpp"
#include "../errors.hpp"
#include "../serialization.hpp"
#include "../version.hpp"

namespace mproc {

namespace detail {

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

  /// The item failed with e: its error is sent in its place.
  void emit_error(std::uint64_t job, std::uint64_t index, std::exception_ptr e);

  /// Wakes the service thread if it sleeps (after results or freed task room).
  void notify_parent() noexcept {
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (shared_->parent_waiting.load(std::memory_order_relaxed) &&
        shared_->parent_waiting.exchange(0, std::memory_order_seq_cst)) {
      detail::eventfd_signal(wake_fd_);
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
template <class Sink>
void fail_chunk(Sink& ctx, const task_view& t, const std::exception_ptr& e) {
  for (std::uint32_t k = 0; k < t.count; ++k) {
    ctx.begin_item(t.job, t.first + k);
    ctx.emit_error(t.job, t.first + k, e);
    ctx.end_item();
  }
}

template <class T>
inline constexpr bool packable_v = trivially_copyable_value<T>;

/// Runs a chunk: the worker's item loop, for every backend. PackedArgs: the items are
/// raw Arg values back to back (trivially copyable arguments); results that are
/// trivially copyable go back packed where the Sink packs them. Sink: worker_context
/// (a pool worker's result ring) or result_writer (relay.hpp: one result message, as
/// an MPI rank running tasks itself sends).
template <class Sink, class F, class Arg, bool Star, bool PackedArgs>
void invoke_chunk(Sink& ctx, task_view& t) {
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

/// How many pool workers this process has started (names them).
MPROC_FUNC std::atomic<unsigned>& pool_worker_counter();

/// Body of a pool worker process; returns its exit code.
MPROC_FUNC int worker_main(spsc_ring tasks, spsc_ring results, worker_ctl* ctl, pool_shared* shared,
                           int wake_fd, const portable_call& initializer, std::size_t max_tasks,
                           bool timed, std::string name);

/// A pool worker in a fresh program image (spawn, forkserver): maps the rings and
/// the pool's shared word from the received descriptors, then runs as a forked
/// worker would. fds: [worker region, pool region, wake eventfd, resource tracker
/// (if one runs)].
MPROC_FUNC int pool_worker_entry(std::span<const std::byte> payload, std::span<const int> fds);

}  // namespace detail

}  // namespace mproc

#if MPROC_HEADER_ONLY
#include "worker_impl.hpp"
#endif
