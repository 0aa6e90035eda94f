// mproc::Pipe / mproc::Connection: values, errors, framing under stress, descriptors;
// the cases with a peer process run under every start method.
#include <catch2/catch.hpp>

#include "spawn_entry.hpp"
#include "test_support.hpp"

#include <array>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <dirent.h>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <tuple>
#include <variant>
#include <vector>

#include <malloc.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/serialization/vector.hpp>

#include <mproc/connection.hpp>
#include <mproc/process.hpp>
#include <mproc/serialization/boost.hpp>  // types with a Boost serialize()

using namespace std::chrono_literals;

using mproc_test::count_fds;
using mproc_test::with_method;

namespace {

struct point {
  int x = 0;
  std::string label;
  std::vector<double> samples;
  template <class Archive>
  void serialize(Archive& ar, unsigned) {
    ar & x & label & samples;
  }
  bool operator==(const point&) const = default;
};

/// Writes all of [p, p+n) with plain write() calls (a peer that is not an mproc Connection).
void raw_write(int fd, const void* p, std::size_t n) {
  auto* c = static_cast<const char*>(p);
  while (n) {
    ssize_t w = ::write(fd, c, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) std::_Exit(90);
    c += w;
    n -= std::size_t(w);
  }
}

void join_or_kill(mproc::Process& p) { (void)mproc_test::join_process(p, 60s); }

std::atomic<int> g_signals{0};
void count_signal(int) { ++g_signals; }

}  // namespace

TEST_CASE("values of many types round-trip", "[connection]") {
  auto [a, b] = mproc::Pipe();
  a.send(42);
  CHECK(b.recv<int>() == 42);
  a.send(3.5);
  CHECK(b.recv<double>() == 3.5);
  a.send(true);
  CHECK(b.recv<bool>() == true);
  a.send("literal");
  CHECK(b.recv<std::string>() == "literal");
  const char* cstr = "c string";
  a.send(cstr);
  CHECK(b.recv<std::string>() == "c string");
  a.send(std::tuple{"add", 10, 5});
  CHECK(b.recv<std::tuple<std::string, int, int>>() == std::tuple<std::string, int, int>{"add", 10, 5});
  a.send(std::vector<int>{1, 2, 3});
  CHECK(b.recv<std::vector<int>>() == std::vector<int>{1, 2, 3});
  a.send(std::vector<int>{});
  CHECK(b.recv<std::vector<int>>().empty());
  std::map<std::string, std::vector<double>> m{{"a", {1.0}}, {"b", {2.0, 3.0}}};
  a.send(m);
  CHECK(b.recv<decltype(m)>() == m);
  a.send(std::optional<std::string>{});
  CHECK_FALSE(b.recv<std::optional<std::string>>().has_value());
  std::variant<int, std::string> v = std::string("alt");
  a.send(v);
  CHECK(b.recv<std::variant<int, std::string>>() == v);
  a.send(std::pair{1, std::string("x")});
  CHECK(b.recv<std::pair<int, std::string>>() == std::pair{1, std::string("x")});
  a.send(250ms);
  CHECK(b.recv<std::chrono::milliseconds>() == 250ms);
  a.send(std::array<int, 3>{7, 8, 9});
  CHECK(b.recv<std::array<int, 3>>() == std::array<int, 3>{7, 8, 9});
  point p{3, "pt", {0.5, 1.5}};
  a.send(p);
  CHECK(b.recv<point>() == p);
  // duplex: the other direction too
  b.send(std::string(100000, 'z'));
  CHECK(a.recv<std::string>() == std::string(100000, 'z'));
}

TEST_CASE("a message of another type raises serialization_error naming both; the connection "
          "stays usable",
          "[connection]") {
  auto [a, b] = mproc::Pipe();
  a.send(std::string("text"));
  a.send(5);
  try {
    (void)b.recv<int>();
    FAIL("no exception");
  } catch (const mproc::serialization_error& e) {
    std::string what = e.what();
    CHECK_THAT(what, Catch::Contains("int"));
    CHECK_THAT(what, Catch::Contains("std::__cxx11::basic_string") || Catch::Contains("std::string"));
  }
  CHECK(b.recv<int>() == 5);
  // raw bytes carry no type tag
  a.send_bytes(std::string_view("abc"));
  CHECK_THROWS_AS(b.recv<std::vector<int>>(), mproc::serialization_error);
  a.send(6);
  CHECK(b.recv<int>() == 6);
}

