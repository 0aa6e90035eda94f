/// \file
/// mproc::Pipe and mproc::Connection: a message channel between two processes.
///
/// Both ends are AF_UNIX stream sockets (also for one-way pipes, whose unused
/// directions are shut down) so that sends can use MSG_NOSIGNAL: writing to a closed
/// peer raises mproc::eof_error instead of killing the program with SIGPIPE.
///
/// Framing: an 8-byte length (host byte order: both ends run on one host) followed by
/// that many bytes. send(v) frames a type-tagged message (detail::write_message), so
/// recv<T>() of the wrong type is reported with both type names. The receive side
/// reads ahead into a small buffer so a small message costs one system call; bodies
/// larger than that buffer are read straight into their destination. Messages of
/// 16 KiB or more go through a ring of shared memory instead (longer ones in pieces),
/// with a small frame on the socket saying where (detail/connection_ring.hpp): the
/// kernel's socket copy is what limits a stream of them.
///
/// Connection is a handle: copies share one socket (it closes when the last copy goes
/// or close() is called). One end must not be used by two threads at once, nor by two
/// processes at once (after fork each process has its own read-ahead buffer).
#pragma once

#include <algorithm>
#include <climits>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <optional>
#include <ranges>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "detail/connection_ring.hpp"
#include "detail/posix/fd_passing.hpp"
#include "detail/posix/posix.hpp"
#include "detail/posix/sockets.hpp"
#include "errors.hpp"
#include "serialization.hpp"
#include "detail/handle_passing.hpp"

namespace mproc {

/// Options of a Connection, given to Pipe() or the Connection constructor.
struct connection_options {
  /// Largest message recv accepts; a longer one raises serialization_error (before
  /// anything is allocated) and is skipped.
  std::size_t max_message_size = std::size_t(1) << 30;
};

namespace detail {

/// Tag of the frame that carries a file descriptor (send_fd / recv_fd).
struct passed_fd_marker {};

inline constexpr std::size_t frame_header_size = sizeof(std::uint64_t);
inline constexpr std::size_t read_ahead_size = 16 * 1024;
// A frame body is allocated at its announced length up to this; beyond, as it arrives.
inline constexpr std::size_t trusted_body_size = 128 * 1024;
// Sends up to this size are framed in a reused per-connection buffer.
inline constexpr std::size_t reused_send_buffer_limit = 1 << 20;

struct connection_state {
  unique_fd fd;
  bool readable = true;
  bool writable = true;
  std::size_t max_message = std::size_t(1) << 30;

  // read-ahead buffer
  std::unique_ptr<std::byte[]> in;
  std::size_t in_begin = 0, in_end = 0;
  // the frame being received (kept across a timeout so the stream stays in sync)
  std::byte hdr[frame_header_size + control_body_size];
  std::size_t hdr_got = 0;
  std::size_t hdr_need = frame_header_size;  // grows by control_body_size for a control frame
  bool in_body = false;
  // the body lies in a ring, not in the stream: {ring id, start}
  bool body_in_ring = false;
  std::uint64_t ring_id = 0, ring_start = 0;
  // the body comes in pieces from ring ring_id (ring_stream_frame); stream_skip: it is
  // over the limit, so its pieces are dropped; piece_left: an inline piece's bytes to come
  bool body_streamed = false;
  bool stream_skip = false;
  std::size_t piece_left = 0;
  std::vector<std::byte> body;
  std::size_t body_len = 0;  // announced length; body.size() catches up as bytes arrive
  std::size_t body_got = 0;
  std::uint64_t discard = 0;  // bytes of a refused (oversized) message still to skip
  std::deque<unique_fd> fds;  // received with SCM_RIGHTS, in order

  std::vector<std::byte> out;  // reused send buffer for small messages

