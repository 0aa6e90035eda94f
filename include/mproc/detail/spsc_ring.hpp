// Single-producer single-consumer byte ring in shared memory: the transport between
// a pool and each of its workers. Records are written and read in place; a message
// larger than a fragment is streamed through in pieces, so any size gets through
// while the ring stays small. The producer side never blocks in the try_ calls, which
// lets one service thread feed many workers without risking a deadlock with a
// worker that is itself waiting for room to write a large result.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "posix/posix.hpp"

namespace mproc::detail {

#if defined(__x86_64__) || defined(__i386__)
inline void cpu_relax() noexcept { __builtin_ia32_pause(); }
#else
inline void cpu_relax() noexcept {}
#endif

struct ring_header {
  alignas(64) std::atomic<std::uint64_t> head;  // bytes published by the producer
  std::atomic<std::uint32_t> data_seq;          // bumped on publish: futex word for readers
  std::atomic<std::uint32_t> data_waiters;
  alignas(64) std::atomic<std::uint64_t> tail;  // bytes released by the consumer
  std::atomic<std::uint32_t> space_seq;         // bumped on release: futex word for writers
  std::atomic<std::uint32_t> space_waiters;
  alignas(64) std::uint64_t capacity;           // bytes of data, a multiple of 8
};

class spsc_ring {
 public:
  static constexpr std::uint32_t flag_more = 1;  // another fragment of this message follows
  static constexpr std::uint32_t flag_wrap = 2;  // skip to the start of the buffer
  static constexpr std::size_t record_header = 8;

  struct record {
    std::byte* data = nullptr;
    std::uint32_t len = 0;
    std::uint32_t flags = 0;
    std::uint64_t end = 0;  // tail position after this record
  };

  static std::size_t bytes_needed(std::size_t capacity) noexcept {
    return sizeof(ring_header) + capacity;
  }

  spsc_ring() = default;
  /// Lays out a ring in `mem` (zeroed shared memory of bytes_needed(capacity)).
  static spsc_ring init(void* mem, std::size_t capacity) noexcept {
    auto* h = new (mem) ring_header{};
    h->capacity = capacity & ~std::size_t(7);
    return attach(mem);
  }
  static spsc_ring attach(void* mem) noexcept {
    spsc_ring r;
    r.h_ = static_cast<ring_header*>(mem);
    r.buf_ = reinterpret_cast<std::byte*>(r.h_ + 1);
    r.cap_ = r.h_->capacity;
    r.local_head_ = r.h_->head.load(std::memory_order_relaxed);
    r.local_tail_ = r.h_->tail.load(std::memory_order_relaxed);
    return r;
  }

  /// Largest payload of one record; bigger messages are fragmented.
  [[nodiscard]] std::size_t max_fragment() const noexcept { return cap_ / 4 - record_header; }

  // ------------------------------------------------------------ producer

  /// Room for a record of `len` payload bytes, contiguous, or nullptr if the ring
  /// is too full right now. Must be followed by commit() with the same len.
  std::byte* try_reserve(std::size_t len) noexcept {
    const std::uint64_t head = local_head_;
    const std::uint64_t tail = h_->tail.load(std::memory_order_acquire);
    const std::size_t need = record_header + pad(len);
    const std::size_t pos = head % cap_;
    const std::size_t to_end = cap_ - pos;
    const std::size_t free = cap_ - std::size_t(head - tail);
    if (need <= to_end) {
      if (need > free) return nullptr;
      return buf_ + pos + record_header;
    }
    if (to_end + need > free) return nullptr;
    // Not enough room before the end: mark the rest as skipped, start over at 0.
    // The marker is invisible to the reader until commit() publishes head.
    write_header(pos, 0, flag_wrap);
    wrap_pending_ = to_end;
    return buf_ + record_header;
  }

  /// Adds the reserved record to the batch; the reader sees it after publish().
  void commit(std::size_t len, std::uint32_t flags) noexcept {
    std::uint64_t head = local_head_ + wrap_pending_;
    wrap_pending_ = 0;
    write_header(head % cap_, static_cast<std::uint32_t>(len), flags);
    local_head_ = head + record_header + pad(len);
  }

