/// \file
/// Pool stage for backends: a chunk encoded on another host (by the same input_feed as
/// a local call's) runs on this pool's workers, and its results go back as one message.
/// mproc::mpi's worker ranks serve their chunks this way, so a task that crashes or
/// overruns its time there fails alone, exactly as locally: the worker loop, crash
/// recovery and timeouts are the local pool's own. Not included by pool.hpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <utility>
#include <variant>
#include <vector>

#include <unistd.h>

#include "jobs.hpp"
#include "wire.hpp"
#include "../detail/deadline.hpp"
#include "../detail/posix/posix.hpp"
#include "../detail/remote_exception.hpp"
#include "../errors.hpp"

namespace mproc::detail {

/// Starts the result message of one chunk.
struct result_msg_header {
  std::uint64_t job;
  std::uint64_t first;
  std::uint32_t count;
  std::int32_t pid;         // the answering process, for remote_error
  std::int64_t elapsed_ns;  // time it spent on the chunk, for the sender's prefetch depth
};
/// Then per item: this, then `len` bytes (the value, or an encoded_exception).
struct result_item_header {
  std::uint32_t status;  // result_status: ok or error
  std::uint32_t pad;
  std::uint64_t len;
};

/// Builds the result message of one chunk, item by item in index order.
class result_writer {
 public:
  void begin(std::uint64_t job, std::uint64_t first, std::uint32_t count) {
    buf_.resize(sizeof(result_msg_header));
    result_msg_header h{job, first, count, static_cast<std::int32_t>(detail::current_pid()), 0};
    std::memcpy(buf_.data(), &h, sizeof h);
    items_ = 0;
    started_ns_ = monotonic_ns();
  }
  /// Stamps the time since begin() into the header.
  void end() noexcept {
    const std::int64_t elapsed = monotonic_ns() - started_ns_;
    std::memcpy(buf_.data() + offsetof(result_msg_header, elapsed_ns), &elapsed, sizeof elapsed);
  }
  /// An item's value, encoded here (a value that cannot be encoded is its error).
  template <class V>
  void ok(const V& v) {
    std::size_t n;
    try {
      n = encoded_size(v);
    } catch (...) {
      error(std::current_exception());
      return;
    }
    put(result_status::ok, n, [&](std::byte* p) { encode_to(v, p); });
  }
  /// An item's value, already encoded.
  void ok_bytes(const std::byte* p, std::size_t n) {
    put(result_status::ok, n, [&](std::byte* to) {
      if (n) std::memcpy(to, p, n);  // a void result has no bytes (and p may be null)
    });
  }
  void error(std::exception_ptr e) {
    encoded_exception ex = capture_exception(std::move(e));
    std::size_t n = encoded_size(ex);
    put(result_status::error, n, [&](std::byte* p) { encode_to(ex, p); });
  }
  [[nodiscard]] std::uint32_t items() const noexcept { return items_; }
  [[nodiscard]] std::vector<std::byte>& bytes() noexcept { return buf_; }

  // As a Sink of worker.hpp's invoke_chunk: items arrive in index order, so the
  // message needs neither their indices nor item boundaries, and packs nothing.
  void begin_item(std::uint64_t, std::uint64_t) noexcept {}
  void end_item() noexcept {}
  template <class V>
  void emit_ok(std::uint64_t, std::uint64_t, const V& v) {
    ok(v);
  }
  template <class V>
  void put_packed(std::uint64_t, std::uint64_t, std::uint32_t, const V& v) {
    ok(v);
  }
  void close_packed() noexcept {}
  void emit_error(std::uint64_t, std::uint64_t, std::exception_ptr e) { error(std::move(e)); }

 private:
  template <class Fill>
  void put(result_status st, std::size_t n, Fill&& fill) {
    result_item_header h{static_cast<std::uint32_t>(st), 0, n};
    const std::size_t at = buf_.size();
    buf_.resize(at + sizeof h + n);
    std::memcpy(buf_.data() + at, &h, sizeof h);
    fill(buf_.data() + at + sizeof h);
    ++items_;
  }
  std::vector<std::byte> buf_;
  std::uint32_t items_ = 0;
  std::int64_t started_ns_ = 0;
};

/// Every item of a chunk failed with e, as a result message (a chunk that could not be
/// run at all: the pool was gone, its bytes were malformed).
inline std::vector<std::byte> failed_chunk_message(std::uint64_t job, std::uint64_t first, std::uint32_t count,
                                                   const std::exception_ptr& e) {
  result_writer out;
  out.begin(job, first, count);
  for (std::uint32_t k = 0; k < count; ++k) out.error(e);
  out.end();
  return std::move(out.bytes());
}

/// One chunk received from elsewhere, run as a call of this pool: handed out whole, its
/// results kept per item, and the result message passed to `done` once every item has
/// one (on the pool's service thread).
class relay_job final : public job_base {
 public:
  using sink = std::function<void(std::vector<std::byte>)>;