  // the shared-memory lane for large messages (detail/connection_ring.hpp)
  std::optional<ring_sender> tx;
  bool tx_off = false;  // no ring for this end: not a Unix socket, or none could be made
  ring_receiver rx;
};

[[noreturn]] inline void throw_too_large(std::uint64_t len, std::size_t max) {
  throw serialization_error("mproc: Connection: incoming message of " + std::to_string(len) +
                            " bytes exceeds the limit of " + std::to_string(max) +
                            " bytes (connection_options::max_message_size); it is skipped");
}

[[noreturn]] inline void throw_timeout(const char* what) {
  throw timeout_error(std::string("mproc: Connection::") + what + " timed out");
}

/// recvmsg into [p, p+n); collects passed descriptors. Returns bytes read (> 0).
inline std::size_t read_some(connection_state& s, void* p, std::size_t n, std::int64_t deadline,
                             const char* what) {
  // Polls without blocking for a moment first (reply_spin_ns): a peer that answers
  // at once is then heard without a wake-up, which is most of a round trip's time.
  const deadline_t spin_end = spin_deadline(deadline);
  int flags = MSG_DONTWAIT;
  for (;;) {
    if (!flags && deadline >= 0 && !wait_fd(s.fd.get(), POLLIN, deadline)) throw_timeout(what);
    ssize_t got = recv_with_fds(s.fd.get(), p, n, flags, [&](int fd) { s.fds.emplace_back(fd); });
    if (got == -1) {
      if (errno == EAGAIN && flags) {
        if (monotonic_ns() < spin_end) yield_cpu();
        else flags = 0;
        continue;
      }
      if (errno == EINTR || errno == EAGAIN) continue;
      if (errno == ECONNRESET) throw eof_error("mproc: Connection: peer reset the connection");
      throw_errno("recvmsg");
    }
    if (got == 0)
      throw eof_error(s.in_body || s.hdr_got
                          ? "mproc: Connection: peer closed the connection in the middle of a message"
                          : "mproc: Connection: peer closed the connection");
    return std::size_t(got);
  }
}

inline void fill_read_ahead(connection_state& s, std::int64_t deadline, const char* what) {
  if (!s.in) s.in = std::make_unique_for_overwrite<std::byte[]>(read_ahead_size);
  // Only called with the buffer drained; it stays consistent if read_some throws.
  std::size_t n = read_some(s, s.in.get(), read_ahead_size, deadline, what);
  s.in_begin = 0;
  s.in_end = n;
}

/// Acts on a control frame whose body is in s.hdr; true when it announced a message
/// in a ring (then under way as s.body_*), false when there is nothing to deliver.
inline bool read_control_frame(connection_state& s, std::uint64_t kind) {
  std::uint64_t w[3];
  std::memcpy(w, s.hdr + frame_header_size, sizeof w);
  if (kind == ring_attach_frame) {
    // Without its descriptor (dropped for want of a free slot, or a forged frame) the
    // ring is not used: its sender keeps sending inline.
    if (!s.fds.empty()) {
      unique_fd fd = std::move(s.fds.front());
      s.fds.pop_front();
      s.rx.attach(std::move(fd), w[0], w[1]);
    }
    return false;
  }
  if (kind == ring_stream_frame) {
    if (!s.rx.find(w[0]))
      throw serialization_error("mproc: Connection: a shared-memory message names a ring that was never attached");
    s.ring_id = w[0];
    s.body_len = std::size_t(w[1]);
    s.body.clear();
    s.body_got = 0;
    s.piece_left = 0;
    s.body_streamed = true;
    s.in_body = true;
    if (w[1] > s.max_message) {
      s.stream_skip = true;  // its pieces are dropped by the next read
      throw_too_large(w[1], s.max_message);
    }
    return true;
  }
  if (kind == inline_piece_frame)
    throw serialization_error("mproc: Connection: a piece of a message came outside one");
  if (kind != ring_message_frame)
    throw serialization_error("mproc: Connection: unknown control frame " + std::to_string(kind & ~control_frame_bit));
  (void)ring_message(s.rx, w[0], w[1], w[2]);  // checks it before anything is taken
  if (w[2] > s.max_message) {
    ring_release(s.rx, w[0], w[1] + w[2]);
    throw_too_large(w[2], s.max_message);
  }
  s.ring_id = w[0];
  s.ring_start = w[1];
  s.body_len = std::size_t(w[2]);
  s.body_in_ring = true;
  s.in_body = true;
  return true;
}

/// The body of the ring message under way; give it back with finish_ring_body.
inline std::span<const std::byte> ring_body(connection_state& s) {
  return {ring_message(s.rx, s.ring_id, s.ring_start, s.body_len), s.body_len};
}
inline void finish_ring_body(connection_state& s) noexcept {
  ring_release(s.rx, s.ring_id, s.ring_start + s.body_len);
  s.body_in_ring = false;
  s.in_body = false;
}

/// Reads the pieces of a streamed body (ring_stream_frame) until it is whole: to `out`
/// when given, else into s.body, grown as pieces arrive (an announced total buys no
/// memory), or nowhere when the message is being skipped. On timeout what arrived is
/// kept for the next call.
inline void read_stream_pieces(connection_state& s, std::byte* out, deadline_t deadline, const char* what) {
  auto dest = [&](std::size_t n) -> std::byte* {
    if (s.stream_skip) return nullptr;
    if (out) return out + s.body_got;
    const std::size_t want = s.body_got + n;
    if (s.body.size() < want) s.body.resize(std::min(s.body_len, std::max(want, 2 * s.body.size())));
    return s.body.data() + s.body_got;
  };
  auto malformed = [&] {
    s.in_body = s.body_streamed = s.stream_skip = false;
    s.piece_left = 0;
    s.body.clear();
    throw serialization_error("mproc: Connection: a piece of a streamed message is malformed");
  };
  constexpr std::size_t piece_header = frame_header_size + control_body_size;
  while (s.body_got < s.body_len) {
    if (s.piece_left) {  // an inline piece's bytes: from the read-ahead, or straight in when large
      const std::size_t avail = s.in_end - s.in_begin;
      if (avail) {
        const std::size_t take = std::min(avail, s.piece_left);
        if (std::byte* d = dest(take)) std::memcpy(d, s.in.get() + s.in_begin, take);
        s.in_begin += take;
        s.piece_left -= take;
        s.body_got += take;
      } else if (s.piece_left >= read_ahead_size && !s.stream_skip) {
        // Into s.body, no more at a time than has arrived: an announced piece buys no memory.
        const std::size_t n = out ? s.piece_left : std::min(s.piece_left, std::max(read_ahead_size, s.body_got));
        const std::size_t got = read_some(s, dest(n), n, deadline, what);
        s.piece_left -= got;
        s.body_got += got;
      } else {
        fill_read_ahead(s, deadline, what);
      }
      continue;
    }
    // the next piece's frame, kept whole across timeouts like a frame header
    const std::size_t avail = s.in_end - s.in_begin;
    const std::size_t take = std::min(avail, piece_header - s.hdr_got);
    if (take) std::memcpy(s.hdr + s.hdr_got, s.in.get() + s.in_begin, take);
    s.hdr_got += take;
    s.in_begin += take;
    if (s.hdr_got < piece_header) {
      fill_read_ahead(s, deadline, what);
      continue;
    }
    s.hdr_got = 0;
    std::uint64_t f[4];
    std::memcpy(f, s.hdr, sizeof f);
    const std::size_t left = s.body_len - s.body_got;
    if (f[0] == ring_message_frame && f[1] == s.ring_id && f[3] > 0 && f[3] <= left) {
      const std::byte* src = ring_message(s.rx, f[1], f[2], f[3]);
      if (std::byte* d = dest(std::size_t(f[3]))) std::memcpy(d, src, std::size_t(f[3]));
      ring_release(s.rx, f[1], f[2] + f[3]);
      s.body_got += std::size_t(f[3]);
    } else if (f[0] == inline_piece_frame && f[1] > 0 && f[1] <= left) {
      s.piece_left = std::size_t(f[1]);
    } else {
      malformed();
    }
  }
  s.in_body = s.body_streamed = s.stream_skip = false;
}

/// Reads the next frame's header unless a frame is already under way; on return
/// s.in_body is set and s.body_len is the body's length. A frame over the limit is
/// skipped (serialization_error); on timeout what arrived is kept for the next call.
inline void read_frame_header(connection_state& s, std::int64_t deadline, const char* what) {
  for (;;) {
    std::size_t avail = s.in_end - s.in_begin;
    if (s.discard) {
      std::size_t take = std::size_t(std::min<std::uint64_t>(s.discard, avail));
      s.in_begin += take;
      s.discard -= take;
      if (s.discard) {
        fill_read_ahead(s, deadline, what);
        continue;
      }
      avail = s.in_end - s.in_begin;
    }
    if (s.in_body && s.stream_skip) {
      read_stream_pieces(s, nullptr, deadline, what);
      continue;
    }
    if (s.in_body) return;
    std::size_t take = std::min(avail, s.hdr_need - s.hdr_got);
    if (take) std::memcpy(s.hdr + s.hdr_got, s.in.get() + s.in_begin, take);
    s.hdr_got += take;
    s.in_begin += take;
    if (s.hdr_got < s.hdr_need) {
      fill_read_ahead(s, deadline, what);
      continue;
    }
    std::uint64_t len;
    std::memcpy(&len, s.hdr, sizeof len);
    if ((len & control_frame_bit) && s.hdr_need == frame_header_size) {
      s.hdr_need += control_body_size;  // then its body, kept whole the same way
      continue;
    }
    s.hdr_got = 0;
    s.hdr_need = frame_header_size;
    if (len & control_frame_bit) {
      if (read_control_frame(s, len)) return;
      continue;
    }
    if (len > s.max_message) {
      s.discard = len;
      throw_too_large(len, s.max_message);
    }
    s.body_len = std::size_t(len);
    s.body.clear();
    // Sized at once up to a bound: a usual message is then one allocation and one
    // read (growing by doubling from the read-ahead's 16 KiB cost a 64 KiB message
    // three allocations, copies and reads: a third of a raw pipe's rate). A peer
    // that announces more and sends nothing still buys at most this much.
    s.body.resize(std::min(s.body_len, trusted_body_size));
    s.body_got = 0;
    s.in_body = true;
    return;
  }
}

/// Receives one whole frame body. On timeout the partial frame is kept, so a later
/// call continues where this one stopped.
inline std::vector<std::byte> read_frame(connection_state& s, std::int64_t deadline,
                                         const char* what) {
  read_frame_header(s, deadline, what);
  if (s.body_in_ring) {
    auto b = ring_body(s);
    std::vector<std::byte> body(b.begin(), b.end());  // copied once, with no zero-fill first
    finish_ring_body(s);
    return body;
  }
  if (s.body_streamed) {
    read_stream_pieces(s, nullptr, deadline, what);
    s.body.resize(s.body_len);  // (already that size unless empty)
    return std::exchange(s.body, {});
  }
  // The body grows only as its bytes arrive (doubling, never past the announced
  // length): an announced length alone buys no memory, so a peer that announces a
  // huge message and sends nothing costs nothing.
  auto grow_to = [&s](std::size_t want) {
    if (s.body.size() < want) s.body.resize(std::min(s.body_len, std::max(want, 2 * s.body.size())));
  };
  for (;;) {
    std::size_t avail = s.in_end - s.in_begin;
    std::size_t need = s.body_len - s.body_got;
    std::size_t take = std::min(avail, need);
    grow_to(s.body_got + take);
    if (take) std::memcpy(s.body.data() + s.body_got, s.in.get() + s.in_begin, take);
    s.body_got += take;
    s.in_begin += take;
    need -= take;
    if (need == 0) {
      s.in_body = false;
      return std::exchange(s.body, {});
    }
    if (need >= read_ahead_size) {
      grow_to(s.body_got + read_ahead_size);
      s.body_got += read_some(s, s.body.data() + s.body_got, std::min(need, s.body.size() - s.body_got),
                              deadline, what);
    } else {
      fill_read_ahead(s, deadline, what);
    }
  }
}

/// Receives one whole frame body into `out`, with no allocation and no copy beyond
/// the socket's; returns its length. A body that does not fit is received whole and
/// raised as buffer_too_short; a body begun by an earlier call that timed out is
/// finished the usual way and copied.
inline std::size_t read_frame_into(connection_state& s, std::span<std::byte> out,
                                   std::int64_t deadline, const char* what) {
  read_frame_header(s, deadline, what);
  if (s.body_in_ring && s.body_len <= out.size()) {
    auto b = ring_body(s);
    if (!b.empty()) std::memcpy(out.data(), b.data(), b.size());
    finish_ring_body(s);
    return b.size();
  }
  if (s.body_streamed && s.body_got == 0 && s.body_len <= out.size()) {
    try {
      read_stream_pieces(s, out.data(), deadline, what);
    } catch (const timeout_error&) {
      // Keep what arrived, so the next call (into any buffer) continues this message.
      s.body.assign(out.data(), out.data() + s.body_got);
      throw;
    }
    return s.body_len;
  }
  if (s.body_got > 0 || s.body_len > out.size()) {
    std::vector<std::byte> body = read_frame(s, deadline, what);
    if (body.size() > out.size()) throw buffer_too_short(std::move(body), out.size());
    if (!body.empty()) std::memcpy(out.data(), body.data(), body.size());
    return body.size();
  }
  const std::size_t len = s.body_len;
  std::size_t got = 0;
  try {
    while (got < len) {
      const std::size_t avail = s.in_end - s.in_begin;
      if (avail) {
        const std::size_t take = std::min(avail, len - got);
        std::memcpy(out.data() + got, s.in.get() + s.in_begin, take);
        s.in_begin += take;
        got += take;
      } else if (len - got >= read_ahead_size) {
        got += read_some(s, out.data() + got, len - got, deadline, what);
      } else {
        fill_read_ahead(s, deadline, what);
      }
    }
  } catch (...) {
    // Keep what arrived, so the next call (into any buffer) continues this message.
    s.body.assign(out.data(), out.data() + got);
    s.body_got = got;
    throw;
  }
  s.in_body = false;
  return len;
}

/// If a whole frame sits in the read-ahead buffer, consumes it and returns its body
/// (valid until the next read): small messages are decoded in place, with no copy
/// and no allocation.
inline std::optional<std::span<const std::byte>> take_buffered_frame(connection_state& s) {
  if (s.in_body || s.hdr_got || s.discard) return std::nullopt;
  std::size_t avail = s.in_end - s.in_begin;
  if (avail < frame_header_size) return std::nullopt;
  std::uint64_t len;
  std::memcpy(&len, s.in.get() + s.in_begin, sizeof len);
  if ((len & control_frame_bit) || len > s.max_message || len > avail - frame_header_size) return std::nullopt;
  std::span<const std::byte> body(s.in.get() + s.in_begin + frame_header_size, std::size_t(len));
  s.in_begin += frame_header_size + std::size_t(len);
  return body;
}

/// Writes all iovecs (MSG_NOSIGNAL). With a deadline, times out only if nothing of
/// the frame has been written yet: a started frame is always completed, so the
/// stream never holds half a message.
inline void write_all(connection_state& s, iovec* iov, std::size_t iovcnt, int fd_to_pass,
                      std::int64_t deadline, const char* what) {
  bool started = false;
  while (iovcnt) {
    if (deadline >= 0 && !started && !wait_fd(s.fd.get(), POLLOUT, deadline)) throw_timeout(what);
    const bool attach = fd_to_pass >= 0 && !started;
    int flags = MSG_NOSIGNAL | (deadline >= 0 && !started ? MSG_DONTWAIT : 0);
    ssize_t n = send_with_fds(s.fd.get(), iov, iovcnt, attach ? std::span<const int>(&fd_to_pass, 1) : std::span<const int>{},
                              flags);
    if (n == -1) {
      if (errno == EINTR || errno == EAGAIN) continue;
      if (errno == EPIPE || errno == ECONNRESET)
        throw eof_error("mproc: Connection: peer closed the connection (send failed: " +
                        std::string(std::strerror(errno)) + ")");
      throw_errno("sendmsg");
    }
    started = true;
    auto left = std::size_t(n);
    while (iovcnt && left >= iov->iov_len) {
      left -= iov->iov_len;
      ++iov;
      --iovcnt;
    }
    if (iovcnt) {
      iov->iov_base = static_cast<char*>(iov->iov_base) + left;
      iov->iov_len -= left;
    }
  }
}

/// Announces the `len` bytes just written at the ring's next position, then moves past them.
inline void publish_ring_message(connection_state& s, std::size_t len, deadline_t deadline, const char* what) {
  ring_control& c = s.tx->ring.control();
  const std::uint64_t start = c.produced.load(std::memory_order_relaxed);
  std::uint64_t frame[4] = {ring_message_frame, s.tx->ring.id(), start, len};
  std::atomic_thread_fence(std::memory_order_release);  // the data before the frame
  iovec iov{frame, sizeof frame};
  write_all(s, &iov, 1, -1, deadline, what);
  c.produced.store(start + len, std::memory_order_relaxed);
}

/// Sends a message of `len` bytes, written by put(p), through the end's ring; false
/// (nothing sent) when it must go inline.
template <class Put>
bool send_through_ring(connection_state& s, std::size_t len, deadline_t deadline, const char* what,
                       Put&& put) {
  if (!s.tx || !ring_sized(len)) return false;
  std::byte* p = ring_space(*s.tx, len, deadline);
  if (!p) return false;
  put(p);
  publish_ring_message(s, len, deadline, what);
  return true;
}

/// Sends a message longer than ring_max_message in pieces through the end's ring, each
/// piece inline when the ring stays full; false (nothing sent) when the ring is not in
/// use. Only the first frame heeds the deadline: a message under way is completed.
inline bool send_streamed(connection_state& s, const std::byte* data, std::size_t len, deadline_t deadline,
                          const char* what) {
  if (len <= ring_max_message || !s.tx || !ring_ready(*s.tx)) return false;
  ring_sender& t = *s.tx;
  std::uint64_t begin[4] = {ring_stream_frame, t.ring.id(), len, 0};
  iovec iov0{begin, sizeof begin};
  write_all(s, &iov0, 1, -1, deadline, what);
  for (std::size_t off = 0; off < len;) {
    const std::size_t n = std::min(len - off, ring_max_message);
    if (std::byte* p = ring_space(t, n, no_deadline)) {
      std::memcpy(p, data + off, n);
      publish_ring_message(s, n, no_deadline, what);
    } else {
      std::uint64_t f[4] = {inline_piece_frame, n, 0, 0};
      iovec iov[2] = {{f, sizeof f}, {const_cast<std::byte*>(data + off), n}};
      write_all(s, iov, 2, -1, no_deadline, what);
    }
    off += n;
  }
  return true;
}

/// For an inline message of `len` bytes: the attach frame to send in front of it, if
/// this is the first message the end's ring could carry (the ring is made now). Returns
/// the descriptor to pass with it, or -1 when no attach is due.
inline int ring_attach_due(connection_state& s, std::size_t len, std::uint64_t (&frame)[4]) {
  if (len < ring_min_message || s.tx_off) return -1;
  if (!s.tx) {
    std::optional<shared_ring> r;
    if (is_unix_socket(s.fd.get())) r = shared_ring::create();
    if (!r) {
      s.tx_off = true;
      return -1;
    }
    s.tx.emplace(ring_sender{std::move(*r)});
  }
  if (s.tx->attach_sent) return -1;
  frame[0] = ring_attach_frame;
  frame[1] = s.tx->ring.id();
  frame[2] = s.tx->ring.capacity();
  frame[3] = 0;
  return s.tx->ring.fd();
}

template <class T>
concept byte_like = sizeof(T) == 1 && std::is_trivially_copyable_v<T>;

template <class R>
concept byte_range = std::ranges::contiguous_range<R> && std::ranges::sized_range<R> &&
                     byte_like<std::ranges::range_value_t<R>> &&
                     !std::is_array_v<std::remove_cvref_t<R>>;

}  // namespace detail

/// One end of a Pipe. A handle: copies refer to the same socket. A receive that finds
/// nothing polls for up to 50 us before it sleeps in the kernel, so a peer that
/// answers at once is heard without a wake-up. An end that sends a message of 16 KiB
/// or more makes a 1 MiB shared-memory ring for such messages (one descriptor, kept
/// until the end closes; longer messages go in pieces of 256 KiB); a send waits up to
/// 50 us for space in it, then goes by the socket.
class Connection {
 public:
  /// A closed connection (placeholder to assign to).
  Connection() = default;