  /// Makes every committed record visible and wakes a sleeping reader. Batching
  /// records under one publish keeps the shared cache lines from bouncing per record.
  void publish() noexcept {
    if (h_->head.load(std::memory_order_relaxed) == local_head_) return;
    h_->head.store(local_head_, std::memory_order_release);
    h_->data_seq.fetch_add(1, std::memory_order_seq_cst);
    if (h_->data_waiters.load(std::memory_order_seq_cst)) futex_wake(&h_->data_seq);
  }
  [[nodiscard]] bool unpublished() const noexcept {
    return h_->head.load(std::memory_order_relaxed) != local_head_;
  }
  /// Producer: where the committed records end (published or not).
  [[nodiscard]] std::uint64_t committed_position() const noexcept { return local_head_; }
  /// Producer, between a successful reserve and its commit: where that record starts.
  [[nodiscard]] std::uint64_t reserved_position() const noexcept {
    return local_head_ + wrap_pending_;
  }

  /// Blocking reserve for a producer that may wait (a worker writing results).
  /// on_block runs once before waiting (to wake a reader that does not sleep on
  /// this ring's futex).
  template <class OnBlock = void (*)()>
  std::byte* reserve_wait(std::size_t len, OnBlock&& on_block = [] {}) {
    if (auto* p = try_reserve(len)) return p;
    publish();  // the reader can only make room by consuming what it can see
    on_block();
    for (int spin = 0;; ++spin) {
      if (auto* p = try_reserve(len)) return p;
      if (spin < 2000) {
        if ((spin & 63) == 63) yield_cpu();
        else cpu_relax();
        continue;
      }
      const std::uint32_t seq = h_->space_seq.load(std::memory_order_seq_cst);
      h_->space_waiters.fetch_add(1, std::memory_order_seq_cst);
      if (auto* p = try_reserve(len)) {
        h_->space_waiters.fetch_sub(1, std::memory_order_relaxed);
        return p;
      }
      futex_wait(&h_->space_seq, seq, 100'000'000);
      h_->space_waiters.fetch_sub(1, std::memory_order_relaxed);
    }
  }

  /// Writes a whole message, fragmenting as needed, waiting for room. on_commit runs
  /// after each fragment (to wake a reader that does not sleep on this ring's futex).
  template <class OnCommit = void (*)()>
  void write_wait(std::span<const std::byte> msg, OnCommit&& on_commit = [] {}) {
    const std::size_t frag = max_fragment();
    do {
      std::size_t n = std::min(frag, msg.size());
      std::byte* p = reserve_wait(n, on_commit);
      std::memcpy(p, msg.data(), n);
      msg = msg.subspan(n);
      commit(n, msg.empty() ? 0 : flag_more);
      publish();
      on_commit();
    } while (!msg.empty());
  }

  // ------------------------------------------------------------ consumer

  [[nodiscard]] bool empty() const noexcept {
    return h_->head.load(std::memory_order_acquire) == local_tail_;
  }

  /// The oldest unreleased record after `from` (the tail if 0), if any.
  bool try_peek(record& r, std::uint64_t from = UINT64_MAX) noexcept {
    std::uint64_t pos = from == UINT64_MAX ? local_tail_ : from;
    const std::uint64_t head = h_->head.load(std::memory_order_acquire);
    if (pos == head) return false;
    std::uint32_t len, flags;
    read_header(pos % cap_, len, flags);
    if (flags & flag_wrap) {
      pos += cap_ - pos % cap_;
      if (pos == head) return false;
      read_header(0, len, flags);
    }
    r.data = buf_ + pos % cap_ + record_header;
    r.len = len;
    r.flags = flags;
    r.end = pos + record_header + pad(len);
    return true;
  }

  /// Frees everything up to and including r; the writer sees the room after
  /// publish_release().
  void release(const record& r) noexcept { local_tail_ = r.end; }

  void publish_release() noexcept {
    if (h_->tail.load(std::memory_order_relaxed) == local_tail_) return;
    h_->tail.store(local_tail_, std::memory_order_release);
    h_->space_seq.fetch_add(1, std::memory_order_seq_cst);
    if (h_->space_waiters.load(std::memory_order_seq_cst)) futex_wake(&h_->space_seq);
  }