TEST_CASE("send_bytes / recv_bytes", "[connection]") {
  auto [a, b] = mproc::Pipe();
  a.send_bytes("abc");  // a literal is its characters, without the terminating NUL
  CHECK(b.recv_bytes().size() == 3);
  std::string s = "hello";
  a.send_bytes(s);
  auto got = b.recv_bytes();
  CHECK(std::string(reinterpret_cast<const char*>(got.data()), got.size()) == "hello");
  std::vector<unsigned char> u{1, 2, 255};
  a.send_bytes(u);
  auto gu = b.recv_bytes();
  REQUIRE(gu.size() == 3);
  CHECK(gu[2] == std::byte{255});
  std::vector<std::byte> bytes(70000, std::byte{7});
  a.send_bytes(std::span<const std::byte>(bytes));
  CHECK(b.recv_bytes() == bytes);
  a.send_bytes(std::span<const std::byte>());
  CHECK(b.recv_bytes().empty());
  a.send_bytes(std::span<const std::byte>(bytes), 1s);
  CHECK(b.recv_bytes(1s) == bytes);
}

TEST_CASE("eof after the peer closes, also when the peer is a process that exited",
          "[connection]") {
  auto method = MPROC_TEST_EACH_START_METHOD();
  INFO("start method " << mproc::to_string(method));
  mproc_test::ensure_init();
  {
    auto [a, b] = mproc::Pipe();
    a.send(1);
    a.close();
    CHECK(a.closed());
    CHECK(b.recv<int>() == 1);  // what was sent before the close still arrives
    CHECK(b.poll());            // EOF is "something to receive"
    CHECK_THROWS_AS(b.recv<int>(), mproc::eof_error);
    CHECK_THROWS_AS(b.recv_bytes(1s), mproc::eof_error);
  }
  {
    auto [a, b] = mproc::Pipe();
    mproc::Process p(with_method(method), [](mproc::Connection c) { c.send(std::string("bye")); }, b);
    p.start();
    b.close();  // the parent's copy: afterwards only the child holds that end
    CHECK(a.recv<std::string>(10s) == "bye");
    CHECK_THROWS_AS(a.recv<std::string>(10s), mproc::eof_error);
    join_or_kill(p);
    CHECK(p.exitcode() == 0);
  }
}

TEST_CASE("a peer that dies in the middle of a message gives eof_error", "[connection]") {
  auto method = MPROC_TEST_EACH_START_METHOD();
  INFO("start method " << mproc::to_string(method));
  mproc_test::ensure_init();
  auto [a, b] = mproc::Pipe();
  mproc::Process p(
      with_method(method), [](mproc::Connection c) {
        std::uint64_t len = 1000;
        raw_write(c.fileno(), &len, sizeof len);
        raw_write(c.fileno(), "partial", 7);
        ::_exit(0);
      },
      b);
  p.start();
  b.close();
  CHECK_THROWS_WITH(a.recv_bytes(10s), Catch::Contains("in the middle of a message"));
  join_or_kill(p);
}

TEST_CASE("sending to a closed peer raises eof_error and never SIGPIPE", "[connection]") {
  auto old = std::signal(SIGPIPE, SIG_DFL);
  {
    auto [a, b] = mproc::Pipe();
    b.close();
    CHECK_THROWS_AS(a.send(1), mproc::eof_error);
    CHECK_THROWS_AS(a.send_bytes(std::string_view("x")), mproc::eof_error);
    CHECK_THROWS_AS(a.send(std::string(1 << 20, 'x')), mproc::eof_error);
  }
  {
    auto [rx, tx] = mproc::Pipe(false);
    rx.close();
    CHECK_THROWS_AS(tx.send(1), mproc::eof_error);
  }
  std::signal(SIGPIPE, old);
}

