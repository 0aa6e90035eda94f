// Connection's shared-memory lane for large messages (detail/connection_ring.hpp):
// every size at and around its bounds, processes taking turns on one end and ends
// handed to spawned children, a receiver that never maps the ring or lies about it,
// forged control frames, limits and timeouts, and nothing left behind.
#include <catch2/catch.hpp>

#include "spawn_entry.hpp"
#include "test_support.hpp"

#include <chrono>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <malloc.h>
#include <sys/mman.h>
#include <unistd.h>

#include <mproc/connection.hpp>
#include <mproc/process.hpp>

using namespace std::chrono_literals;
namespace d = mproc::detail;

using mproc_test::count_fds;
using mproc_test::with_method;

namespace {

using bytes = std::vector<std::byte>;

/// n bytes that differ for every (n, seed): a message out of place or torn shows.
bytes pattern(std::size_t n, unsigned seed) {
  bytes b(n);
  std::uint32_t x = seed * 2654435761u + std::uint32_t(n);
  for (auto& c : b) {
    x = x * 1664525u + 1013904223u;
    c = std::byte(x >> 24);
  }
  return b;
}

// Sizes at and around the ring's bounds, small ones between them.
// (constexpr: a spawned child runs before this file's dynamic initializers.)
constexpr std::size_t sizes[] = {
    d::ring_min_message - 1, d::ring_min_message, d::ring_min_message + 1, 64 * 1024, 0, 5,
    d::ring_max_message - 1, d::ring_max_message, d::ring_max_message + 1, 100 * 1024, 3 * 1024 * 1024,
    2 * d::ring_max_message, 5 * d::ring_max_message - 3};

/// How many mappings of a Connection ring this process holds.
int ring_mappings() {
  std::ifstream maps("/proc/self/maps");
  int n = 0;
  for (std::string line; std::getline(maps, line);) n += line.find("mproc-connection") != std::string::npos;
  return n;
}

void raw_write(int fd, const void* p, std::size_t n) {
  auto* c = static_cast<const char*>(p);
  while (n) {
    ssize_t w = ::write(fd, c, n);
    if (w < 0 && errno == EINTR) continue;
    REQUIRE(w > 0);
    c += w;
    n -= std::size_t(w);
  }
}

/// A control frame as a forger writes it, optionally with a descriptor.
void raw_control(int sock, std::uint64_t kind, std::uint64_t a, std::uint64_t b, std::uint64_t c, int fd = -1) {
  std::uint64_t f[4] = {kind, a, b, c};
  iovec iov{f, sizeof f};
  REQUIRE(d::send_with_fds(sock, &iov, 1, fd >= 0 ? std::span<const int>(&fd, 1) : std::span<const int>{}, 0) ==
          ssize_t(sizeof f));
}

/// Reads exactly n bytes with plain reads (a peer that is not a Connection);
/// descriptors that come along are handed to on_fd.
template <class OnFd>
void raw_read(int fd, void* p, std::size_t n, OnFd&& on_fd) {
  auto* c = static_cast<char*>(p);
  while (n) {
    ssize_t r = d::recv_with_fds(fd, c, n, 0, on_fd);
    REQUIRE(r > 0);
    c += r;
    n -= std::size_t(r);
  }
}

/// A ring made by hand, as a forging peer would: {memfd, control page, data}.
struct forged_ring {
  d::unique_fd fd;
  std::size_t cap;
  void* map = nullptr;
  forged_ring(std::size_t capacity, std::size_t file_size, bool sealed) : cap(capacity) {
    fd = sealed ? d::create_sealed_memfd(file_size, "forged")
                : d::unique_fd(::memfd_create("forged", MFD_CLOEXEC));
    REQUIRE(fd);
    if (!sealed) REQUIRE(::ftruncate(fd.get(), off_t(file_size)) == 0);
    map = ::mmap(nullptr, file_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
    REQUIRE(map != MAP_FAILED);
  }
  d::ring_control& control() const { return *static_cast<d::ring_control*>(map); }
  std::byte* data() const { return static_cast<std::byte*>(map) + d::page_size(); }
};

}  // namespace

TEST_CASE("messages of every size around the ring's bounds arrive whole and in order, between processes",
          "[connection][ring]") {
  auto method = MPROC_TEST_EACH_START_METHOD();
  INFO("start method " << mproc::to_string(method));
  mproc_test::ensure_init();
  const int before = ring_mappings();
  auto [rx, tx] = mproc::Pipe(false);
  mproc::Process p(
      with_method(method),
      [](mproc::Connection out) {
        // Enough rounds to wrap the ring many times; bytes, values and descriptors mixed.
        for (unsigned round = 0; round < 12; ++round) {
          for (std::size_t i = 0; i < std::size(sizes); ++i) {
            const unsigned seed = round * 100 + unsigned(i);
            out.send_bytes(pattern(sizes[i], seed));
            if (i % 4 == 0) out.send(std::vector<int>(sizes[i] / sizeof(int), int(seed)));
          }
          out.send_fd(1);
        }
      },
      tx);
  p.start();
  tx.close();
  bytes into(d::ring_max_message);
  for (unsigned round = 0; round < 12; ++round) {
    for (std::size_t i = 0; i < std::size(sizes); ++i) {
      const unsigned seed = round * 100 + unsigned(i);
      INFO("round " << round << ", size " << sizes[i]);
      if (sizes[i] <= into.size() && round % 2) {
        REQUIRE(rx.recv_bytes_into(into, 20s) == sizes[i]);
        REQUIRE(std::equal(into.begin(), into.begin() + std::ptrdiff_t(sizes[i]), pattern(sizes[i], seed).begin()));
      } else {
        REQUIRE(rx.recv_bytes(20s) == pattern(sizes[i], seed));
      }
      if (i % 4 == 0) REQUIRE(rx.recv<std::vector<int>>(20s) == std::vector<int>(sizes[i] / sizeof(int), int(seed)));
    }
    auto fd = rx.recv_fd(20s);
    CHECK(fd.get() >= 0);
  }
  CHECK_THROWS_AS(rx.recv_bytes(20s), mproc::eof_error);
  CHECK(mproc_test::join_process(p) == 0);
  // The receiver mapped the sender's ring (the large messages did not go through the socket).
  CHECK(ring_mappings() > before);
  rx.close();
  CHECK(ring_mappings() == before);
}

TEST_CASE("a receiver that starts late, or a peer that exits at once, loses nothing", "[connection][ring]") {
  mproc_test::ensure_init();
  auto [rx, tx] = mproc::Pipe(false);
  constexpr unsigned count = 200;  // 12.5 MiB: the ring and the socket fill many times over
  mproc::Process p([](mproc::Connection out) {
    for (unsigned i = 0; i < count; ++i) out.send_bytes(pattern(64 * 1024, i));
  }, tx);
  p.start();
  tx.close();
  std::this_thread::sleep_for(200ms);
  for (unsigned i = 0; i < count; ++i) REQUIRE(rx.recv_bytes(20s) == pattern(64 * 1024, i));
  CHECK_THROWS_AS(rx.recv_bytes(20s), mproc::eof_error);
  CHECK(mproc_test::join_process(p) == 0);
}

TEST_CASE("long messages to a receiver that starts late: ring pieces and inline pieces mixed, nothing lost",
          "[connection][ring]") {
  mproc_test::ensure_init();
  auto [rx, tx] = mproc::Pipe(false);
  constexpr unsigned count = 12;  // 3 MiB each: pieces find the ring full and go inline
  mproc::Process p([](mproc::Connection out) {
    for (unsigned i = 0; i < count; ++i) {
      out.send_bytes(pattern(3 << 20, i));
      out.send_bytes(pattern(40 * 1024, i));
      out.send(std::vector<int>(300'000, int(i)));
    }
  }, tx);
  p.start();
  tx.close();
  std::this_thread::sleep_for(200ms);
  for (unsigned i = 0; i < count; ++i) {
    REQUIRE(rx.recv_bytes(20s) == pattern(3 << 20, i));
    REQUIRE(rx.recv_bytes(20s) == pattern(40 * 1024, i));
    REQUIRE(rx.recv<std::vector<int>>(20s) == std::vector<int>(300'000, int(i)));
  }
  CHECK_THROWS_AS(rx.recv_bytes(20s), mproc::eof_error);
  CHECK(mproc_test::join_process(p) == 0);
}

TEST_CASE("limits, wrong types and short buffers on ring messages leave the stream in step", "[connection][ring]") {
  auto [a, b] = mproc::Pipe();
  const std::size_t n = 64 * 1024;
  a.send_bytes(pattern(n, 1));  // inline, with the ring's attach frame
  REQUIRE(b.recv_bytes() == pattern(n, 1));
  CHECK(ring_mappings() >= 2);  // the sender's and the receiver's

  for (int i = 0; i < 40; ++i) {  // each case many times: space must come back every time
    INFO("pass " << i);
    b.set_max_message_size(n - 1);
    a.send_bytes(pattern(n, 2));
    a.send_bytes(pattern(10, 3));
    CHECK_THROWS_WITH(b.recv_bytes(1s), Catch::Contains("exceeds the limit"));
    b.set_max_message_size(std::size_t(1) << 30);
    CHECK(b.recv_bytes(1s) == pattern(10, 3));

    a.send_bytes(pattern(n, 4));
    std::vector<std::byte> small(100);
    try {
      (void)b.recv_bytes_into(small, 1s);
      FAIL("no buffer_too_short");
    } catch (const mproc::buffer_too_short& e) {
      CHECK(e.message() == pattern(n, 4));
    }

    a.send(std::vector<int>(n / sizeof(int), 7));
    CHECK_THROWS_AS(b.recv<std::string>(1s), mproc::serialization_error);
    a.send(std::string(n, 'x'));
    CHECK(b.recv<std::string>(1s) == std::string(n, 'x'));
    CHECK_FALSE(b.poll());
  }

  // A waiting ring message makes poll() true, like any other.
  a.send_bytes(pattern(n, 5));
  CHECK(b.poll(1s));
  CHECK(b.recv_bytes(0s) == pattern(n, 5));
}

TEST_CASE("a send that times out leaves no part of a message behind", "[connection][ring]") {
  auto [a, b] = mproc::Pipe();
  const std::size_t n = 64 * 1024;
  a.send_bytes(pattern(n, 0));
  REQUIRE(b.recv_bytes() == pattern(n, 0));
  // Nobody reads: the ring, then the socket fill, and a send finally times out.
  unsigned sent = 0;
  for (;;) {
    try {
      a.send_bytes(pattern(n, sent + 1), 20ms);
      ++sent;
    } catch (const mproc::timeout_error&) {
      break;
    }
    REQUIRE(sent < 1000);
  }
  CHECK(sent >= d::ring_capacity / n - 1);
  for (unsigned i = 1; i <= sent; ++i) REQUIRE(b.recv_bytes(1s) == pattern(n, i));
  CHECK_FALSE(b.poll());
  // and the lane works on
  a.send_bytes(pattern(n, 999));
  CHECK(b.recv_bytes(1s) == pattern(n, 999));
}

TEST_CASE("processes sending on one end in turn: every message arrives, in order", "[connection][ring]") {
  auto [rx, tx] = mproc::Pipe(false);
  auto [go_a, go_b] = mproc::Pipe();
  constexpr std::size_t n = 48 * 1024;
  pid_t reader = d::fork_child([&rx = rx] {
    for (unsigned i = 0; i < 40; ++i)
      if (rx.recv_bytes(20s) != pattern(n, i)) return 1;
    return 0;
  });
  // Forked before this process made its ring: the child makes its own.
  pid_t early = d::fork_child([&go_b = go_b, &tx = tx] {
    (void)go_b.recv<int>();
    for (unsigned i = 10; i < 20; ++i) tx.send_bytes(pattern(n, i));
    go_b.send(1);
    return 0;
  });
  for (unsigned i = 0; i < 10; ++i) tx.send_bytes(pattern(n, i));
  go_a.send(1);
  REQUIRE(go_a.recv<int>(20s) == 1);
  // Forked after: the child shares this process's ring and goes on where it stopped.
  pid_t late = d::fork_child([&tx = tx] {
    for (unsigned i = 20; i < 30; ++i) tx.send_bytes(pattern(n, i));
    return 0;
  });
  CHECK(mproc_test::join_child(late) == 0);
  for (unsigned i = 30; i < 40; ++i) tx.send_bytes(pattern(n, i));
  CHECK(mproc_test::join_child(early) == 0);
  CHECK(mproc_test::join_child(reader) == 0);
}

TEST_CASE("a receiver maps a bounded number of rings; senders past it go inline and lose nothing",
          "[connection][ring]") {
  auto [rx, tx] = mproc::Pipe(false);
  auto [go_a, go_b] = mproc::Pipe();
  constexpr std::size_t n = 40 * 1024;
  const int before = ring_mappings();
  int per_ring = 0;
  const unsigned senders = d::ring_max_attached + 3;
  for (unsigned k = 0; k < senders; ++k) {
    INFO("sender " << k);
    // Each forked before any ring exists in this process's ends: each makes its own.
    pid_t pid = d::fork_child([&go_b = go_b, &tx = tx, k] {
      tx.send_bytes(pattern(n, k * 10));  // inline, announcing the ring
      (void)go_b.recv<int>();             // the receiver has mapped it, or refused to
      for (unsigned i = 1; i < 5; ++i) tx.send_bytes(pattern(n, k * 10 + i));
      return 0;
    });
    REQUIRE(rx.recv_bytes(20s) == pattern(n, k * 10));
    go_a.send(1);
    for (unsigned i = 1; i < 5; ++i) REQUIRE(rx.recv_bytes(20s) == pattern(n, k * 10 + i));
    REQUIRE(mproc_test::join_child(pid) == 0);
    if (k == 0) per_ring = ring_mappings() - before;
  }
  CHECK(per_ring > 0);
  CHECK(ring_mappings() - before == per_ring * int(d::ring_max_attached));
}

TEST_CASE("ends handed to spawned children keep the messages waiting in their rings", "[connection][ring]") {
  auto method = MPROC_TEST_EACH_START_METHOD();
  INFO("start method " << mproc::to_string(method));
  mproc_test::ensure_init();
  auto [a, b] = mproc::Pipe();
  const std::size_t n = 64 * 1024;
  a.send_bytes(pattern(n, 0));
  REQUIRE(b.recv_bytes() == pattern(n, 0));  // the ring is attached
  for (unsigned i = 1; i <= 4; ++i) a.send_bytes(pattern(n, i));  // through the ring, unread here
  auto [res_a, res_b] = mproc::Pipe();
  mproc::Process reader(
      with_method(method),
      [](mproc::Connection in, mproc::Connection result) {
        bool ok = true;
        for (unsigned i = 1; i <= 8; ++i) ok = ok && in.recv_bytes(20s) == pattern(64 * 1024, i);
        result.send(ok);
      },
      b, res_b);
  mproc::Process writer(
      with_method(method),
      [](mproc::Connection out) {
        for (unsigned i = 5; i <= 8; ++i) out.send_bytes(pattern(64 * 1024, i));
      },
      a);
  reader.start();
  writer.start();
  CHECK(mproc_test::join_process(writer) == 0);
  CHECK(res_a.recv<bool>(30s));
  CHECK(mproc_test::join_process(reader) == 0);
}

TEST_CASE("forged control frames are refused without harm and the stream stays in step", "[connection][ring]") {
  auto [a, b] = mproc::Pipe();
  const int w = a.fileno();
  const std::uint64_t cap = d::ring_capacity;

  // A message in a ring nobody attached; a kind nobody knows.
  raw_control(w, d::ring_message_frame, 42, 0, 10);
  a.send(1);
  CHECK_THROWS_WITH(b.recv_bytes(1s), Catch::Contains("never attached"));
  CHECK(b.recv<int>(1s) == 1);
  raw_control(w, d::control_frame_bit | 77, 0, 0, 0);
  a.send(2);
  CHECK_THROWS_WITH(b.recv<int>(1s), Catch::Contains("unknown control frame"));
  CHECK(b.recv<int>(1s) == 2);

  // Attach frames the receiver must not map: no descriptor, not a memfd, not sealed,
  // sealed but shorter than announced, a capacity that is no whole number of pages or
  // is too large. Each is ignored, and a message naming it is refused.
  auto [pr, pw] = d::make_pipe(O_CLOEXEC);
  forged_ring unsealed(cap, d::page_size() + cap, false);
  forged_ring short_file(cap, d::page_size() + cap / 2, true);
  forged_ring odd(cap, d::page_size() + cap, true);
  forged_ring huge(cap, d::page_size() + cap, true);
  raw_control(w, d::ring_attach_frame, 1, cap, 0);
  raw_control(w, d::ring_attach_frame, 2, cap, 0, pr.get());
  raw_control(w, d::ring_attach_frame, 3, cap, 0, unsealed.fd.get());
  raw_control(w, d::ring_attach_frame, 4, cap, 0, short_file.fd.get());
  raw_control(w, d::ring_attach_frame, 5, cap - 1, 0, odd.fd.get());
  raw_control(w, d::ring_attach_frame, 6, d::ring_max_capacity * 2, 0, huge.fd.get());
  for (std::uint64_t id = 1; id <= 6; ++id) {
    raw_control(w, d::ring_message_frame, id, 0, 10);
    CHECK_THROWS_WITH(b.recv_bytes(1s), Catch::Contains("never attached"));
  }
  a.send(3);
  CHECK(b.recv<int>(1s) == 3);
  CHECK(unsealed.control().attached.load() == 0);

  // A proper ring, then messages outside it or out of turn, then a true one.
  forged_ring good(cap, d::page_size() + cap, true);
  raw_control(w, d::ring_attach_frame, 7, cap, 0, good.fd.get());
  raw_control(w, d::ring_message_frame, 7, 0, cap + 1);
  raw_control(w, d::ring_message_frame, 7, 5, 10);
  CHECK_THROWS_WITH(b.recv_bytes(1s), Catch::Contains("outside its ring or out of order"));
  CHECK_THROWS_WITH(b.recv_bytes(1s), Catch::Contains("outside its ring or out of order"));
  CHECK(good.control().attached.load() == 1);
  // At the ring's very end: the message wraps, and reads whole through the double mapping.
  good.control().consumed = cap - 4;
  std::memcpy(good.data() + cap - 4, "abcd", 4);
  std::memcpy(good.data(), "efghij", 6);
  raw_control(w, d::ring_message_frame, 7, cap - 4, 10);
  auto m = b.recv_bytes(1s);
  CHECK(std::string(reinterpret_cast<const char*>(m.data()), m.size()) == "abcdefghij");
  CHECK(good.control().consumed.load() == cap + 6);

  // A control frame that arrives in pieces across timeouts.
  std::uint64_t f[4] = {d::ring_message_frame, 7, cap + 6, 3};
  std::memcpy(good.data() + 6, "xyz", 3);
  raw_write(w, f, 5);
  CHECK_THROWS_AS(b.recv_bytes(20ms), mproc::timeout_error);
  raw_write(w, reinterpret_cast<char*>(f) + 5, 14);
  CHECK_THROWS_AS(b.recv_bytes(20ms), mproc::timeout_error);
  raw_write(w, reinterpret_cast<char*>(f) + 19, sizeof f - 19);
  m = b.recv_bytes(1s);
  CHECK(std::string(reinterpret_cast<const char*>(m.data()), m.size()) == "xyz");
}

TEST_CASE("forged streamed messages: pieces across timeouts, over the limit, malformed", "[connection][ring]") {
  auto [a, b] = mproc::Pipe();
  const int w = a.fileno();
  const std::uint64_t cap = d::ring_capacity;
  forged_ring ring(cap, d::page_size() + cap, true);
  raw_control(w, d::ring_attach_frame, 9, cap, 0, ring.fd.get());
  a.send(0);
  REQUIRE(b.recv<int>(1s) == 0);
  REQUIRE(ring.control().attached.load() == 1);
  std::uint64_t pos = 0;
  // Writes `n` bytes of `src` as a ring piece.
  auto ring_piece = [&](const std::byte* src, std::size_t n) {
    std::memcpy(ring.data() + pos % cap, src, std::min<std::size_t>(n, cap - pos % cap));
    if (pos % cap + n > cap) std::memcpy(ring.data(), src + (cap - pos % cap), n - (cap - pos % cap));
    raw_control(w, d::ring_message_frame, 9, pos, n);
    pos += n;
  };
  auto inline_head = [&](std::size_t n) { raw_control(w, d::inline_piece_frame, n, 0, 0); };

  for (int into = 0; into < 2; ++into) {
    INFO((into ? "recv_bytes_into" : "recv_bytes"));
    // ring piece, inline piece cut by timeouts (in its frame and in its bytes), ring piece
    const bytes msg = pattern(700 * 1024, 5 + into);
    raw_control(w, d::ring_stream_frame, 9, msg.size(), 0);
    ring_piece(msg.data(), 200 * 1024);
    std::uint64_t f[4] = {d::inline_piece_frame, 300 * 1024, 0, 0};
    raw_write(w, f, 13);
    bytes buf(msg.size() + 10);
    auto recv = [&](std::chrono::milliseconds t) {
      return into ? bytes(buf.begin(), buf.begin() + std::ptrdiff_t(b.recv_bytes_into(buf, t))) : b.recv_bytes(t);
    };
    CHECK_THROWS_AS(recv(20ms), mproc::timeout_error);
    raw_write(w, reinterpret_cast<char*>(f) + 13, sizeof f - 13);
    raw_write(w, msg.data() + 200 * 1024, 100 * 1024);
    CHECK_THROWS_AS(recv(20ms), mproc::timeout_error);
    raw_write(w, msg.data() + 300 * 1024, 200 * 1024);
    ring_piece(msg.data() + 500 * 1024, 200 * 1024);
    CHECK(recv(1s) == msg);
    CHECK(ring.control().consumed.load() == pos);
  }

  // Over the limit: every piece is dropped (the ring's given back), the stream stays in step.
  b.set_max_message_size(100 * 1024);
  const bytes big = pattern(300 * 1024, 7);
  raw_control(w, d::ring_stream_frame, 9, big.size(), 0);
  CHECK_THROWS_WITH(b.recv_bytes(1s), Catch::Contains("exceeds the limit"));
  ring_piece(big.data(), 100 * 1024);
  inline_head(150 * 1024);
  raw_write(w, big.data() + 100 * 1024, 150 * 1024);
  ring_piece(big.data() + 250 * 1024, 50 * 1024);
  a.send(1);
  CHECK(b.recv<int>(1s) == 1);
  CHECK(ring.control().consumed.load() == pos);
  b.set_max_message_size(std::size_t(1) << 30);

  // Malformed: a piece longer than what is left, of another ring, of length zero, of
  // another kind; a piece outside any message; a stream naming no ring.
  for (int k = 0; k < 4; ++k) {
    INFO("malformed " << k);
    raw_control(w, d::ring_stream_frame, 9, 1000, 0);
    if (k == 0) inline_head(1001);
    if (k == 1) raw_control(w, d::ring_message_frame, 10, pos, 10);
    if (k == 2) inline_head(0);
    if (k == 3) raw_control(w, d::ring_attach_frame, 9, cap, 0);
    CHECK_THROWS_WITH(b.recv_bytes(1s), Catch::Contains("malformed"));
    a.send(2);
    CHECK(b.recv<int>(1s) == 2);
  }
  inline_head(10);
  CHECK_THROWS_WITH(b.recv_bytes(1s), Catch::Contains("outside one"));
  raw_control(w, d::ring_stream_frame, 77, 1000, 0);
  CHECK_THROWS_WITH(b.recv_bytes(1s), Catch::Contains("never attached"));
  a.send(3);
  CHECK(b.recv<int>(1s) == 3);
}

TEST_CASE("an announced streamed message or piece buys no memory: only arrived bytes do", "[connection][ring]") {
  constexpr int peers = 8;
  const std::uint64_t cap = d::ring_capacity;
  std::vector<std::pair<mproc::Connection, mproc::Connection>> pipes;
  std::vector<std::unique_ptr<forged_ring>> rings;
  for (int i = 0; i < peers; ++i) {
    pipes.push_back(mproc::Pipe());
    rings.push_back(std::make_unique<forged_ring>(cap, d::page_size() + cap, true));
    raw_control(pipes.back().first.fileno(), d::ring_attach_frame, 1, cap, 0, rings.back()->fd.get());
    pipes.back().first.send(0);
    REQUIRE(pipes.back().second.recv<int>(1s) == 0);
  }
  auto held = [] {
    struct mallinfo2 mi = ::mallinfo2();
    return mi.uordblks + mi.hblkhd;
  };
  const std::size_t before = held();
  const std::uint64_t announced = std::uint64_t(1) << 30;
  for (int i = 0; i < peers; ++i) {
    auto& [w, r] = pipes[std::size_t(i)];
    raw_control(w.fileno(), d::ring_stream_frame, 1, announced, 0);
    raw_control(w.fileno(), d::inline_piece_frame, announced, 0, 0);
    if (i % 2) {  // half the peers send 100 KB of it
      std::vector<char> part(100'000, 'x');
      raw_write(w.fileno(), part.data(), part.size());
    }
    CHECK_THROWS_AS(r.recv_bytes(50ms), mproc::timeout_error);
  }
  const std::size_t grown = held() - std::min(held(), before);
  CHECK(grown < std::size_t(8) << 20);  // 8 GiB were announced
}

TEST_CASE("a sender keeps sending inline to a receiver that never maps its ring or lies about it",
          "[connection][ring]") {
  auto [a, b] = mproc::Pipe();
  const int r = b.fileno();  // read by hand: b is never used as a Connection
  const std::size_t n = 32 * 1024;
  std::vector<d::unique_fd> fds;
  auto keep = [&](int fd) { fds.emplace_back(fd); };
  std::uint64_t hdr;
  // Reads the next frame: returns its body for an inline one, or the control body.
  auto next = [&](std::uint64_t (&ctl)[3]) -> bytes {
    raw_read(r, &hdr, sizeof hdr, keep);
    if (hdr & d::control_frame_bit) {
      raw_read(r, ctl, sizeof ctl, keep);
      return {};
    }
    bytes body(hdr);
    raw_read(r, body.data(), body.size(), keep);
    return body;
  };
  std::uint64_t ctl[3];
  a.send_bytes(pattern(n, 0));
  CHECK(next(ctl).empty());
  REQUIRE(hdr == d::ring_attach_frame);
  REQUIRE(fds.size() == 1);
  CHECK(next(ctl) == pattern(n, 0));
  // Not attached: every message inline.
  for (unsigned i = 1; i <= 5; ++i) {
    a.send_bytes(pattern(n, i));
    REQUIRE(next(ctl) == pattern(n, i));
  }
  // Attached, but the counters lie (more consumed than ever produced): inline still.
  auto ring = d::shared_ring::adopt(std::move(fds[0]), ctl[0], ctl[1]);
  REQUIRE(ring);
  ring->control().attached = 1;
  ring->control().consumed = 1u << 30;
  for (unsigned i = 6; i <= 8; ++i) {
    a.send_bytes(pattern(n, i));
    REQUIRE(next(ctl) == pattern(n, i));
  }
  // Honest again: the messages come through the ring.
  ring->control().consumed = ring->control().produced.load();
  for (unsigned i = 9; i <= 60; ++i) {
    a.send_bytes(pattern(n, i));
    REQUIRE(next(ctl).empty());
    REQUIRE(hdr == d::ring_message_frame);
    REQUIRE(ctl[0] == ring->id());
    REQUIRE(ctl[2] == n);
    REQUIRE(bytes(ring->at(ctl[1]), ring->at(ctl[1]) + n) == pattern(n, i));
    ring->control().consumed = ctl[1] + n;
  }
  // A long message: announced, then in pieces of at most ring_max_message; through the
  // ring while the receiver frees it, inline once it lies again. (Sent from a thread:
  // inline pieces fill the socket.)
  for (int lie = 0; lie < 2; ++lie) {
    INFO((lie ? "lying receiver" : "honest receiver"));
    const bytes msg = pattern(700 * 1024 + 3, 100 + unsigned(lie));
    if (lie) ring->control().consumed = 0;
    std::thread sender([&a = a, &msg] { a.send_bytes(msg); });
    CHECK(next(ctl).empty());
    REQUIRE(hdr == d::ring_stream_frame);
    REQUIRE(ctl[1] == msg.size());
    bytes got;
    int ring_pieces = 0;
    while (got.size() < msg.size()) {
      bytes body = next(ctl);
      REQUIRE((hdr == d::ring_message_frame || hdr == d::inline_piece_frame));
      if (hdr == d::ring_message_frame) {
        ++ring_pieces;
        REQUIRE(ctl[2] <= d::ring_max_message);
        got.insert(got.end(), ring->at(ctl[1]), ring->at(ctl[1]) + ctl[2]);
        ring->control().consumed = ctl[1] + ctl[2];
      } else {
        REQUIRE(ctl[0] <= d::ring_max_message);
        bytes piece(ctl[0]);
        raw_read(r, piece.data(), piece.size(), keep);
        got.insert(got.end(), piece.begin(), piece.end());
      }
    }
    sender.join();
    CHECK(got == msg);
    CHECK(ring_pieces == (lie ? 0 : 3));
  }
}

TEST_CASE("rings leave no descriptor and no mapping behind", "[connection][ring]") {
  const std::size_t fds_before = count_fds();
  const int maps_before = ring_mappings();
  {
    auto [a, b] = mproc::Pipe();
    for (unsigned i = 0; i < 20; ++i) {
      a.send_bytes(pattern(100 * 1024, i));
      b.send_bytes(pattern(100 * 1024, i + 1));
      REQUIRE(b.recv_bytes(1s) == pattern(100 * 1024, i));
      REQUIRE(a.recv_bytes(1s) == pattern(100 * 1024, i + 1));
    }
    CHECK(ring_mappings() > maps_before);  // a ring each way, mapped by its sender and its receiver
  }
  CHECK(count_fds() == fds_before);
  CHECK(ring_mappings() == maps_before);
}