  /// `chunk`: a task message as input_feed makes it (header, callable, items). Throws
  /// serialization_error when it is not one; the caller answers with failed_chunk_message.
  relay_job(std::vector<std::byte> chunk, sink done) : chunk_(std::move(chunk)), done_(std::move(done)) {
    reader r{chunk_.data(), chunk_.data() + chunk_.size()};
    r.get(&h_, sizeof h_, "task header");
    if (h_.kind != static_cast<std::uint32_t>(task_kind::chunk) || h_.count == 0)
      throw serialization_error("corrupt chunk: not a chunk of tasks");
    r.need(h_.callable_len, "task callable");
    r.p += h_.callable_len;
    if (h_.item_size) {
      if (r.remaining() / h_.item_size < h_.count || r.remaining() != std::size_t(h_.count) * h_.item_size)
        throw serialization_error("corrupt chunk: packed items do not match their count");
    } else {
      // Where each item starts: the pool re-sends the items after one that killed its
      // worker, and cuts them out by these.
      offsets_.reserve(h_.count);
      for (std::uint32_t k = 0; k < h_.count; ++k) {
        offsets_.push_back(static_cast<std::uint32_t>(r.p - chunk_.data()));
        std::uint32_t len;
        r.get(&len, sizeof len, "task item length");
        r.need(len, "task item");
        r.p += len;
      }
      if (r.remaining()) throw serialization_error("corrupt chunk: trailing bytes after its items");
    }
    if (chunk_.size() > UINT32_MAX) throw serialization_error("corrupt chunk: larger than 4 GiB");
    results_.resize(h_.count);
    known_total = h_.count;
    started_ns_ = monotonic_ns();
  }

  [[nodiscard]] std::uint64_t origin_job() const noexcept { return h_.job; }
  [[nodiscard]] std::uint64_t origin_first() const noexcept { return h_.first; }
  [[nodiscard]] std::uint32_t count() const noexcept { return h_.count; }

  std::uint32_t next_chunk(std::vector<std::byte>& buf, std::vector<std::uint32_t>& offsets) override {
    input_done = true;
    if (handed_out_) return 0;
    handed_out_ = true;
    // The same message with this pool's job id and index: its workers answer by them.
    task_header h = h_;
    h.job = id;
    h.first = 0;
    buf = std::move(chunk_);
    std::memcpy(buf.data(), &h, sizeof h);
    offsets = std::move(offsets_);
    return h_.count;
  }
  void deliver(std::uint64_t index, reader& r) override {
    if (index < results_.size()) results_[index] = std::vector<std::byte>(r.p, r.end);
  }
  void fail(std::uint64_t index, std::exception_ptr e) override {
    if (index < results_.size()) results_[index] = std::move(e);
  }
  void complete(std::exception_ptr e) override {
    result_writer out;
    out.begin(h_.job, h_.first, h_.count);
    for (auto& v : results_) {
      if (auto* b = std::get_if<std::vector<std::byte>>(&v))
        out.ok_bytes(b->data(), b->size());
      else if (auto* x = std::get_if<std::exception_ptr>(&v); x && *x)
        out.error(*x);
      else  // never run: the pool was terminated or gave up
        out.error(e ? e : std::make_exception_ptr(pool_not_running("the serving pool stopped before the task ran")));
    }
    const std::int64_t elapsed = monotonic_ns() - started_ns_;
    std::memcpy(out.bytes().data() + offsetof(result_msg_header, elapsed_ns), &elapsed, sizeof elapsed);
    results_.clear();
    if (done_) done_(std::move(out.bytes()));
  }

 private:
  std::vector<std::byte> chunk_;
  std::vector<std::uint32_t> offsets_;
  task_header h_{};
  std::vector<std::variant<std::monostate, std::vector<std::byte>, std::exception_ptr>> results_;
  sink done_;
  bool handed_out_ = false;
  std::int64_t started_ns_ = 0;
};

}  // namespace mproc::detail