  /// Takes ownership of a connected AF_UNIX stream socket.
  explicit Connection(detail::unique_fd fd, bool readable = true, bool writable = true,
                      connection_options options = {})
      : s_(std::make_shared<detail::connection_state>()) {
    s_->fd = std::move(fd);
    s_->readable = readable;
    s_->writable = writable;
    s_->max_message = options.max_message_size;
  }

  /// Sends a value as a type-tagged message (string literals and const char* go as
  /// std::string). Raises eof_error if the peer has closed its end.
  template <class T>
  void send(const T& value) {
    send_impl(value, -1);
  }
  /// As send(value); raises timeout_error if nothing could be written within timeout
  /// (a message that has started to go out is always completed).
  template <class T, class Rep, class Period>
  void send(const T& value, std::chrono::duration<Rep, Period> timeout) {
    send_impl(value, detail::to_ns(timeout));
  }

  /// Receives a message holding a T. A message of another type raises
  /// serialization_error naming both types (the message is consumed); a closed peer
  /// raises eof_error.
  template <class T>
  [[nodiscard]] T recv() {
    return recv_impl<T>(-1);
  }
  /// As recv<T>(); raises timeout_error when no whole message arrives in time (a
  /// partly received message is kept for the next call).
  template <class T, class Rep, class Period>
  [[nodiscard]] T recv(std::chrono::duration<Rep, Period> timeout) {
    return recv_impl<T>(detail::to_ns(timeout));
  }