TEST_CASE("timeouts and poll", "[connection]") {
  auto [a, b] = mproc::Pipe();
  CHECK_FALSE(b.poll());
  CHECK_FALSE(b.poll(20ms));
  CHECK_THROWS_AS(b.recv<int>(30ms), mproc::timeout_error);
  CHECK_THROWS_AS(b.recv_bytes(std::chrono::duration<double>(0.01)), mproc::timeout_error);
  CHECK_THROWS_AS(b.recv<int>(0ms), mproc::timeout_error);
  a.send(9);
  CHECK(b.poll(std::chrono::hours::max()));  // "forever", not an overflowed deadline
  CHECK(b.poll());
  CHECK(b.poll(1s));
  CHECK(b.recv<int>(1s) == 9);

  // A message that is half there when the timeout passes is completed by a later call.
  std::vector<std::byte> payload(10);
  for (int i = 0; i < 10; ++i) payload[i] = std::byte(i);
  std::uint64_t len = payload.size();
  raw_write(a.fileno(), &len, 5);
  CHECK_THROWS_AS(b.recv_bytes(30ms), mproc::timeout_error);
  raw_write(a.fileno(), reinterpret_cast<char*>(&len) + 5, 3);
  raw_write(a.fileno(), payload.data(), 4);
  CHECK_THROWS_AS(b.recv_bytes(30ms), mproc::timeout_error);
  raw_write(a.fileno(), payload.data() + 4, 6);
  CHECK(b.recv_bytes(1s) == payload);

  // send with a timeout when the peer never reads: times out before writing anything.
  std::string big(64 * 1024, 'x');
  int sent = 0;
  bool timed_out = false;
  for (; sent < 1000 && !timed_out; ++sent) {
    try {
      a.send(big, 20ms);
    } catch (const mproc::timeout_error&) {
      timed_out = true;
    }
  }
  CHECK(timed_out);
  for (int i = 0; i < sent - 1; ++i) CHECK(b.recv<std::string>(1s).size() == big.size());
  CHECK_FALSE(b.poll());  // the timed-out send left nothing behind
}

TEST_CASE("one-way pipes and handle semantics", "[connection]") {
  auto [rx, tx] = mproc::Pipe(false);
  CHECK(rx.readable());
  CHECK_FALSE(rx.writable());
  CHECK(tx.writable());
  CHECK_FALSE(tx.readable());
  CHECK_THROWS_AS(rx.send(1), mproc::state_error);
  CHECK_THROWS_AS(tx.recv<int>(), mproc::state_error);
  CHECK_THROWS_AS(tx.poll(), mproc::state_error);
  tx.send(std::string("one way"));
  CHECK(rx.recv<std::string>() == "one way");

  mproc::Connection copy = rx;
  CHECK(copy.fileno() == rx.fileno());
  copy.close();
  CHECK(rx.closed());
  CHECK_THROWS_AS(rx.recv<int>(), mproc::state_error);
  CHECK_THROWS_AS(rx.fileno(), mproc::state_error);
  mproc::Connection empty;
  CHECK(empty.closed());
  CHECK_THROWS_AS(empty.send(1), mproc::state_error);
}

TEST_CASE("oversized messages are refused without allocating and skipped", "[connection]") {
  auto [a, b] = mproc::Pipe(true, {.max_message_size = 1024});
  CHECK(b.max_message_size() == 1024);
  a.send(std::string(2000, 'x'));
  a.send(7);
  CHECK_THROWS_WITH(b.recv<std::string>(), Catch::Contains("exceeds the limit of 1024"));
  CHECK(b.recv<int>() == 7);  // the refused message was skipped, the stream is in sync

  // A hostile header claiming 2^62 bytes: refused at once.
  auto [c, d] = mproc::Pipe();
  std::uint64_t huge = std::uint64_t(1) << 62;
  raw_write(c.fileno(), &huge, sizeof huge);
  CHECK_THROWS_AS(d.recv_bytes(1s), mproc::serialization_error);
}

