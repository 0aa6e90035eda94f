// A Connection's shared-memory lane for large messages.
//
// Through a socket a message is copied twice by the kernel (into the socket buffer and
// out of it), which caps a Pipe at the kernel's copy rate: about 5 GB/s here, below a
// shared-memory queue's. Messages of ring_min_message bytes or more therefore go
// through a ring in shared memory instead, and only a 32-byte frame naming where they
// lie goes through the socket; one longer than ring_max_message goes in pieces of at
// most that size. The socket keeps everything else: the order of messages,
// poll/wait/fileno, end-of-file, passed descriptors, timeouts.
//
// Protocol, on top of Connection's framing (an 8-byte length, then the body): a frame
// whose length has the top bit set is a control frame with a 24-byte body.
//  - ring_attach_frame {id, capacity, 0}, with the ring's memfd passed alongside
//    (SCM_RIGHTS). The receiver checks the file (sealed, large enough), maps it and
//    sets `attached` in the ring's control page. Sent once per ring, with the first
//    message the ring could carry, which itself still goes inline.
//  - ring_message_frame {id, start, length}: the next message is `length` bytes at
//    `start` (a byte count since the ring began) in ring `id`.
//  - ring_stream_frame {id, total, 0}: the next message is `total` bytes long and
//    comes in pieces, each a ring_message_frame of ring `id` or, when the ring stays
//    full, an inline_piece_frame {length, 0, 0} followed by that many bytes.
// The sender uses its ring only once it sees `attached`, so a receiver that could not
// take the descriptor (out of descriptors, forged frame) loses nothing: the messages
// keep coming inline. Rings are told apart by id, so a sending end used by several
// processes in turn (fork) still delivers each message.
//
// The counters live in the control page, shared by every process that holds an end,
// so after fork either copy may go on where the other stopped. The peer can write that
// page and the data; nothing it writes there can make this side touch memory outside
// the mapping (every position is taken modulo the capacity and a message is never
// longer than the ring, which is mapped twice in a row), and the file is sealed
// against shrinking, so no access can fault.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <new>
#include <optional>
#include <vector>

#include "../errors.hpp"
#include "deadline.hpp"
#include "posix/mirror_map.hpp"
#include "posix/posix.hpp"
#include "posix/sealed_memfd.hpp"
#include "posix/shm_region.hpp"

namespace mproc::detail {

inline constexpr std::size_t ring_capacity = std::size_t(1) << 20;
// Smaller messages come with their frame in one read of the socket's read-ahead: the
// ring would add a frame and save nothing.
inline constexpr std::size_t ring_min_message = 16 * 1024;
// A quarter of the ring, so a sender can run a few messages ahead of its receiver.
inline constexpr std::size_t ring_max_message = ring_capacity / 4;
// Largest ring accepted from a peer (address space is all it costs, but bounded).
inline constexpr std::uint64_t ring_max_capacity = std::uint64_t(64) << 20;
// A receiving end maps at most this many rings (one per process that sent through it).
inline constexpr std::size_t ring_max_attached = 8;

inline constexpr std::uint64_t control_frame_bit = std::uint64_t(1) << 63;
inline constexpr std::uint64_t ring_attach_frame = control_frame_bit | 1;
inline constexpr std::uint64_t ring_message_frame = control_frame_bit | 2;
inline constexpr std::uint64_t ring_stream_frame = control_frame_bit | 3;
inline constexpr std::uint64_t inline_piece_frame = control_frame_bit | 4;
inline constexpr std::size_t control_body_size = 24;

/// The ring's first page.
struct ring_control {
  std::atomic<std::uint32_t> attached;              // set once a receiver has mapped it
  alignas(64) std::atomic<std::uint64_t> produced;  // bytes written by senders
  alignas(64) std::atomic<std::uint64_t> consumed;  // bytes the receiver is done with
};

/// One mapped ring: its control page and its data, mapped twice in a row so that any
/// message is one contiguous span.
class shared_ring {
 public:
  /// A new ring, or nothing when the system refuses one (the messages then go inline).
  static std::optional<shared_ring> create() noexcept {
    try {
      const std::size_t page = page_size();
      unique_fd fd = create_sealed_memfd(page + ring_capacity, "mproc-connection");
      if (!fd) return std::nullopt;
      std::uint64_t id = 0;
      fill_random(&id, sizeof id);
      shared_ring r(std::move(fd), id, ring_capacity);
      new (r.ctl_.data()) ring_control{};
      return r;
    } catch (const std::exception&) {
      return std::nullopt;
    }
  }

  /// Maps a ring a peer announced; nothing if the file is not one that is safe to map.
  static std::optional<shared_ring> adopt(unique_fd fd, std::uint64_t id, std::uint64_t capacity) noexcept {
    const std::size_t page = page_size();
    if (capacity < page || capacity > ring_max_capacity || capacity % page) return std::nullopt;
    if (!sealed_at_least(fd.get(), page + std::size_t(capacity))) return std::nullopt;
    try {
      return shared_ring(std::move(fd), id, std::size_t(capacity));
    } catch (const std::exception&) {
      return std::nullopt;
    }
  }