  /// Sends raw bytes as one message (received whole by recv_bytes).
  void send_bytes(std::span<const std::byte> bytes) { send_raw(bytes.data(), bytes.size(), -1); }
  /// As send_bytes(bytes), from a string's characters.
  void send_bytes(std::string_view s) { send_raw(s.data(), s.size(), -1); }
  /// As send_bytes(bytes), from any contiguous range of bytes or chars.
  template <detail::byte_range R>
  void send_bytes(const R& r) {
    send_raw(std::ranges::data(r), std::ranges::size(r), -1);
  }
  /// As send_bytes(bytes); raises timeout_error if nothing could be written within `timeout`.
  template <class Rep, class Period>
  void send_bytes(std::span<const std::byte> bytes, std::chrono::duration<Rep, Period> timeout) {
    send_raw(bytes.data(), bytes.size(), detail::to_ns(timeout));
  }
  /// Sends `size` bytes of buf from `offset` (Python's send_bytes(buf, offset, size));
  /// without size, the rest of buf. Raises value_error when offset or offset + size
  /// lies beyond the end of buf.
  template <detail::byte_range R>
  void send_bytes(const R& buf, std::size_t offset) {
    const std::size_t n = std::ranges::size(buf);
    check_slice(n, offset, n - std::min(offset, n));
    send_raw(reinterpret_cast<const char*>(std::ranges::data(buf)) + offset, n - offset, -1);
  }
  /// As send_bytes(buf, offset), sending only `size` bytes; mproc::value_error when the slice lies outside `buf`.
  template <detail::byte_range R>
  void send_bytes(const R& buf, std::size_t offset, std::size_t size) {
    check_slice(std::ranges::size(buf), offset, size);
    send_raw(reinterpret_cast<const char*>(std::ranges::data(buf)) + offset, size, -1);
  }
  /// As send_bytes(buf, offset), from a string's characters.
  void send_bytes(std::string_view s, std::size_t offset) { send_bytes<std::string_view>(s, offset); }
  /// As send_bytes(buf, offset, size), from a string's characters.
  void send_bytes(std::string_view s, std::size_t offset, std::size_t size) {
    send_bytes<std::string_view>(s, offset, size);
  }