namespace {
/// Bytes this process holds from malloc (heap and mmapped chunks).
std::size_t malloc_held() {
  struct mallinfo2 mi = ::mallinfo2();
  return mi.uordblks + mi.hblkhd;
}
}  // namespace

TEST_CASE("an announced frame length buys no memory: only arrived bytes do", "[connection]") {
  // Peers announcing 1 GiB (under the cap) and then sending nothing, or sending a
  // little: the receiver's memory follows what arrived, not what was announced.
  constexpr int peers = 16;
  std::vector<std::pair<mproc::Connection, mproc::Connection>> pipes;
  for (int i = 0; i < peers; ++i) pipes.push_back(mproc::Pipe());
  const std::size_t before = malloc_held();
  const std::uint64_t announced = std::uint64_t(1) << 30;
  for (int i = 0; i < peers; ++i) {
    auto& [w, r] = pipes[std::size_t(i)];
    raw_write(w.fileno(), &announced, sizeof announced);
    // Half the peers also send 100 KB of the body.
    if (i % 2) {
      std::vector<char> part(100'000, 'x');
      raw_write(w.fileno(), part.data(), part.size());
    }
    CHECK_THROWS_AS(r.recv_bytes(50ms), mproc::timeout_error);
  }
  const std::size_t grown = malloc_held() - std::min(malloc_held(), before);
  // 8 peers sent 100 KB each: at most twice that per peer (doubling), plus for every
  // peer its read-ahead buffer and the 128 KiB a body gets at once; 16 GiB were announced.
  CHECK(grown < std::size_t(8) << 20);

  // A body that arrives in parts, with timeouts between them, is still delivered
  // whole and exact.
  auto [w, r] = mproc::Pipe();
  std::vector<std::byte> body(3'000'000);
  for (std::size_t i = 0; i < body.size(); ++i) body[i] = std::byte(i * 131 % 251);
  std::uint64_t len = body.size();
  raw_write(w.fileno(), &len, sizeof len);
  raw_write(w.fileno(), body.data(), 40'000);
  CHECK_THROWS_AS(r.recv_bytes(20ms), mproc::timeout_error);
  std::thread rest([&] { raw_write(w.fileno(), body.data() + 40'000, body.size() - 40'000); });
  CHECK(r.recv_bytes(10s) == body);
  rest.join();
}

TEST_CASE("a 256 MiB message gets through both ways", "[connection][large]") {
  auto method = MPROC_TEST_EACH_START_METHOD();
  INFO("start method " << mproc::to_string(method));
  mproc_test::ensure_init();
  constexpr std::size_t size = std::size_t(256) << 20;
  auto [a, b] = mproc::Pipe();
  mproc::Process p(
      with_method(method), [](mproc::Connection c) {
        std::vector<std::uint8_t> v(size);
        for (std::size_t i = 0; i < size; i += 4096) v[i] = std::uint8_t(i >> 12);
        v.back() = 0xAB;
        c.send(v);
        // and receive one back as raw bytes, reporting what arrived
        auto bytes = c.recv_bytes(60s);
        std::uint64_t sum = 0;
        for (std::size_t i = 0; i < bytes.size(); i += 4096) sum += std::to_integer<unsigned>(bytes[i]);
        c.send(std::pair<std::uint64_t, std::uint64_t>{bytes.size(), sum});
      },
      b);
  p.start();
  {
    auto v = a.recv<std::vector<std::uint8_t>>(60s);
    REQUIRE(v.size() == size);
    bool ok = v.back() == 0xAB;
    for (std::size_t i = 0; i < size; i += 4096) ok &= v[i] == std::uint8_t(i >> 12);
    CHECK(ok);
  }
  std::uint64_t expect = 0;
  {
    std::vector<std::byte> out(size, std::byte{3});
    for (std::size_t i = 0; i < size; i += 4096) expect += 3;
    a.send_bytes(std::span<const std::byte>(out));
  }
  auto [n, sum] = a.recv<std::pair<std::uint64_t, std::uint64_t>>(60s);
  CHECK(n == size);
  CHECK(sum == expect);
  join_or_kill(p);
  CHECK(p.exitcode() == 0);
}

TEST_CASE("a message written a byte at a time by another process arrives whole",
          "[connection]") {
  auto method = MPROC_TEST_EACH_START_METHOD();
  INFO("start method " << mproc::to_string(method));
  mproc_test::ensure_init();
  auto [a, b] = mproc::Pipe();
  mproc::Process p(
      with_method(method), [](mproc::Connection c) {
        std::string text(3000, 'q');
        for (std::size_t i = 0; i < text.size(); ++i) text[i] = char('a' + i % 26);
        std::vector<std::byte> frame(8 + mproc::detail::message_size(text));
        std::uint64_t len = frame.size() - 8;
        std::memcpy(frame.data(), &len, 8);
        mproc::detail::write_message(text, frame.data() + 8);
        for (int round = 0; round < 3; ++round)
          for (auto byte : frame) raw_write(c.fileno(), &byte, 1);
      },
      b);
  p.start();
  for (int round = 0; round < 3; ++round) {
    auto s = a.recv<std::string>(30s);
    REQUIRE(s.size() == 3000);
    CHECK(s[0] == 'a');
    CHECK(s[2999] == char('a' + 2999 % 26));
  }
  join_or_kill(p);
}

TEST_CASE("a signal without SA_RESTART during a blocking recv is retried, not an error",
          "[connection]") {
  auto method = MPROC_TEST_EACH_START_METHOD();
  INFO("start method " << mproc::to_string(method));
  mproc_test::ensure_init();
  struct sigaction sa {}, old{};
  sa.sa_handler = count_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: the blocked recvmsg/ppoll returns EINTR
  REQUIRE(::sigaction(SIGUSR1, &sa, &old) == 0);
  g_signals = 0;
  auto [a, b] = mproc::Pipe();
  pid_t parent = ::getpid();
  mproc::Process p(
      with_method(method), [](mproc::Connection c, pid_t parent) {
        for (int i = 0; i < 3; ++i) {
          std::this_thread::sleep_for(50ms);
          ::kill(parent, SIGUSR1);
        }
        std::this_thread::sleep_for(50ms);
        c.send(11);
        for (int i = 0; i < 3; ++i) {
          std::this_thread::sleep_for(50ms);
          ::kill(parent, SIGUSR1);
        }
        std::this_thread::sleep_for(50ms);
        c.send(12);
      },
      b, parent);
  p.start();
  int first = a.recv<int>();     // blocking recvmsg
  int second = a.recv<int>(30s);  // ppoll with a deadline
  join_or_kill(p);
  ::sigaction(SIGUSR1, &old, nullptr);
  CHECK(first == 11);
  CHECK(second == 12);
  CHECK(g_signals == 6);
}

TEST_CASE("file descriptors pass between processes", "[connection]") {
  auto method = MPROC_TEST_EACH_START_METHOD();
  INFO("start method " << mproc::to_string(method));
  mproc_test::ensure_init();
  auto [a, b] = mproc::Pipe();
  int mfd = ::memfd_create("conn-test", MFD_CLOEXEC);
  REQUIRE(mfd >= 0);
  mproc::Process p(
      with_method(method), [](mproc::Connection c) {
        auto fd = c.recv_fd(10s);
        raw_write(fd.get(), "from child", 10);
        c.send(fd.get() >= 0);
      },
      b);
  p.start();
  a.send_fd(mfd);
  CHECK(a.recv<bool>(10s));
  join_or_kill(p);
  char buf[16] = {};
  CHECK(::pread(mfd, buf, 10, 0) == 10);
  CHECK(std::string(buf) == "from child");

  // in-process, with ordinary messages around it
  a.send(1);
  a.send_fd(mfd);
  a.send(2);
  CHECK(b.recv<int>() == 1);
  auto got = b.recv_fd(1s);
  CHECK(got.get() != mfd);
  CHECK((::fcntl(got.get(), F_GETFD) & FD_CLOEXEC) != 0);
  CHECK(b.recv<int>() == 2);
  ::close(mfd);
  CHECK_THROWS_AS(a.send_fd(-1), mproc::value_error);
}

TEST_CASE("no descriptor leaks", "[connection]") {
  std::size_t before = count_fds();
  {
    auto [a, b] = mproc::Pipe();
    auto c = a;
    a.send(1);
    CHECK(b.recv<int>() == 1);
    auto [x, y] = mproc::Pipe(false);
    y.send(2);
    CHECK(x.recv<int>() == 2);
    int mfd = ::memfd_create("leak-test", MFD_CLOEXEC);
    a.send_fd(mfd);
    a.send_fd(mfd);
    ::close(mfd);
    auto got = b.recv_fd();
    // the second descriptor is never taken: it closes with the connection
  }
  CHECK(count_fds() == before);
}

TEST_CASE("recv_bytes_into reuses the caller's buffer; a message too large is kept whole",
          "[connection]") {
  auto [a, b] = mproc::Pipe();
  std::vector<std::byte> buf(1 << 20, std::byte{0xee});
  a.send_bytes("hello");
  REQUIRE(b.recv_bytes_into(buf) == 5);
  CHECK(std::string(reinterpret_cast<const char*>(buf.data()), 5) == "hello");
  CHECK(buf[5] == std::byte{0xee});  // nothing past the message is touched

  // Larger than the read-ahead buffer: read straight into the caller's memory; from a
  // writer process, so the body arrives in many pieces.
  std::vector<std::byte> big(600 * 1024);
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = std::byte(i * 7 + 3);
  // a is named in the capture: clang < 16 cannot capture a structured binding.
  pid_t pid = mproc::detail::fork_child([&big, &a = a] {
    a.send_bytes(std::span<const std::byte>(big));
    a.send_bytes(std::span<const std::byte>());
    return 0;
  });
  REQUIRE(b.recv_bytes_into(buf, 10s) == big.size());
  CHECK(std::equal(big.begin(), big.end(), buf.begin()));
  CHECK(b.recv_bytes_into(buf, 10s) == 0);
  CHECK(mproc_test::join_child(pid) == 0);

  // Too large for the buffer: consumed and raised whole, the stream stays in step.
  a.send_bytes("0123456789");
  a.send_bytes("ok");
  std::array<std::byte, 4> small{};
  try {
    (void)b.recv_bytes_into(small);
    FAIL("no buffer_too_short");
  } catch (const mproc::buffer_too_short& e) {
    CHECK(e.message().size() == 10);
    CHECK(std::string(reinterpret_cast<const char*>(e.message().data()), 10) == "0123456789");
    CHECK_THAT(e.what(), Catch::Contains("10 bytes") && Catch::Contains("buffer of 4 bytes"));
  }
  CHECK(b.recv_bytes_into(small) == 2);

  // Half a message when the timeout passes: a later call, into another buffer or by
  // recv_bytes, completes it.
  std::vector<std::byte> payload(100 * 1024);
  for (std::size_t i = 0; i < payload.size(); ++i) payload[i] = std::byte(i % 251);
  std::uint64_t len = payload.size();
  raw_write(a.fileno(), &len, sizeof len);
  raw_write(a.fileno(), payload.data(), 70 * 1024);
  CHECK_THROWS_AS(b.recv_bytes_into(buf, 30ms), mproc::timeout_error);
  raw_write(a.fileno(), payload.data() + 70 * 1024, payload.size() - 70 * 1024);
  std::vector<std::byte> other(payload.size());
  REQUIRE(b.recv_bytes_into(other, 1s) == payload.size());
  CHECK(other == payload);
  raw_write(a.fileno(), &len, sizeof len);
  raw_write(a.fileno(), payload.data(), 1000);
  CHECK_THROWS_AS(b.recv_bytes_into(buf, 30ms), mproc::timeout_error);
  raw_write(a.fileno(), payload.data() + 1000, payload.size() - 1000);
  CHECK(b.recv_bytes(1s) == payload);

  // A closed peer is eof_error, as for recv_bytes.
  a.close();
  CHECK_THROWS_AS(b.recv_bytes_into(buf, 1s), mproc::eof_error);
}
