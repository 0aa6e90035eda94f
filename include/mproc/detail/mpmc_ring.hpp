// Multi-producer multi-consumer message ring in shared memory: the engine behind
// Queue, JoinableQueue and SimpleQueue.
//
// Layout: one memfd holds a header page (counters, futex words, two robust mutexes),
// a power-of-two byte ring mapped twice back to back (mirror_map), so a record is
// always one contiguous span, and after it a large sparse overflow window. Records
// are 8-byte aligned:
//   u32 payload length | u32 kind | payload (a type-tagged message, see serialization)
// Producers serialise under the put lock and consumers under the get lock, so a
// producer and a consumer never contend with each other; the hand-off is a release
// store of tail (producers) or head (consumers). Values are encoded straight into
// shared memory and decoded straight out of it.
//
// The ring is the fast path. When it stays full (nobody reading) or a large message
// finds no reader, messages go to the overflow window instead, and keep going there
// until consumers have drained it, which keeps FIFO order: consumers always take the
// ring first. Overflow pages take memory only once written and are punched out as
// they are read, so a backlog costs what it holds and no more, and put() on an
// unbounded queue never waits for a reader. This is what lets a producer put and exit
// (or be joined) before anyone reads, at any size.
//
// Messages larger than a quarter of the ring that find a reader are streamed through
// it as fragments (first/middle/last) while the producer keeps the put lock, so
// fragments of different messages never interleave. With the overflow window
// disabled (queue_options::spill = false) that is how every large message travels.
// Fragmenting was chosen over a side buffer per message because a side buffer would
// need its descriptor handed to whichever process consumes it, which unrelated
// processes cannot do without a socket of their own.
//
// Waiting: a short spin, then a futex wait on a sequence word. A "sleeping" flag lets
// the other side skip the wake-up syscall when nobody sleeps.
//
// Crashes: both mutexes are robust. A producer that dies mid-record published nothing
// (tail only moves after a record is complete); one that dies between fragments of a
// large message leaves a partial message, which the next lock holder (or a consumer
// waiting for the next fragment) ends with an abort record so consumers drop it.
// Every fragment leaves room for that abort record, so it can always be written. A
// consumer that dies while reading a single record loses nothing (head moves only
// after decoding); one that dies in the middle of a fragmented message loses that
// message: its remaining fragments are skipped.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <span>
#include <string>

#include "../errors.hpp"
#include "../serialization.hpp"
#include "log.hpp"
#include "mpmc_ring_sync.hpp"
#include "posix/mirror_map.hpp"
#include "posix/posix.hpp"
#include "posix/robust_mutex.hpp"
#include "posix/shm_region.hpp"
#include "posix/sparse_map.hpp"

namespace mproc::detail {

class mpmc_ring {
 public:
  static constexpr std::size_t header_bytes = 4096;
  static constexpr std::size_t record_header = 8;
  static constexpr std::size_t min_capacity = 64 * 1024;
  static constexpr std::size_t default_capacity = 4 * 1024 * 1024;

  /// Overflow window: virtual size only; memory follows what is actually queued.
  static constexpr std::size_t default_overflow = std::size_t(64) << 30;
  static constexpr std::size_t punch_every = 1u << 20;

  enum kind : std::uint32_t { k_single = 1, k_first = 2, k_middle = 3, k_last = 4, k_abort = 5, k_pad = 6 };
  enum class status { ok, timed_out, closed };

  /// A new ring of at least `capacity` bytes (rounded up to a power of two).
  /// `overflow`: bytes of sparse overflow area (0: none; put then waits for ring room
  /// and large messages stream in fragments).
  static std::shared_ptr<mpmc_ring> create(std::size_t capacity, std::size_t maxsize, bool joinable,
                                           std::size_t overflow = default_overflow) {
    std::size_t cap = min_capacity;
    while (cap < capacity) {
      if (cap > (std::size_t(1) << 40)) throw value_error("mproc: queue capacity too large");
      cap <<= 1;
    }
    overflow &= ~std::size_t(4095);
    shm_region hdr = shm_region::create(header_bytes + cap, "mproc-queue");
    if (overflow) grow_sparse(hdr.fd(), header_bytes + cap + overflow);
    auto* h = new (hdr.data()) mpmc_ring_header{};
    h->capacity = cap;
    h->overflow_bytes = overflow;
    h->maxsize = maxsize;
    h->joinable = joinable ? 1 : 0;
    h->put_lock.init();
    h->get_lock.init();
    h->magic = mpmc_ring_header::magic_value;
    return std::shared_ptr<mpmc_ring>(new mpmc_ring(std::move(hdr)));
  }