  /// Receives one message sent with send_bytes, whole.
  [[nodiscard]] std::vector<std::byte> recv_bytes() { return frame(-1, "recv_bytes"); }
  /// As recv_bytes(); raises timeout_error when no whole message arrives in time (a partly received one is kept for the next call).
  template <class Rep, class Period>
  [[nodiscard]] std::vector<std::byte> recv_bytes(std::chrono::duration<Rep, Period> timeout) {
    return frame(detail::to_ns(timeout), "recv_bytes");
  }

  /// Receives a message sent with send_bytes into `buffer` (reused across calls: no
  /// allocation); returns its length. A message larger than the buffer is consumed
  /// and raised as buffer_too_short, which holds it whole.
  [[nodiscard]] std::size_t recv_bytes_into(std::span<std::byte> buffer) {
    return detail::read_frame_into(readable_state("recv_bytes_into"), buffer, -1,
                                   "recv_bytes_into");
  }
  /// As recv_bytes_into(buffer), raising timeout_error when no whole message arrives in time.
  template <class Rep, class Period>
  [[nodiscard]] std::size_t recv_bytes_into(std::span<std::byte> buffer,
                                            std::chrono::duration<Rep, Period> timeout) {
    auto& s = readable_state("recv_bytes_into");
    return detail::read_frame_into(s, buffer, detail::deadline_after(detail::to_ns(timeout)),
                                   "recv_bytes_into");
  }