  [[nodiscard]] ring_control& control() const noexcept { return *ctl_.as<ring_control>(); }
  [[nodiscard]] std::byte* at(std::uint64_t pos) const noexcept { return data_.data() + pos % cap_; }
  [[nodiscard]] std::size_t capacity() const noexcept { return cap_; }
  [[nodiscard]] std::uint64_t id() const noexcept { return id_; }
  [[nodiscard]] int fd() const noexcept { return ctl_.fd(); }

 private:
  shared_ring(unique_fd fd, std::uint64_t id, std::size_t cap)
      : data_(fd.get(), page_size(), cap), ctl_(shm_region::map(std::move(fd), page_size())), id_(id), cap_(cap) {}

  mirror_map data_;
  shm_region ctl_;  // the control page; keeps the descriptor to pass the ring on (attach frame, spawn)
  std::uint64_t id_;
  std::size_t cap_;
};

/// The sending side of an end: its ring once made, and how far the handshake got.
struct ring_sender {
  shared_ring ring;
  bool attach_sent = false;
  bool acked = false;    // the receiver has mapped the ring
  bool stalled = false;  // the last wait for space gave up: do not wait again until space shows
};

/// True for a message the ring may carry whole.
inline bool ring_sized(std::size_t len) noexcept { return len >= ring_min_message && len <= ring_max_message; }

/// True once the receiver has mapped the ring.
inline bool ring_ready(ring_sender& t) noexcept {
  if (!t.acked) t.acked = t.ring.control().attached.load(std::memory_order_acquire) != 0;
  return t.acked;
}

/// Where the next message of `len` bytes goes in the ring, or nullptr when it must go
/// inline (receiver not attached yet, or the ring stays full). A full ring is waited
/// on for up to reply_spin_ns (never past `deadline`): a receiver that is reading frees
/// space within microseconds, and one that is not must not hold the sender up.
inline std::byte* ring_space(ring_sender& t, std::size_t len, deadline_t deadline) noexcept {
  if (!ring_ready(t)) return nullptr;
  ring_control& c = t.ring.control();
  const std::uint64_t head = c.produced.load(std::memory_order_relaxed);
  const std::size_t cap = t.ring.capacity();
  auto fits = [&] {
    const std::uint64_t done = c.consumed.load(std::memory_order_acquire);
    return done <= head && head - done <= cap - len;  // a counter out of range: no space
  };
  if (!fits()) {
    if (t.stalled) return nullptr;
    const deadline_t end = spin_deadline(deadline);
    do {
      if (monotonic_ns() >= end) {
        t.stalled = true;
        return nullptr;
      }
      yield_cpu();
    } while (!fits());
  }
  t.stalled = false;
  return t.ring.at(head);
}

/// The rings a receiving end has mapped, by id.
struct ring_receiver {
  std::vector<shared_ring> rings;

  /// Maps an announced ring and tells its sender. A ring that cannot be mapped, or
  /// one beyond ring_max_attached, is ignored: its sender keeps sending inline (a ring
  /// in use is never dropped, so no announced message can be lost).
  void attach(unique_fd fd, std::uint64_t id, std::uint64_t capacity) {
    if (rings.size() == ring_max_attached || find(id)) return;
    auto r = shared_ring::adopt(std::move(fd), id, capacity);
    if (!r) return;
    r->control().attached.store(1, std::memory_order_release);
    rings.push_back(std::move(*r));
  }

  [[nodiscard]] shared_ring* find(std::uint64_t id) noexcept {
    for (auto& r : rings)
      if (r.id() == id) return &r;
    return nullptr;
  }
};

/// The message a ring frame announces, checked against its ring: the ring is known,
/// the message no longer than the ring and next in line.
inline std::byte* ring_message(ring_receiver& rx, std::uint64_t id, std::uint64_t start, std::uint64_t len) {
  shared_ring* r = rx.find(id);
  if (!r)
    throw serialization_error("mproc: Connection: a shared-memory message names a ring that was never attached");
  if (len > r->capacity() || start != r->control().consumed.load(std::memory_order_relaxed))
    throw serialization_error("mproc: Connection: a shared-memory message lies outside its ring or out of order");
  std::atomic_thread_fence(std::memory_order_acquire);  // the data was written before the frame was sent
  return r->at(start);
}

/// Gives a received message's bytes back to its sender.
inline void ring_release(ring_receiver& rx, std::uint64_t id, std::uint64_t end) noexcept {
  if (shared_ring* r = rx.find(id)) r->control().consumed.store(end, std::memory_order_release);
}

}  // namespace mproc::detail