  /// Maps a ring whose descriptor was inherited or received (spawned children).
  static std::shared_ptr<mpmc_ring> attach(unique_fd fd) {
    shm_region first = shm_region::map(std::move(fd), header_bytes);
    auto* h = first.as<mpmc_ring_header>();
    if (h->magic != mpmc_ring_header::magic_value)
      throw value_error("mproc: descriptor does not hold a queue");
    std::size_t cap = h->capacity;
    // Remap header and ring together so the region object owns the whole file.
    shm_region whole =
        shm_region::map(dup_cloexec(first.fd(), "fcntl(F_DUPFD_CLOEXEC)"), header_bytes + cap);
    return std::shared_ptr<mpmc_ring>(new mpmc_ring(std::move(whole)));
  }

  mpmc_ring(const mpmc_ring&) = delete;
  mpmc_ring& operator=(const mpmc_ring&) = delete;

  [[nodiscard]] int fd() const noexcept { return region_.fd(); }
  [[nodiscard]] std::size_t capacity() const noexcept { return cap_; }
  [[nodiscard]] std::size_t maxsize() const noexcept { return maxsize_; }
  [[nodiscard]] bool joinable() const noexcept { return joinable_; }

  /// Messages put and not yet taken (approximate while others are active, as in Python).
  [[nodiscard]] std::size_t qsize() const noexcept {
    auto got = h_->get_count.load(std::memory_order_acquire);
    auto put = h_->put_count.load(std::memory_order_acquire);
    return put > got ? static_cast<std::size_t>(put - got) : 0;
  }
  [[nodiscard]] bool closed() const noexcept { return h_->closed.load(std::memory_order_acquire) != 0; }

  void close() noexcept {
    h_->closed.store(1, std::memory_order_release);
    // Sleepers re-check and see the flag.
    h_->data_seq.fetch_add(1, std::memory_order_acq_rel);
    futex_wake(&h_->data_seq);
    h_->space_seq.fetch_add(1, std::memory_order_acq_rel);
    futex_wake(&h_->space_seq);
  }

  // ------------------------------------------------------------------ put

  /// Publishes v as one message. Returns timed_out (nothing enqueued) if the deadline
  /// passes first; raises state_error on a closed queue.
  template <class U>
  status put(const U& v, deadline_t deadline) {
    const std::size_t len = message_size(v);  // also sizes Boost archives once
    lock_guard g(h_->put_lock, deadline, [this] { recover_producer(); });
    if (!g.locked) return status::timed_out;
    if (closed()) throw_closed();
    if (maxsize_) {
      auto room = [&] {
        return h_->put_count.load(std::memory_order_relaxed) -
                       h_->get_count.load(std::memory_order_acquire) <
                   maxsize_ ||
               closed();
      };
      if (!room() && !ring_wait_until(h_->space_seq, h_->space_waiters, room, deadline))
        return status::timed_out;
      if (closed()) throw_closed();
    }
    const std::size_t rec = align8(record_header + len);
    if (over_bytes_) {
      if (h_->overflow_active &&
          h_->o_head.load(std::memory_order_acquire) == h_->o_tail.load(std::memory_order_relaxed))
        h_->overflow_active = 0;  // drained: the ring is empty too, order is kept
      // The ring is the fast path while consumers keep up; only when it stays full
      // for spill_delay (nobody reading, say) do messages go to the overflow area,
      // whose fresh pages cost page faults. A timeout here is no failure: the
      // overflow area takes the message without waiting.
      if (!h_->overflow_active && rec <= max_overflow_record()) {
        if (rec <= max_record()) {
          const std::uint64_t t = h_->tail.load(std::memory_order_relaxed);
          if (free_bytes(t) >= rec + record_header ||  // fast path: no clock read
              wait_for_space(rec + record_header, spill_deadline(deadline))) {
            if (closed()) throw_closed();
            write_single(v, len, rec);
            return status::ok;
          }
          if (closed()) throw_closed();
        } else if (put_streamed(v, len, deadline, spill_delay_ns * 5) == status::ok) {
          return status::ok;
        }
      }
      if (rec <= max_overflow_record()) {
        if (!h_->overflow_active)
          log(log_level::debug, "queue: no room in the ring; %zu-byte message goes to the overflow area", len);
        return put_overflow(v, len, rec, deadline);
      }
      // Too large even for the overflow area: it must follow what is queued there.
      if (h_->overflow_active) {
        auto drained = [&] {
          return h_->o_head.load(std::memory_order_acquire) == h_->o_tail.load(std::memory_order_relaxed) ||
                 closed();
        };
        if (!ring_wait_until(h_->space_seq, h_->space_waiters, drained, deadline)) return status::timed_out;
        if (closed()) throw_closed();
        h_->overflow_active = 0;
      }
    }
    if (rec <= max_record()) {
      if (!wait_for_space(rec + record_header, deadline)) return status::timed_out;
      if (closed()) throw_closed();
      write_single(v, len, rec);
      return status::ok;
    }
    return put_streamed(v, len, deadline);
  }

 private:
  template <class U>
  void write_single(const U& v, std::size_t len, std::size_t rec) {
    std::uint64_t t = h_->tail.load(std::memory_order_relaxed);
    std::byte* p = ring_.data() + (t & mask_);
    write_header(p, static_cast<std::uint32_t>(len), k_single);
    write_message(v, p + record_header);
    publish(t + rec, k_single);
  }