  /// True when there is something to receive (or the peer has closed: recv raises).
  [[nodiscard]] bool poll() { return poll_impl(0); }
  /// As poll(), waiting up to `timeout` for something to arrive.
  template <class Rep, class Period>
  [[nodiscard]] bool poll(std::chrono::duration<Rep, Period> timeout) {
    return poll_impl(detail::to_ns(timeout));
  }

  /// Passes a file descriptor to the peer process (SCM_RIGHTS); the caller keeps its own.
  void send_fd(int fd) {
    if (fd < 0) throw value_error("mproc: Connection::send_fd: invalid descriptor");
    auto& s = writable_state("send_fd");
    std::byte buf[detail::frame_header_size + 8];
    std::uint64_t len = detail::message_size(detail::passed_fd_marker{});
    std::memcpy(buf, &len, sizeof len);
    detail::write_message(detail::passed_fd_marker{}, buf + sizeof len);
    iovec iov{buf, std::size_t(detail::frame_header_size + len)};
    detail::write_all(s, &iov, 1, fd, -1, "send_fd");
  }
  /// Receives a descriptor sent with send_fd (close-on-exec set).
  [[nodiscard]] detail::unique_fd recv_fd() { return recv_fd_impl(-1); }
  /// As recv_fd(), raising timeout_error when nothing arrives in time.
  template <class Rep, class Period>
  [[nodiscard]] detail::unique_fd recv_fd(std::chrono::duration<Rep, Period> timeout) {
    return recv_fd_impl(detail::to_ns(timeout));
  }