  /// Waits until a record is available (consumer side). Returns false on timeout.
  /// Spins for up to spin_ns first (see reply_spin_ns).
  bool wait_data(std::int64_t timeout_ns, std::int64_t spin_ns = reply_spin_ns) {
    if (!empty()) return true;
    const std::int64_t spin_end = monotonic_ns() + spin_ns;
    for (unsigned i = 1;; ++i) {
      if (!empty()) return true;
      cpu_relax();
      // Yield now and then: when cores are scarce the writer may be waiting for ours.
      if ((i & 63) == 0) {
        if (monotonic_ns() >= spin_end) break;
        yield_cpu();
      }
    }
    const deadline_t deadline = deadline_after(timeout_ns);
    while (true) {
      const std::uint32_t seq = h_->data_seq.load(std::memory_order_seq_cst);
      h_->data_waiters.fetch_add(1, std::memory_order_seq_cst);
      if (!empty()) {
        h_->data_waiters.fetch_sub(1, std::memory_order_relaxed);
        return true;
      }
      const std::int64_t left = ns_left(deadline);  // -1: no deadline
      if (left == 0) {
        h_->data_waiters.fetch_sub(1, std::memory_order_relaxed);
        return false;
      }
      futex_wait(&h_->data_seq, seq, left);
      h_->data_waiters.fetch_sub(1, std::memory_order_relaxed);
      if (!empty()) return true;
    }
  }

  /// Reads one whole message, waiting as needed. A message in a single record is
  /// returned in place (release it with release(out_record) when done); a
  /// fragmented one is gathered into `scratch` and its records are already released.
  /// on_release runs after each fragment is released (to wake a writer that does not
  /// sleep on this ring's futex).
  template <class OnRelease = void (*)()>
  std::span<const std::byte> read_wait(std::vector<std::byte>& scratch, record& out_record,
                                       OnRelease&& on_release = [] {}) {
    scratch.clear();
    while (true) {
      wait_data(-1);
      record r;
      if (!try_peek(r)) continue;
      if (!(r.flags & flag_more) && scratch.empty()) {
        out_record = r;
        return {r.data, r.len};
      }
      scratch.insert(scratch.end(), r.data, r.data + r.len);
      release(r);
      publish_release();
      on_release();
      if (!(r.flags & flag_more)) {
        out_record = record{};
        return {scratch.data(), scratch.size()};
      }
    }
  }

  /// Consumer, once the producer is gone for good: makes visible what it had committed
  /// without publishing (records up to `committed`) and, when open_len > 0, the record
  /// it had reserved at `open_at` and filled with open_len bytes so far. Positions that
  /// do not fit the ring's state are ignored (the producer's memory is not trusted).
  void adopt_unpublished(std::uint64_t committed, std::uint64_t open_at,
                         std::uint32_t open_len) noexcept {
    const std::uint64_t head = h_->head.load(std::memory_order_acquire);
    const std::uint64_t tail = h_->tail.load(std::memory_order_relaxed);
    if (committed < head || committed - tail > cap_) return;
    std::uint64_t end = committed;
    if (open_len) {
      const std::uint64_t rec_end = open_at + record_header + pad(open_len);
      const bool fits = open_at >= committed && open_at - committed < cap_ &&
                        open_at % cap_ + record_header + pad(open_len) <= cap_ &&
                        rec_end - tail <= cap_;
      if (fits) {
        write_header(open_at % cap_, open_len, 0);
        end = rec_end;
      }
    }
    h_->head.store(end, std::memory_order_release);
  }

  [[nodiscard]] ring_header* header() const noexcept { return h_; }

 private:
  static constexpr std::size_t pad(std::size_t n) noexcept { return (n + 7) & ~std::size_t(7); }
  void write_header(std::size_t pos, std::uint32_t len, std::uint32_t flags) noexcept {
    std::memcpy(buf_ + pos, &len, 4);
    std::memcpy(buf_ + pos + 4, &flags, 4);
  }
  void read_header(std::size_t pos, std::uint32_t& len, std::uint32_t& flags) const noexcept {
    std::memcpy(&len, buf_ + pos, 4);
    std::memcpy(&flags, buf_ + pos + 4, 4);
  }

  ring_header* h_ = nullptr;
  std::byte* buf_ = nullptr;
  std::size_t cap_ = 0;
  std::size_t wrap_pending_ = 0;
  std::uint64_t local_head_ = 0;  // producer: end of committed records
  std::uint64_t local_tail_ = 0;  // consumer: end of released records
};

}  // namespace mproc::detail