  static constexpr std::int64_t spill_delay_ns = 10'000'000;
  static constexpr std::size_t prefault_min = 256 * 1024;

  static deadline_t spill_deadline(deadline_t user) noexcept {
    const deadline_t d = deadline_after(spill_delay_ns);
    return user != no_deadline && user < d ? user : d;
  }

  std::byte* overflow_area() {
    std::call_once(over_once_, [&] { over_ = sparse_map(region_.fd(), header_bytes + cap_, over_bytes_); });
    return over_.data();
  }

  /// The ring is full (or the message large): the message goes to the overflow area,
  /// and so do the ones after it until consumers have drained that area, which keeps
  /// FIFO order (consumers take the ring first, and the ring gets nothing new while
  /// the overflow area is in use).
  template <class U>
  status put_overflow(const U& v, std::size_t len, std::size_t rec, deadline_t deadline) {
    std::byte* area = overflow_area();
    std::uint64_t t = h_->o_tail.load(std::memory_order_relaxed);
    const std::size_t off = std::size_t(t % over_bytes_);
    const std::size_t pad = off + rec > over_bytes_ ? over_bytes_ - off : 0;  // a record never wraps
    // Room is counted from what consumers have released, not merely read: pages
    // are reused only after they were punched out, never while that happens.
    auto room = [&] {
      return over_bytes_ - std::size_t(t - h_->o_punched.load(std::memory_order_acquire)) >= pad + rec ||
             closed();
    };
    if (!room() && !ring_wait_until(h_->space_seq, h_->space_waiters, room, deadline)) return status::timed_out;
    if (closed()) throw_closed();
    if (pad) {
      write_header(area + off, static_cast<std::uint32_t>(pad - record_header), k_pad);
      t += pad;
    }
    std::byte* p = area + std::size_t(t % over_bytes_);
    if (rec >= prefault_min) prefault_write(p, rec);  // fresh (punched) pages
    write_header(p, static_cast<std::uint32_t>(len), k_single);
    write_message(v, p + record_header);
    h_->overflow_active = 1;
    h_->put_count.store(h_->put_count.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    if (joinable_) h_->unfinished.fetch_add(1, std::memory_order_relaxed);
    h_->o_tail.store(t + rec, std::memory_order_release);
    ring_notify(h_->data_seq, h_->data_waiters);
    return status::ok;
  }

  /// Takes the overflow record at oh (get lock held). False: it was padding.
  template <class T>
  bool take_overflow(std::optional<T>& out, std::uint64_t oh, std::uint64_t ot) {
    const std::byte* p = overflow_area() + std::size_t(oh % over_bytes_);
    std::uint32_t len, k;
    std::memcpy(&len, p, 4);
    std::memcpy(&k, p + 4, 4);
    const std::uint64_t next = oh + align8(record_header + std::size_t(len));
    // A record never wraps and the published part never exceeds the area. Past a
    // record whose length is corrupt nothing can be trusted to start a record, so
    // everything published is dropped: the next get() takes what comes after.
    if (ot - oh > over_bytes_ || next > ot || std::size_t(oh % over_bytes_) + (next - oh) > over_bytes_) {
      overflow_consumed(ot, ot, true);
      throw serialization_error("corrupt queue overflow record: length " + std::to_string(len) +
                                "; the overflow records published with it were dropped");
    }
    if (k == k_pad) {
      overflow_consumed(next, ot, false);
      return false;
    }
    if (k != k_single) {
      overflow_consumed(next, ot, true);  // its length is sound: skip just this record
      throw serialization_error("corrupt queue overflow record kind " + std::to_string(k) +
                                "; the record was skipped");
    }
    try {
      out.emplace(read_message<T>({p + record_header, len}));
    } catch (...) {
      overflow_consumed(next, ot, true);
      throw;
    }
    overflow_consumed(next, ot, true);
    return true;
  }

  void overflow_consumed(std::uint64_t next, std::uint64_t ot, bool ends_message) {
    if (ends_message)
      h_->get_count.store(h_->get_count.load(std::memory_order_relaxed) + 1, std::memory_order_release);
    h_->o_head.store(next, std::memory_order_release);
    // Give back whole pages below the published head, a megabyte at a time or all
    // of it once drained. A consumer that dies in here leaves them for the next
    // one: o_punched moves only after the punch, and producers only reuse below it.
    const std::uint64_t floor = next & ~std::uint64_t(4095);
    const std::uint64_t from = h_->o_punched.load(std::memory_order_relaxed);
    if (floor > from && (floor - from >= punch_every || next == ot)) {
      std::size_t n = std::size_t(floor - from);
      std::size_t off = std::size_t(from % over_bytes_);
      std::size_t first = std::min(n, over_bytes_ - off);
      const std::size_t base = header_bytes + cap_;
      if (!punch_hole(region_.fd(), base + off, first) || !punch_hole(region_.fd(), base, n - first))
        log(log_level::warning, "queue: fallocate(PUNCH_HOLE) failed (%d); overflow memory is kept", errno);
      h_->o_punched.store(floor, std::memory_order_release);
    }
    ring_notify(h_->space_seq, h_->space_waiters);
  }

 public:

  // ------------------------------------------------------------------ get

  /// Takes the next message into `out`. timed_out: nothing taken before the deadline;
  /// closed: the queue is closed and empty.
  template <class T>
  status get(std::optional<T>& out, deadline_t deadline) {
    lock_guard g(h_->get_lock, deadline, [] {
      log(log_level::warning, "queue: a consumer died holding the queue; continuing");
    });
    if (!g.locked) return status::timed_out;
    for (;;) {
      std::uint64_t h = h_->head.load(std::memory_order_relaxed);
      if (cached_tail_ <= h) cached_tail_ = h_->tail.load(std::memory_order_acquire);
      if (cached_tail_ <= h && over_bytes_) {
        const std::uint64_t oh = h_->o_head.load(std::memory_order_relaxed);
        const std::uint64_t ot = h_->o_tail.load(std::memory_order_acquire);
        if (ot > oh) {
          // Seeing the overflow record makes every ring record published before it
          // visible too; those are older, so they go first.
          cached_tail_ = h_->tail.load(std::memory_order_acquire);
          if (cached_tail_ <= h) {
            if (take_overflow(out, oh, ot)) return status::ok;
            continue;
          }
        }
      }
      if (cached_tail_ <= h) {
        status s = wait_for_record(h, deadline);
        if (s != status::ok) return s;
        continue;  // re-check both areas in order
      }
      auto [len, k] = read_header(h);
      const std::size_t rec = align8(record_header + len);
      const std::byte* payload = ring_.data() + (h & mask_) + record_header;
      switch (k) {
        case k_single: {
          try {
            if (!decode_raw_vector(out, payload, len)) out.emplace(read_message<T>({payload, len}));
          } catch (...) {
            // A message that cannot be decoded as T is consumed all the same, so the
            // queue stays usable (as Connection::recv does).
            consumed(h + rec, true);
            throw;
          }
          consumed(h + rec, true);
          return status::ok;
        }
        case k_first:
          if (get_streamed(out, h, len)) return status::ok;
          continue;
        case k_last:
          // The tail of a message whose reader died: dropped (see header comment).
          consumed(h + rec, true);
          message_lost();
          continue;
        case k_middle:
        case k_abort:
          consumed(h + rec, false);
          continue;
        default:
          consumed(h + rec, true);  // its length is sound: skip just this record
          throw serialization_error("corrupt queue record kind " + std::to_string(k) +
                                    "; the record was skipped");
      }
    }
  }

  // ------------------------------------------------------------------ JoinableQueue

  void task_done() {
    auto u = h_->unfinished.load(std::memory_order_acquire);
    do {
      if (u == 0) throw state_error("JoinableQueue::task_done() called more times than items were put");
    } while (!h_->unfinished.compare_exchange_weak(u, u - 1, std::memory_order_acq_rel));
    if (u == 1) {
      std::atomic_thread_fence(std::memory_order_seq_cst);
      if (h_->join_waiters.load(std::memory_order_relaxed)) futex_wake(&h_->unfinished);
    }
  }

  /// Waits until every message put has been matched by task_done(); false on timeout.
  bool join(deadline_t deadline) {
    if (h_->unfinished.load(std::memory_order_acquire) == 0) return true;
    h_->join_waiters.fetch_add(1, std::memory_order_seq_cst);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    struct dec {
      std::atomic<std::uint32_t>& w;
      ~dec() { w.fetch_sub(1, std::memory_order_relaxed); }
    } d{h_->join_waiters};
    for (;;) {
      auto u = h_->unfinished.load(std::memory_order_acquire);
      if (u == 0) return true;
      std::int64_t left = ns_left(deadline);
      if (left == 0) return false;
      futex_wait(&h_->unfinished, u, left);
    }
  }

  [[nodiscard]] std::uint32_t unfinished_tasks() const noexcept {
    return h_->unfinished.load(std::memory_order_acquire);
  }

 private:
  explicit mpmc_ring(shm_region region)
      : region_(std::move(region)),
        h_(region_.as<mpmc_ring_header>()),
        cap_(h_->capacity),
        mask_(cap_ - 1),
        maxsize_(h_->maxsize),
        joinable_(h_->joinable != 0),
        over_bytes_(h_->overflow_bytes),
        ring_(region_.fd(), header_bytes, cap_) {}

  static constexpr std::size_t align8(std::size_t n) noexcept { return (n + 7) & ~std::size_t(7); }
  // Record lengths are 32-bit: anything larger always travels as fragments.
  static constexpr std::size_t max_record_len = 0xffff0000u;
  [[nodiscard]] std::size_t max_record() const noexcept { return std::min(cap_ / 4, max_record_len); }
  [[nodiscard]] std::size_t max_overflow_record() const noexcept {
    return std::min(over_bytes_ / 4, max_record_len);
  }

  [[noreturn]] static void throw_closed() { throw state_error("put() on a closed queue"); }

  using lock_guard = ring_lock_guard;


  void write_header(std::byte* p, std::uint32_t len, std::uint32_t k) noexcept {
    std::memcpy(p, &len, 4);
    std::memcpy(p + 4, &k, 4);
  }
  /// The record at h (get lock held). A record longer than the ring or than what is
  /// published, or published data longer than the ring, is corrupt: record
  /// boundaries past it are unknowable, so everything published up to the tail is
  /// dropped (the queue stays usable for what is put next) and serialization_error
  /// is raised.
  std::pair<std::uint32_t, std::uint32_t> read_header(std::uint64_t h) {
    const std::byte* p = ring_.data() + (h & mask_);
    std::uint32_t len, k;
    std::memcpy(&len, p, 4);
    std::memcpy(&k, p + 4, 4);
    const std::uint64_t published = cached_tail_ - h;
    if (published > cap_ || align8(record_header + std::size_t(len)) > published) {
      consumed(cached_tail_, true);
      throw serialization_error("corrupt queue record: length " + std::to_string(len) + " with " +
                                std::to_string(published) + " bytes published in a ring of " +
                                std::to_string(cap_) + "; the records published with it were dropped");
    }
    return {len, k};
  }

  std::size_t free_bytes(std::uint64_t tail) noexcept {
    // A view of head older than one ring's worth (e.g. inherited across fork) says
    // nothing; report no room so the caller refreshes it.
    std::uint64_t used = tail - cached_head_;
    return used > cap_ ? 0 : cap_ - static_cast<std::size_t>(used);
  }

  /// Waits until `need` bytes are free after tail (producer side, put lock held).
  bool wait_for_space(std::size_t need, deadline_t deadline) {
    const std::uint64_t t = h_->tail.load(std::memory_order_relaxed);
    if (free_bytes(t) >= need) return true;
    auto room = [&] {
      cached_head_ = h_->head.load(std::memory_order_acquire);
      return free_bytes(t) >= need || closed();
    };
    return ring_wait_until(h_->space_seq, h_->space_waiters, room, deadline);
  }

  /// Makes the record(s) up to `new_tail` visible; `k` is the kind of the last one.
  void publish(std::uint64_t new_tail, std::uint32_t k) noexcept {
    if (k == k_single || k == k_last) {
      h_->put_count.store(h_->put_count.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
      if (joinable_) h_->unfinished.fetch_add(1, std::memory_order_relaxed);
      if (k == k_last) h_->in_message.store(0, std::memory_order_relaxed);
    } else if (k == k_first) {
      h_->in_message.store(1, std::memory_order_relaxed);
    }
    h_->tail.store(new_tail, std::memory_order_release);
    ring_notify(h_->data_seq, h_->data_waiters);
  }

  /// Ends a partly published message with an abort record (put lock held). There is
  /// always room: every fragment was written leaving record_header bytes free.
  void abort_message() noexcept {
    if (!h_->in_message.load(std::memory_order_relaxed)) return;
    std::uint64_t t = h_->tail.load(std::memory_order_relaxed);
    write_header(ring_.data() + (t & mask_), 0, k_abort);
    h_->in_message.store(0, std::memory_order_relaxed);
    h_->tail.store(t + record_header, std::memory_order_release);
    ring_notify(h_->data_seq, h_->data_waiters);
  }

  void recover_producer() noexcept {
    log(log_level::warning, "queue: a producer died holding the queue; %s",
        h_->in_message.load() ? "its partly sent message is dropped" : "nothing was lost");
    abort_message();
  }

  // Streams a message too large for one record as first/middle/last fragments.
  struct stream_writer {
    mpmc_ring& r;
    deadline_t deadline;
    std::int64_t stall_ns;  // >= 0: give up if no reader starts on the message this long
    std::size_t remaining;  // message bytes not yet written
    std::uint64_t pos;      // where the open fragment starts
    std::byte* cur = nullptr;
    std::size_t room = 0;   // payload bytes left in the open fragment
    std::size_t filled = 0; // payload bytes in the open fragment
    bool first = true;
    std::uint64_t total;
    std::uint64_t first_pos = ~std::uint64_t(0);  // where the first fragment starts
    deadline_t stall_start = monotonic_ns();

    struct timed_out {};
    struct closed_now {};

    void open() {
      const std::size_t extra = first ? 8 : 0;
      const std::size_t frag_max = r.max_record();
      const std::size_t want = std::min(align8(record_header + extra + remaining), frag_max);
      // Do not cut tiny fragments out of a nearly full ring: wait for a useful slice.
      const std::size_t at_least = std::min(want, r.cap_ / 16);
      deadline_t d = deadline;
      // Once a consumer has taken the first fragment it reads the rest (or, if it
      // dies, the next consumer skips them), so the stall limit only applies before.
      const bool started = first_pos != ~std::uint64_t(0) &&
                           r.h_->head.load(std::memory_order_acquire) > first_pos;
      if (stall_ns >= 0 && !started) {
        deadline_t s = stall_start + stall_ns;
        if (d == no_deadline || s < d) d = s;
      }
      if (!r.wait_for_space(at_least + record_header, d)) {
        // Not stalled after all if the reader started while we waited.
        if (stall_ns >= 0 && !started && r.h_->head.load(std::memory_order_acquire) > first_pos &&
            !deadline_passed(deadline)) {
          open();
          return;
        }
        throw timed_out{};
      }
      if (r.closed()) throw closed_now{};
      std::size_t avail = r.free_bytes(pos) - record_header;
      std::size_t frag = std::min(avail, frag_max) & ~std::size_t(7);
      std::byte* p = r.ring_.data() + (pos & r.mask_);
      cur = p + record_header;
      if (first) {
        first_pos = pos;
        std::memcpy(cur, &total, 8);
        cur += 8;
      }
      room = frag - record_header - extra;
      filled = extra;
    }

    void put(const void* src, std::size_t len) {
      const auto* s = static_cast<const std::byte*>(src);
      while (len) {
        if (room == 0) {
          close_fragment(first ? k_first : k_middle);
          open();
        }
        std::size_t n = std::min(len, room);
        std::memcpy(cur, s, n);
        cur += n;
        s += n;
        len -= n;
        room -= n;
        filled += n;
        remaining -= n;
      }
    }

    void close_fragment(std::uint32_t k) {
      std::byte* p = r.ring_.data() + (pos & r.mask_);
      r.write_header(p, static_cast<std::uint32_t>(filled), k);
      pos += align8(record_header + filled);
      r.publish(pos, k);
      first = false;
    }

    void finish() {
      if (first) {  // cannot happen with fragments <= max_record, but stay well formed
        close_fragment(k_first);
        open();
      }
      close_fragment(k_last);
    }
  };

  template <class U>
  status put_streamed(const U& v, std::size_t len, deadline_t deadline, std::int64_t stall_ns = -1) {
    stream_writer w{*this, deadline, stall_ns, len, h_->tail.load(std::memory_order_relaxed), nullptr, 0, 0, true, len};
    try {
      w.open();
      std::uint64_t tag = type_tag<wire_t<U>>::value;
      w.put(&tag, sizeof tag);
      encode(w, v);
      w.finish();
    } catch (const typename stream_writer::timed_out&) {
      abort_message();
      return status::timed_out;
    } catch (const typename stream_writer::closed_now&) {
      abort_message();
      throw_closed();
    } catch (...) {
      abort_message();
      throw;
    }
    return status::ok;
  }

  // ------------------------------------------------------------------ consumer side

  /// Waits for a record at h. closed: queue closed and nothing left.
  status wait_for_record(std::uint64_t h, deadline_t deadline) {
    // cached_tail_ may lag behind h (another process consumed since we looked).
    if (cached_tail_ > h) return status::ok;
    auto overflow_ready = [&] {
      return over_bytes_ &&
             h_->o_tail.load(std::memory_order_acquire) > h_->o_head.load(std::memory_order_relaxed);
    };
    auto ready = [&] {
      cached_tail_ = h_->tail.load(std::memory_order_acquire);
      return cached_tail_ > h || overflow_ready() || closed();
    };
    if (!ring_wait_until(h_->data_seq, h_->data_waiters, ready, deadline)) return status::timed_out;
    if (cached_tail_ > h || overflow_ready()) return status::ok;
    return status::closed;
  }

  void consumed(std::uint64_t new_head, bool ends_message) noexcept {
    if (ends_message)
      h_->get_count.store(h_->get_count.load(std::memory_order_relaxed) + 1, std::memory_order_release);
    h_->head.store(new_head, std::memory_order_release);
    ring_notify(h_->space_seq, h_->space_waiters);
  }

  /// A message was dropped unread: keep JoinableQueue.join() from waiting for it.
  void message_lost() noexcept {
    log(log_level::warning, "queue: dropped the rest of a message whose reader died");
    if (!joinable_) return;
    auto u = h_->unfinished.load(std::memory_order_acquire);
    while (u && !h_->unfinished.compare_exchange_weak(u, u - 1, std::memory_order_acq_rel)) {
    }
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (u == 1 && h_->join_waiters.load(std::memory_order_relaxed)) futex_wake(&h_->unfinished);
  }

  /// Strings and vectors of trivially copyable elements are their length followed by
  /// raw bytes: a large one is copied from the fragments straight into the result.
  template <class T>
  static constexpr bool raw_contiguous_impl() {
    if constexpr (std::is_same_v<T, std::string>) return true;
    else if constexpr (is_specialization_v<T, std::vector>)
      return trivially_copyable_value<typename T::value_type> &&
             !std::is_same_v<typename T::value_type, bool>;
    else return false;
  }
  template <class T>
  static constexpr bool raw_contiguous = raw_contiguous_impl<T>();

  /// A vector of trivially copyable elements is built straight from the record's
  /// bytes (the generic decoder would zero-fill it first, then copy over the zeros).
  /// False: not such a vector, or not such a message; the caller decodes generically.
  template <class T>
  static bool decode_raw_vector(std::optional<T>& out, const std::byte* payload, std::size_t len) {
    if constexpr (raw_contiguous<T> && !std::is_same_v<T, std::string>) {
      using E = typename T::value_type;
      constexpr std::size_t prefix = message_header_size + 8;  // type tag, element count
      // Record payloads are 8-aligned, so the elements are too; stricter types go
      // the generic way.
      if (alignof(E) > 8 || len < prefix) return false;
      std::uint64_t tag, count;
      std::memcpy(&tag, payload, 8);
      std::memcpy(&count, payload + 8, 8);
      if (tag != type_tag<T>::value || (len - prefix) % sizeof(E) != 0 || count != (len - prefix) / sizeof(E))
        return false;
      const E* first = reinterpret_cast<const E*>(payload + prefix);
      out.emplace(first, first + count);
      return true;
    } else {
      (void)out, (void)payload, (void)len;
      return false;
    }
  }

  /// Bytes a fragmented message's buffer gets before its fragments arrive. Up to this
  /// the buffer is taken whole (untouched pages cost nothing until written); growing
  /// a large message step by step instead would copy it again and fault its pages in
  /// twice (a 256 MiB message went from 2.3 to 1.5 GB/s). Above it, a corrupt header
  /// announcing more than was sent costs nothing beyond this.
  static constexpr std::size_t stream_upfront_limit = std::size_t(1) << 30;

  /// Reassembles a fragmented message starting with the `first` record at h.
  /// Returns false when the message was aborted by its producer (nothing taken).
  template <class T>
  bool get_streamed(std::optional<T>& out, std::uint64_t h, std::uint32_t len) {
    const std::uint64_t rec_end = h + align8(record_header + len);
    if (len < 8) {
      consumed(rec_end, true);  // its fragments that follow are dropped as orphans
      throw serialization_error("corrupt queue record: short first fragment; the message was skipped");
    }
    const std::byte* payload = ring_.data() + (h & mask_) + record_header;
    std::uint64_t total;
    std::memcpy(&total, payload, 8);
    if (len - 8 > total) {
      consumed(rec_end, true);
      throw serialization_error("corrupt queue record: first fragment longer than its message; "
                                "the message was skipped");
    }
    // No message is larger than the machine's memory. Below that, a buffer is
    // allocated up front only to stream_upfront_limit and grows as fragments arrive,
    // so a corrupt header cannot make get() allocate what it announces (that could
    // raise bad_alloc instead of serialization_error, or cost real memory under
    // strict overcommit or a sanitizer).
    const std::uint64_t ram = physical_memory_bytes();
    if (total > ram) {
      consumed(rec_end, true);
      throw serialization_error("corrupt queue record: message of " + std::to_string(total) +
                                " bytes announced, more than this machine's memory; it was skipped");
    }
    if constexpr (raw_contiguous<T>) {
      constexpr std::size_t prefix = message_header_size + 8;  // type tag, element count
      std::uint64_t tag, count;
      if (len - 8 >= prefix) {
        std::memcpy(&tag, payload + 8, 8);
        std::memcpy(&count, payload + 16, 8);
        using E = typename T::value_type;
        if (tag == type_tag<T>::value && total >= prefix && (total - prefix) % sizeof(E) == 0 &&
            count == (total - prefix) / sizeof(E)) {
          // Reserve, then grow with each fragment: the pages of a huge result are
          // touched as its bytes arrive, so the producer never stalls on a
          // consumer busy zero-filling the whole thing first.
          T v;
          v.reserve(std::size_t(std::min<std::uint64_t>(count, stream_upfront_limit / sizeof(E))));
          bool done = stream_fragments(h, len, total, [&](std::size_t at, const std::byte* src, std::size_t n) {
            // The first `prefix` bytes are the tag and count, already checked.
            if (at < prefix) {
              std::size_t skip = std::min(n, prefix - at);
              at += skip;
              src += skip;
              n -= skip;
            }
            if (!n) return;
            const std::size_t end = at - prefix + n;  // bytes of elements filled after this
            const std::size_t elems = (end + sizeof(E) - 1) / sizeof(E);
            if (v.capacity() < elems)  // doubling, never past the announced count
              v.reserve(std::size_t(std::min<std::uint64_t>(count, std::max(elems, 2 * v.capacity()))));
            prefault_write(reinterpret_cast<std::byte*>(v.data()) + (at - prefix), n);
            if constexpr (std::is_same_v<T, std::string>) {
              v.append(reinterpret_cast<const char*>(src), n);
            } else if (alignof(E) <= 8 && (at - prefix) == v.size() * sizeof(E) && n % sizeof(E) == 0 &&
                       reinterpret_cast<std::uintptr_t>(src) % alignof(E) == 0) {
              // Whole elements (always, for sizes dividing 8): no zero fill first.
              const E* first = reinterpret_cast<const E*>(src);
              v.insert(v.end(), first, first + n / sizeof(E));
            } else {
              v.resize((end + sizeof(E) - 1) / sizeof(E));
              std::memcpy(reinterpret_cast<std::byte*>(v.data()) + (at - prefix), src, n);
            }
          });
          if (done) out.emplace(std::move(v));
          return done;
        }
      }
    }
    std::size_t cap = std::size_t(std::min<std::uint64_t>(total, stream_upfront_limit));
    std::unique_ptr<std::byte[]> buf(new std::byte[cap]);  // no zero fill
    bool done = stream_fragments(h, len, total, [&](std::size_t at, const std::byte* src, std::size_t n) {
      if (at + n > cap) {  // doubling, never past the announced total
        const std::size_t grown = std::size_t(std::min<std::uint64_t>(total, std::max(at + n, 2 * cap)));
        std::unique_ptr<std::byte[]> bigger(new std::byte[grown]);
        std::memcpy(bigger.get(), buf.get(), at);
        buf = std::move(bigger);
        cap = grown;
      }
      prefault_write(buf.get() + at, n);
      std::memcpy(buf.get() + at, src, n);
    });
    if (done) out.emplace(read_message<T>({buf.get(), total}));
    return done;
  }

  /// Feeds the bytes of a fragmented message to sink(offset, bytes, n), releasing
  /// each fragment's ring space as soon as it is copied. False if it was aborted.
  template <class Sink>
  bool stream_fragments(std::uint64_t h, std::uint32_t len, std::uint64_t total, Sink&& sink) {
    std::size_t got = 0;
    auto take = [&](const std::byte* src, std::size_t n) {
      if (n > total - got) throw serialization_error("corrupt queue record: fragments exceed message");
      sink(got, src, n);
      got += n;
    };
    take(ring_.data() + (h & mask_) + record_header + 8, len - 8);
    consumed(h + align8(record_header + len), false);
    for (;;) {
      h = h_->head.load(std::memory_order_relaxed);
      wait_for_fragment(h);
      auto [flen, k] = read_header(h);
      const std::byte* p = ring_.data() + (h & mask_) + record_header;
      const std::uint64_t next = h + align8(record_header + flen);
      switch (k) {
        case k_middle:
          take(p, flen);
          consumed(next, false);
          break;
        case k_last:
          take(p, flen);
          if (got != total) throw serialization_error("corrupt queue record: message short");
          consumed(next, true);
          return true;
        case k_abort:
          consumed(next, false);
          return false;
        default:
          // Another message's start: this one can never complete.
          return false;
      }
    }
  }

  /// Waits for the next fragment of a message already begun. Its producer holds the
  /// put lock until the last fragment, so this does not time out while that producer
  /// lives; a dead one is detected through the robust lock and its message aborted.
  void wait_for_fragment(std::uint64_t h) {
    constexpr std::int64_t check_every = 100'000'000;  // 100 ms
    for (;;) {
      auto ready = [&] {
        cached_tail_ = h_->tail.load(std::memory_order_acquire);
        return cached_tail_ > h;
      };
      if (ring_wait_until(h_->data_seq, h_->data_waiters, ready, deadline_after(check_every))) return;
      switch (h_->put_lock.lock(0)) {
        case lock_result::owner_died:
          recover_producer();
          (void)h_->put_lock.unlock();
          break;
        case lock_result::acquired: (void)h_->put_lock.unlock(); break;
        default: continue;  // held by a live producer: keep waiting
      }
      // Nobody holds the put lock, so nothing more is coming: unless the lock's last
      // holder published (or recovery wrote an abort record), the message can never
      // end. Only corrupt records get here; waiting on would hang the consumer.
      if (ready()) return;
      throw serialization_error("corrupt queue record: a fragmented message stops and no producer is writing it");
    }
  }

  shm_region region_;
  mpmc_ring_header* h_;
  std::size_t cap_;
  std::size_t mask_;
  std::size_t maxsize_;
  bool joinable_;
  std::size_t over_bytes_;
  mirror_map ring_;
  // The overflow window is mapped in a process only once it is used there.
  std::once_flag over_once_;
  sparse_map over_;
  // Per-process views of the other side's position, refreshed only when they are not
  // enough; each is touched only under the matching lock.
  std::uint64_t cached_head_ = 0;
  std::uint64_t cached_tail_ = 0;
};

}  // namespace mproc::detail