  /// Closes this end for every copy in this process.
  void close() noexcept {
    if (s_) {
      s_->fd.reset();
      s_->fds.clear();
      s_->tx.reset();
      s_->rx.rings.clear();
    }
  }
  /// True once this end is closed (or for a default-constructed Connection).
  [[nodiscard]] bool closed() const noexcept { return !s_ || !s_->fd; }
  /// The socket's descriptor (for poll/select); raises state_error when closed.
  [[nodiscard]] int fileno() const {
    check_open("fileno");
    return s_->fd.get();
  }
  /// Whether this end may receive (false for the send end of a one-way Pipe).
  [[nodiscard]] bool readable() const noexcept { return s_ && s_->readable; }
  /// Whether this end may send (false for the receive end of a one-way Pipe).
  [[nodiscard]] bool writable() const noexcept { return s_ && s_->writable; }
  /// Largest message this end accepts (connection_options::max_message_size).
  [[nodiscard]] std::size_t max_message_size() const noexcept {
    return s_ ? s_->max_message : 0;
  }
  /// Changes max_message_size() for every copy of this end.
  void set_max_message_size(std::size_t n) {
    check_open("set_max_message_size");
    s_->max_message = n;
  }

 private:
  static void check_slice(std::size_t length, std::size_t offset, std::size_t size) {
    // Python's rules: the offset, and the slice's end, lie within the buffer. A
    // negative argument arrives here as a huge unsigned value and fails the same way.
    if (offset > length)
      throw value_error("mproc: Connection::send_bytes: buffer length " + std::to_string(length) +
                        " < offset " + std::to_string(offset));
    if (size > length - offset)
      throw value_error("mproc: Connection::send_bytes: buffer length " + std::to_string(length) +
                        " < offset + size (" + std::to_string(offset) + " + " +
                        std::to_string(size) + ")");
  }
  void check_open(const char* what) const {
    if (closed()) throw state_error(std::string("mproc: Connection::") + what + " on a closed connection");
  }
  detail::connection_state& readable_state(const char* what) {
    check_open(what);
    if (!s_->readable)
      throw state_error(std::string("mproc: Connection::") + what + " on a write-only connection");
    return *s_;
  }
  detail::connection_state& writable_state(const char* what) {
    check_open(what);
    if (!s_->writable)
      throw state_error(std::string("mproc: Connection::") + what + " on a read-only connection");
    return *s_;
  }

  std::vector<std::byte> frame(std::int64_t timeout_ns, const char* what) {
    auto& s = readable_state(what);
    return detail::read_frame(s, detail::deadline_after(timeout_ns), what);
  }

  template <class T>
  T recv_impl(std::int64_t timeout_ns) {
    auto& s = readable_state("recv");
    const std::int64_t deadline = detail::deadline_after(timeout_ns);
    if (s.in_end == s.in_begin && !s.in_body && !s.hdr_got && !s.discard)
      detail::fill_read_ahead(s, deadline, "recv");
    // The frame is consumed before decoding: a type mismatch still removes it.
    if (auto body = detail::take_buffered_frame(s)) return detail::read_message<T>(*body);
    detail::read_frame_header(s, deadline, "recv");
    if (s.body_in_ring) {
      // Decoded where it lies; the bytes go back to the sender whatever the outcome.
      struct release {
        detail::connection_state& s;
        ~release() { detail::finish_ring_body(s); }
      } r{s};
      return detail::read_message<T>(detail::ring_body(s));
    }
    return detail::read_message<T>(detail::read_frame(s, deadline, "recv"));
  }

  template <class T>
  void send_impl(const T& value, std::int64_t timeout_ns) {
    auto& s = writable_state("send");
    const std::int64_t deadline = detail::deadline_after(timeout_ns);
    const std::size_t len = detail::message_size(value);
    // Encoded straight into the ring when it takes the message.
    if (detail::send_through_ring(s, len, deadline, "send",
                                  [&](std::byte* p) { detail::write_message(value, p); }))
      return;
    const std::size_t total = detail::frame_header_size + len;
    // The header goes in front of the encoded value in one buffer: one copy, one call.
    std::unique_ptr<std::byte[]> big;
    std::byte* p;
    if (total <= detail::reused_send_buffer_limit) {
      if (s.out.size() < total) s.out.resize(std::max(total, std::size_t(256)));
      p = s.out.data();
    } else {
      big = std::make_unique_for_overwrite<std::byte[]>(total);
      p = big.get();
    }
    std::uint64_t hdr = len;
    std::memcpy(p, &hdr, sizeof hdr);
    detail::write_message(value, p + detail::frame_header_size);
    if (detail::send_streamed(s, p + detail::frame_header_size, len, deadline, "send")) return;
    send_inline(s, len, {p, total}, deadline, "send");
  }

  // Sends a frame already laid out in iov, the ring's attach frame in front when due.
  static void send_inline(detail::connection_state& s, std::size_t len, iovec frame_iov[], std::size_t n,
                          detail::deadline_t deadline, const char* what) {
    std::uint64_t attach[4];
    const int fd = detail::ring_attach_due(s, len, attach);
    iovec iov[3];
    std::size_t k = 0;
    if (fd >= 0) iov[k++] = {attach, sizeof attach};
    for (std::size_t i = 0; i < n; ++i) iov[k++] = frame_iov[i];
    detail::write_all(s, iov, k, fd, deadline, what);
    if (fd >= 0) s.tx->attach_sent = true;
  }
  static void send_inline(detail::connection_state& s, std::size_t len, iovec frame, detail::deadline_t deadline,
                          const char* what) {
    send_inline(s, len, &frame, 1, deadline, what);
  }

  void send_raw(const void* data, std::size_t n, std::int64_t timeout_ns) {
    auto& s = writable_state("send_bytes");
    const detail::deadline_t deadline = detail::deadline_after(timeout_ns);
    if (detail::send_through_ring(s, n, deadline, "send_bytes",
                                  [&](std::byte* p) { std::memcpy(p, data, n); }))
      return;
    if (detail::send_streamed(s, static_cast<const std::byte*>(data), n, deadline, "send_bytes")) return;
    std::uint64_t hdr = n;
    iovec iov[2] = {{&hdr, sizeof hdr}, {const_cast<void*>(data), n}};
    send_inline(s, n, iov, n ? 2 : 1, deadline, "send_bytes");
  }

  bool poll_impl(std::int64_t timeout_ns) {
    auto& s = readable_state("poll");
    if (s.in_end > s.in_begin) return true;
    return detail::wait_fd(s.fd.get(), POLLIN, detail::deadline_after(timeout_ns));
  }

  detail::unique_fd recv_fd_impl(std::int64_t timeout_ns) {
    auto& s = readable_state("recv_fd");
    auto body = detail::read_frame(s, detail::deadline_after(timeout_ns), "recv_fd");
    (void)detail::read_message<detail::passed_fd_marker>(body);
    if (s.fds.empty())
      throw serialization_error("mproc: Connection::recv_fd: the message carried no descriptor");
    auto fd = std::move(s.fds.front());
    s.fds.pop_front();
    return fd;
  }

  friend struct detail::handle_traits<Connection>;
  std::shared_ptr<detail::connection_state> s_;
};

/// A connected pair. Duplex: both ends send and receive. One-way (duplex = false):
/// the first end only receives, the second only sends.
[[nodiscard]] inline std::pair<Connection, Connection> Pipe(bool duplex = true,
                                                            connection_options options = {}) {
  auto [a, b] = detail::make_socketpair(SOCK_STREAM);
  if (!duplex) {
    detail::shutdown_socket(a.get(), SHUT_WR, "shutdown");
    detail::shutdown_socket(b.get(), SHUT_RD, "shutdown");
  }
  return {Connection(std::move(a), true, duplex, options),
          Connection(std::move(b), duplex, true, options)};
}

namespace detail {

// Passing to a spawn/forkserver child (detail/handle_passing.hpp): the socket itself.
template <>
struct handle_traits<Connection> {
  static constexpr bool passable = true;
  // The end's rings go along (their descriptors and ids; the counters live in the
  // rings): messages already announced in a ring must stay readable in the child.
  static void encode(vector_writer& w, fd_collector& c, const Connection& conn) {
    std::uint32_t idx = c.add(conn.fileno());
    const connection_state& s = *conn.s_;
    const bool tx = s.tx && s.tx->attach_sent;
    std::uint8_t flags = std::uint8_t((conn.readable() ? 1 : 0) | (conn.writable() ? 2 : 0) | (tx ? 4 : 0) |
                                      (tx && s.tx->acked ? 8 : 0));
    w.put(&idx, sizeof idx);
    w.put(&flags, sizeof flags);
    if (tx) put_ring(w, c, s.tx->ring);
    auto n = std::uint8_t(s.rx.rings.size());
    w.put(&n, sizeof n);
    for (const auto& ring : s.rx.rings) put_ring(w, c, ring);
  }
  static Connection adopt(reader& r, std::span<const int> fds) {
    std::uint32_t idx;
    std::uint8_t flags;
    r.get(&idx, sizeof idx, "connection descriptor index");
    r.get(&flags, sizeof flags, "connection flags");
    Connection conn(dup_received(fds, idx), (flags & 1) != 0, (flags & 2) != 0);
    connection_state& s = *conn.s_;
    if (flags & 4) {
      s.tx.emplace(ring_sender{get_ring(r, fds)});
      s.tx->attach_sent = true;
      s.tx->acked = (flags & 8) != 0;
    }
    std::uint8_t n;
    r.get(&n, sizeof n, "connection ring count");
    if (n > ring_max_attached) throw serialization_error("mproc: received connection has too many rings");
    for (std::uint8_t i = 0; i < n; ++i) s.rx.rings.push_back(get_ring(r, fds));
    return conn;
  }

 private:
  static void put_ring(vector_writer& w, fd_collector& c, const shared_ring& ring) {
    std::uint32_t idx = c.add(ring.fd());
    std::uint64_t v[2] = {ring.id(), ring.capacity()};
    w.put(&idx, sizeof idx);
    w.put(v, sizeof v);
  }
  static shared_ring get_ring(reader& r, std::span<const int> fds) {
    std::uint32_t idx;
    std::uint64_t v[2];
    r.get(&idx, sizeof idx, "connection ring descriptor index");
    r.get(v, sizeof v, "connection ring");
    auto ring = shared_ring::adopt(dup_received(fds, idx), v[0], v[1]);
    if (!ring) throw serialization_error("mproc: received connection's ring cannot be mapped");
    return std::move(*ring);
  }
};

}  // namespace detail

}  // namespace mproc
