// Queue, JoinableQueue, SimpleQueue: values, limits, timeouts, many processes, large
// messages, crashes, and no leaked descriptors or /dev/shm entries.
// mproc-test-serial
#include <catch2/catch.hpp>

#include "spawn_entry.hpp"

#include <mproc/process.hpp>
#include <mproc/queue.hpp>
#include <mproc/detail/posix/fork.hpp>
#include <mproc/serialization/boost.hpp>  // types with a Boost serialize()

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <csignal>
#include <dirent.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <map>
#include <numeric>
#include <poll.h>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <variant>
#include <vector>

using namespace std::chrono_literals;

namespace {

/// Waits up to `timeout` for a child; kills it if it is still running. Returns the
/// Python-style exit code (-9 when it had to be killed).
int wait_child(pid_t pid, std::chrono::milliseconds timeout = 20s) {
  auto fd = mproc::detail::pidfd_open(pid);
  pollfd p{fd.get(), POLLIN, 0};
  int rc = mproc::detail::retry_eintr([&] { return ::poll(&p, 1, int(timeout.count())); });
  if (rc == 0) ::kill(pid, SIGKILL);
  int status = 0;
  mproc::detail::waitpid_eintr(pid, &status, 0);
  return mproc::detail::exitcode_from_status(status);
}

std::size_t open_fds() {
  std::size_t n = 0;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (::readdir(d)) ++n;
    ::closedir(d);
  }
  return n;
}

std::set<std::string> dev_shm() {
  std::set<std::string> s;
  if (DIR* d = ::opendir("/dev/shm")) {
    while (auto* e = ::readdir(d)) s.insert(e->d_name);
    ::closedir(d);
  }
  return s;
}

struct point {
  int x;
  double y;
  bool operator==(const point&) const = default;
};

struct person {
  std::string name;
  std::vector<int> scores;
  template <class Ar>
  void serialize(Ar& ar, unsigned) {
    ar & name & scores;
  }
  bool operator==(const person&) const = default;
};

std::uint64_t fnv(const std::string& s) { return mproc::detail::fnv1a(s); }

std::string pattern(std::size_t n, std::size_t seed) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) s[i] = char((i * 131 + seed * 7) & 0xff);
  return s;
}

}  // namespace

TEST_CASE("single process FIFO and handle copies", "[queue]") {
  mproc::Queue<int> q;
  for (int i = 0; i < 1000; ++i) q.put(i);
  CHECK(q.qsize() == 1000);
  mproc::Queue<int> copy = q;  // same queue
  for (int i = 0; i < 1000; ++i) REQUIRE(copy.get() == i);
  CHECK(q.empty());
  CHECK_FALSE(q.full());
}

TEST_CASE("many value types", "[queue]") {
  SECTION("string and literals") {
    mproc::Queue<std::string> q;
    q.put("literal");
    const char* c = "c-string";
    q.put(c);
    q.put(std::string(100000, 'z'));
    q.put(std::string());
    CHECK(q.get() == "literal");
    CHECK(q.get() == "c-string");
    CHECK(q.get() == std::string(100000, 'z'));
    CHECK(q.get().empty());
  }
  SECTION("containers, tuples, optionals, variants, user types") {
    mproc::Queue<std::tuple<std::string, int, double>> t;
    t.put(std::tuple{"add", 10, 0.5});
    CHECK(t.get() == std::tuple<std::string, int, double>{"add", 10, 0.5});

    mproc::Queue<std::map<std::string, std::vector<int>>> m;
    std::map<std::string, std::vector<int>> mv{{"a", {1, 2}}, {"b", {}}};
    m.put(mv);
    CHECK(m.get() == mv);

    mproc::Queue<std::optional<std::variant<int, std::string>>> o;
    o.put(std::optional<std::variant<int, std::string>>{});
    o.put(std::optional<std::variant<int, std::string>>{std::string("v")});
    CHECK_FALSE(o.get().has_value());
    CHECK(std::get<std::string>(*o.get()) == "v");

    mproc::Queue<point> p;
    p.put(point{3, 4.5});
    CHECK(p.get() == point{3, 4.5});

    mproc::Queue<person> b;
    b.put(person{"ann", {1, 2, 3}});
    CHECK(b.get() == person{"ann", {1, 2, 3}});

    mproc::Queue<std::vector<double>> v;
    v.put(std::vector<double>(5000, 1.25));
    v.put(std::vector<double>{});
    CHECK(v.get() == std::vector<double>(5000, 1.25));
    CHECK(v.get().empty());

    mproc::Queue<std::vector<point>> vp;  // raw copy of 16-byte elements
    vp.put(std::vector<point>{{1, 0.5}, {2, 1.5}});
    CHECK(vp.get() == std::vector<point>{{1, 0.5}, {2, 1.5}});

    mproc::Queue<std::vector<long double>> vl;  // over-aligned: decoded generically
    vl.put(std::vector<long double>{1.0L, 2.5L});
    CHECK(vl.get() == std::vector<long double>{1.0L, 2.5L});

    mproc::Queue<std::vector<bool>> vb;
    vb.put(std::vector<bool>{true, false, true});
    CHECK(vb.get() == std::vector<bool>{true, false, true});

    mproc::Queue<std::pair<std::chrono::milliseconds, bool>> d;
    d.put({250ms, true});
    CHECK(d.get() == std::pair{250ms, true});
  }
}

TEST_CASE("a message of another type is reported and consumed", "[queue]") {
  mproc::Queue<int> qi;
  mproc::Queue<std::string> qs(qi.ring());  // same ring, other element type
  qs.put("text");
  qi.put(7);
  CHECK_THROWS_AS(qi.get(), mproc::serialization_error);
  CHECK(qi.get() == 7);
}

TEST_CASE("bounded queue: full, put timeout, nowait", "[queue]") {
  mproc::Queue<int> q(2);
  CHECK(q.maxsize() == 2);
  q.put(1);
  q.put_nowait(2);
  CHECK(q.full());
  CHECK(q.qsize() == 2);
  CHECK_THROWS_AS(q.put_nowait(3), mproc::queue_full);
  CHECK_THROWS_AS(q.put(3, 20ms), mproc::queue_full);
  CHECK(q.get() == 1);
  q.put(3, 1s);
  CHECK(q.get() == 2);
  CHECK(q.get() == 3);
  CHECK(q.empty());
}

TEST_CASE("get timeout, get_nowait and try_get on an empty queue", "[queue]") {
  mproc::Queue<int> q;
  CHECK_THROWS_AS(q.get(20ms), mproc::queue_empty);
  CHECK_THROWS_AS(q.get_nowait(), mproc::queue_empty);
  CHECK_FALSE(q.try_get().has_value());
  CHECK_FALSE(q.try_get(10ms).has_value());
  q.put(5);
  CHECK(q.try_get() == std::optional<int>(5));
  q.put(6);
  CHECK(q.get_nowait() == 6);
  q.put(8);
  CHECK(q.get(1s) == 8);
}

TEST_CASE("threads of one process share a queue", "[queue]") {
  mproc::Queue<int> q(64);
  std::atomic<long> sum{0};
  std::vector<std::thread> ts;
  for (int c = 0; c < 3; ++c)
    ts.emplace_back([&] {
      for (;;) {
        int v = q.get(10s);
        if (v < 0) return;
        sum += v;
      }
    });
  std::vector<std::thread> ps;
  for (int p = 0; p < 3; ++p)
    ps.emplace_back([&] {
      for (int i = 1; i <= 10000; ++i) q.put(i, 10s);
    });
  for (auto& t : ps) t.join();
  for (int c = 0; c < 3; ++c) q.put(-1);
  for (auto& t : ts) t.join();
  CHECK(sum == 3L * 10000 * 10001 / 2);
}

TEST_CASE("4 producers x 4 consumers across processes: every message exactly once", "[queue][process]") {
  constexpr int producers = 4, consumers = 4, per_producer = 20000;
  // Bounded on a roomy ring, or unbounded on a tiny ring that keeps spilling over.
  auto opts = GENERATE(mproc::queue_options{.maxsize = 1000},
                       mproc::queue_options{.maxsize = 0, .capacity = 64 * 1024});
  CAPTURE(opts.maxsize);
  mproc::Queue<int> work(opts);
  mproc::Queue<std::vector<int>> seen;
  std::vector<pid_t> pids;
  for (int c = 0; c < consumers; ++c)
    pids.push_back(mproc::detail::fork_child([&] {
      std::vector<int> got;
      for (;;) {
        int v = work.get(30s);
        if (v < 0) break;
        got.push_back(v);
      }
      seen.put(got);
      return 0;
    }));
  std::vector<pid_t> prod;
  for (int p = 0; p < producers; ++p)
    prod.push_back(mproc::detail::fork_child([&, p] {
      for (int i = 0; i < per_producer; ++i) work.put(p * 1'000'000 + i, 30s);
      return 0;
    }));
  for (pid_t pid : prod) REQUIRE(wait_child(pid) == 0);
  for (int c = 0; c < consumers; ++c) work.put(-1);
  std::vector<int> all;
  for (int c = 0; c < consumers; ++c) {
    auto v = seen.get(30s);
    all.insert(all.end(), v.begin(), v.end());
  }
  for (pid_t pid : pids) CHECK(wait_child(pid) == 0);
  REQUIRE(all.size() == std::size_t(producers * per_producer));
  std::sort(all.begin(), all.end());
  CHECK(std::adjacent_find(all.begin(), all.end()) == all.end());
  std::vector<int> expected;
  for (int p = 0; p < producers; ++p)
    for (int i = 0; i < per_producer; ++i) expected.push_back(p * 1'000'000 + i);
  CHECK(all == expected);
  CHECK(work.empty());
}

TEST_CASE("messages from 0 B to 64 MiB, bigger than the ring, across processes", "[queue][process]") {
  const std::vector<std::size_t> sizes{0, 1, 7, 8, 9, 4096, 65535, (1u << 20) - 1, (1u << 20) + 1,
                                       5u << 20, 64u << 20};
  auto spill = GENERATE(true, false);
  CAPTURE(spill);
  mproc::Queue<std::string> in({.capacity = 4u << 20, .spill = spill});
  mproc::Queue<std::pair<std::size_t, std::uint64_t>> out;
  pid_t child = mproc::detail::fork_child([&] {
    for (;;) {
      std::string s = in.get(60s);
      if (s == "stop") return 0;
      out.put(std::pair{s.size(), fnv(s)});
    }
  });
  for (std::size_t i = 0; i < sizes.size(); ++i) in.put(pattern(sizes[i], i), 60s);
  in.put("stop");
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    auto [n, h] = out.get(60s);
    CHECK(n == sizes[i]);
    CHECK(h == fnv(pattern(sizes[i], i)));
  }
  CHECK(wait_child(child) == 0);
}

TEST_CASE("large messages: raw-copy and generic decode paths, and type mismatch", "[queue]") {
  // A producer thread streams; this thread takes. Contiguous values (strings,
  // vectors of trivially copyable elements) are copied straight into the result, the
  // rest are reassembled then decoded.
  mproc::Queue<std::vector<int>> vi({.capacity = 1u << 20, .spill = false});
  mproc::Queue<std::vector<std::string>> vs({.capacity = 1u << 20, .spill = false});
  mproc::Queue<std::string> str(vi.ring());  // same ring as vi
  std::vector<int> ints(3'000'000);
  std::iota(ints.begin(), ints.end(), 0);
  std::vector<std::string> strings(50'000, std::string(100, 's'));
  std::thread producer([&] {
    vi.put(ints, 20s);
    vs.put(strings, 20s);
    str.put(std::string(3u << 20, 'm'), 20s);  // read below as the wrong type
    vi.put(std::vector<int>{1, 2, 3}, 20s);
  });
  CHECK(vi.get(20s) == ints);
  CHECK(vs.get(20s) == strings);
  CHECK_THROWS_AS(vi.get(20s), mproc::serialization_error);  // consumed all the same
  CHECK(vi.get(20s) == std::vector<int>{1, 2, 3});
  producer.join();
  CHECK(vi.empty());
}

TEST_CASE("a producer that exits right after put loses nothing (put, join, get)", "[queue][process]") {
  mproc::Queue<std::string> q;
  pid_t child = mproc::detail::fork_child([&] {
    for (int i = 0; i < 1000; ++i) q.put("msg-" + std::to_string(i));
    q.put(std::string(1u << 20, 'b'));  // a large record too: still within the ring
    ::_exit(0);                          // no flushing, no destructors
    return 0;
  });
  REQUIRE(wait_child(child) == 0);
  for (int i = 0; i < 1000; ++i) REQUIRE(q.get(1s) == "msg-" + std::to_string(i));
  CHECK(q.get(1s) == std::string(1u << 20, 'b'));
  CHECK(q.empty());
}

TEST_CASE("unbounded: put never blocks when the ring is full; memory is given back", "[queue]") {
  mproc::Queue<int> q({.capacity = 64 * 1024});
  constexpr int n = 300'000;  // ~7 MB of records, 100x the ring
  for (int i = 0; i < n; ++i) q.put_nowait(i);
  CHECK(q.qsize() == std::size_t(n));
  struct stat st {};
  REQUIRE(::fstat(q.ring()->fd(), &st) == 0);
  CHECK(std::size_t(st.st_blocks) * 512 > std::size_t(6) << 20);
  for (int i = 0; i < n; ++i) REQUIRE(q.get_nowait() == i);
  CHECK(q.empty());
  REQUIRE(::fstat(q.ring()->fd(), &st) == 0);
  CHECK(std::size_t(st.st_blocks) * 512 < std::size_t(2) << 20);  // ring + a page or two
  // and the ring is used again afterwards
  q.put(7);
  CHECK(q.get() == 7);
}

TEST_CASE("put 64 MiB, join the producer, then get", "[queue][process]") {
  mproc::Queue<std::string> q;
  pid_t child = mproc::detail::fork_child([&] {
    q.put(pattern(64u << 20, 3));
    q.put("small after");
    return 0;
  });
  REQUIRE(wait_child(child, 60s) == 0);
  CHECK(fnv(q.get(10s)) == fnv(pattern(64u << 20, 3)));
  CHECK(q.get(10s) == "small after");
}

TEST_CASE("FIFO order holds across ring and overflow hand-overs", "[queue][process]") {
  // A tiny ring and a mix of sizes make the producer switch between the ring and the
  // overflow area all the time while a consumer in another process reads.
  mproc::Queue<std::pair<int, std::string>> q({.capacity = 64 * 1024});
  constexpr int n = 30000;
  pid_t child = mproc::detail::fork_child([&] {
    for (int i = 0; i < n; ++i) {
      std::size_t size = i % 1000 == 0 ? 40'000 : i % 7 == 0 ? 3000 : 10;
      q.put(std::pair{i, std::string(size, char('a' + i % 26))});
    }
    return 0;
  });
  int bad = 0;
  for (int i = 0; i < n; ++i) {
    auto [seq, s] = q.get(30s);
    if (seq != i || s.empty() || s[0] != char('a' + i % 26)) ++bad;
  }
  CHECK(bad == 0);
  CHECK(wait_child(child) == 0);
  CHECK(q.empty());
}

TEST_CASE("a timed-out streamed put leaves nothing behind", "[queue]") {
  mproc::Queue<std::string> q({.capacity = 64 * 1024, .spill = false});
  CHECK_THROWS_AS(q.put(std::string(1u << 20, 'x'), 30ms), mproc::queue_full);
  CHECK_THROWS_AS(q.put_nowait(std::string(1u << 20, 'x')), mproc::queue_full);
  CHECK(q.qsize() == 0);
  // The aborted fragments still fill the ring until a getter skips them.
  CHECK_FALSE(q.try_get().has_value());
  q.put("after", 1s);
  CHECK(q.get(1s) == "after");
  CHECK(q.empty());
}

TEST_CASE("JoinableQueue: join waits for task_done", "[queue][process]") {
  mproc::JoinableQueue<int> jq;
  CHECK(jq.join(10ms));  // nothing put yet
  for (int i = 0; i < 100; ++i) jq.put(i);
  CHECK(jq.unfinished_tasks() == 100);
  CHECK_FALSE(jq.join(20ms));
  pid_t child = mproc::detail::fork_child([&] {
    for (int i = 0; i < 100; ++i) {
      if (jq.get(10s) != i) return 2;
      jq.task_done();
    }
    return 0;
  });
  CHECK(jq.join(20s));
  CHECK(jq.unfinished_tasks() == 0);
  CHECK(wait_child(child) == 0);
  CHECK_THROWS_AS(jq.task_done(), mproc::state_error);
  jq.put(1);
  (void)jq.get();
  jq.task_done();
  jq.join();
}

TEST_CASE("close: puts raise, getters drain then see eof, sleepers wake", "[queue][process]") {
  SECTION("single process") {
    mproc::Queue<int> q;
    q.put(1);
    q.close();
    CHECK(q.closed());
    CHECK_THROWS_AS(q.put(2), mproc::state_error);
    CHECK(q.get() == 1);
    CHECK_THROWS_AS(q.get(), mproc::eof_error);
    CHECK_THROWS_AS(q.get(10ms), mproc::eof_error);
    CHECK_FALSE(q.try_get().has_value());
  }
  SECTION("a blocked getter in another process is woken") {
    mproc::Queue<int> q;
    mproc::Queue<int> ready;
    pid_t child = mproc::detail::fork_child([&] {
      ready.put(1);
      try {
        (void)q.get(30s);
      } catch (const mproc::eof_error&) {
        return 0;
      } catch (...) {
        return 3;
      }
      return 4;
    });
    CHECK(ready.get(10s) == 1);
    std::this_thread::sleep_for(50ms);  // let it block (correct either way)
    q.close();
    CHECK(wait_child(child) == 0);
  }
  SECTION("a producer blocked on a full queue is woken") {
    mproc::Queue<int> q(1);
    q.put(0);
    std::thread t([&] { std::this_thread::sleep_for(50ms); q.close(); });
    CHECK_THROWS_AS(q.put(1, 10s), mproc::state_error);
    t.join();
  }
}

TEST_CASE("SimpleQueue", "[queue]") {
  mproc::SimpleQueue<std::string> sq;
  CHECK(sq.empty());
  sq.put("a");
  sq.put(std::string("b"));
  CHECK_FALSE(sq.empty());
  CHECK(sq.get() == "a");
  CHECK(sq.get(1s) == "b");
  CHECK_FALSE(sq.try_get().has_value());
  CHECK_THROWS_AS(sq.get(10ms), mproc::queue_empty);
  sq.close();
  CHECK_THROWS_AS(sq.get(), mproc::eof_error);
}

TEST_CASE("a producer SIGKILLed mid-message does not wedge the queue", "[queue][process]") {
  // The child streams 16 MiB messages through a 1 MiB ring; nobody reads, so it
  // blocks in the middle of a message holding the put lock. Killing it there loses
  // that partial message only; the queue then works for everyone else.
  mproc::Queue<std::string> q({.capacity = 1u << 20, .spill = false});
  mproc::Queue<int> started;
  pid_t child = mproc::detail::fork_child([&]() -> int {
    started.put(1);
    for (;;) q.put(std::string(16u << 20, 'k'));
  });
  REQUIRE(started.get(10s) == 1);
  std::this_thread::sleep_for(100ms);  // lets it fill the ring (correct either way)
  ::kill(child, SIGKILL);
  CHECK(wait_child(child) == -SIGKILL);
  // The getter finds the dead producer's partial message, sees through the robust
  // put lock that its writer died, and drops it, freeing the ring.
  CHECK_FALSE(q.try_get().has_value());
  q.put("after", 5s);
  std::string s = q.get(5s);
  CHECK(s == "after");  // the partial message was dropped
  CHECK(q.empty());
}

TEST_CASE("a consumer SIGKILLed mid-message loses at most that message", "[queue][process]") {
  // Whether the kill lands before, during or after the child's get() is up to the
  // scheduler; every case must leave a working queue and an intact next message.
  const std::string big(64u << 20, 'z');
  mproc::Queue<std::string> q({.capacity = 1u << 20, .spill = false});
  mproc::Queue<int> started;
  pid_t c = mproc::detail::fork_child([&] {
    started.put(1);
    return q.get(30s) == big ? 0 : 1;
  });
  REQUIRE(started.get(10s) == 1);
  std::thread producer([&] {
    q.put(big, 30s);
    q.put("after", 30s);
  });
  std::this_thread::sleep_for(20ms);
  ::kill(c, SIGKILL);
  int code = wait_child(c);
  CHECK((code == 0 || code == -SIGKILL));
  std::vector<std::string> got;
  for (;;) {
    std::string s = q.get(30s);
    if (s == "after") break;
    got.push_back(std::move(s));
  }
  producer.join();
  if (code == 0) CHECK(got.empty());  // the child took it whole
  CHECK(got.size() <= 1);
  if (!got.empty()) CHECK(got[0] == big);  // the kill came before the child's get
  CHECK(q.empty());
}

TEST_CASE("a producer SIGKILLed while writing to the overflow area loses nothing it put", "[queue][process]") {
  mproc::Queue<std::pair<int, std::string>> q({.capacity = 64 * 1024});
  mproc::Queue<int> started;
  pid_t victim = mproc::detail::fork_child([&]() -> int {
    for (int i = 0;; ++i) {
      q.put(std::pair{i, std::string(4000, char('a' + i % 26))});
      if (i == 2000) started.put(1);
      if (i == 200'000) return 0;  // bounded, in case the kill comes late
    }
  });
  REQUIRE(started.get(20s) == 1);
  ::kill(victim, SIGKILL);
  int code = wait_child(victim);
  CHECK((code == -SIGKILL || code == 0));
  int next = 0, bad = 0;
  while (auto m = q.try_get()) {
    if (m->first != next++ || m->second != std::string(4000, char('a' + m->first % 26))) ++bad;
  }
  CHECK(bad == 0);
  CHECK(next > 2000);
  q.put(std::pair{-1, std::string("after")});
  CHECK(q.get(5s).first == -1);
  CHECK(q.empty());
}

TEST_CASE("a producer SIGKILLed while others produce: the survivors' messages all arrive",
          "[queue][process]") {
  mproc::Queue<int> q(100);
  pid_t victim = mproc::detail::fork_child([&]() -> int {
    for (int i = 0;; ++i) q.put(-1000 - i);
  });
  pid_t survivor = mproc::detail::fork_child([&] {
    for (int i = 0; i < 5000; ++i) q.put(i, 20s);
    return 0;
  });
  std::set<int> got;
  int taken = 0;
  while (got.size() < 5000) {
    int v = q.get(20s);
    if (++taken == 2000) ::kill(victim, SIGKILL);
    if (v >= 0) REQUIRE(got.insert(v).second);
  }
  CHECK(wait_child(victim) == -SIGKILL);
  CHECK(wait_child(survivor) == 0);
  CHECK(*got.rbegin() == 4999);
}

TEST_CASE("no descriptor leaks and no /dev/shm entries", "[queue]") {
  auto fds = open_fds();
  auto shm = dev_shm();
  {
    mproc::Queue<int> a;
    mproc::JoinableQueue<std::string> b(10);
    mproc::SimpleQueue<double> c;
    auto a2 = a;
    a.put(1);
    b.put("x");
    c.put(1.5);
    CHECK(a2.get() == 1);
    mproc::Queue<std::string> spilled({.capacity = 64 * 1024});  // overflow area in use
    pid_t child = mproc::detail::fork_child([&] {
      for (int i = 0; i < 100; ++i) spilled.put(std::string(10000, 'o'));
      return 0;
    });
    CHECK(wait_child(child) == 0);
    for (int i = 0; i < 100; ++i) CHECK(spilled.get(5s).size() == 10000);
    CHECK(open_fds() > fds);
  }
  CHECK(open_fds() == fds);
  CHECK(dev_shm() == shm);
}

namespace {
/// The queue's shared memory, mapped again as a hostile producer of the same uid would.
struct forged_view {
  std::size_t bytes;
  std::byte* mem;
  explicit forged_view(const mproc::detail::mpmc_ring& r)
      : bytes(mproc::detail::mpmc_ring::header_bytes + r.capacity()),
        mem(static_cast<std::byte*>(::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, r.fd(), 0))) {
    REQUIRE(mem != MAP_FAILED);
  }
  ~forged_view() { ::munmap(mem, bytes); }
  mproc::detail::mpmc_ring_header& header() const {
    return *reinterpret_cast<mproc::detail::mpmc_ring_header*>(mem);
  }
  std::byte* record_at(std::uint64_t pos, std::size_t cap) const {
    return mem + mproc::detail::mpmc_ring::header_bytes + pos % cap;
  }
};
}  // namespace

TEST_CASE("a forged queue record raises serialization_error once; the queue goes on",
          "[queue]") {
  mproc::Queue<std::string> q(mproc::queue_options{.capacity = 64 * 1024, .spill = false});
  const std::size_t cap = q.capacity_bytes();
  forged_view v(*q.ring());
  const char* forgeries[] = {
      "a record 3 ring lengths long, the tail 8 ring lengths ahead",
      "a record longer than what is published",
      "a record of an unknown kind",
      "a fragmented message whose first fragment claims more than memory",
  };
  for (int round = 0; round < 2; ++round) {  // twice: wherever the ring's head stands
    for (int f = 0; f < 4; ++f) {
      INFO(forgeries[f] << ", round " << round);
      q.put("victim");
      auto& h = v.header();
      const std::uint64_t head = h.head.load();
      std::byte* rec = v.record_at(head, cap);
      if (f == 0) {
        // The payload is a well-formed string message claiming 3 ring lengths.
        const std::uint32_t len = std::uint32_t(3 * cap);
        std::memcpy(rec, &len, 4);
        const std::uint64_t tag = mproc::detail::tag_of<std::string>();
        const std::uint64_t chars = len - 16;
        std::memcpy(rec + 8, &tag, 8);
        std::memcpy(rec + 16, &chars, 8);
        h.tail.store(head + 8 * cap);
      } else if (f == 1) {
        const std::uint32_t len = 1000;
        std::memcpy(rec, &len, 4);
      } else if (f == 2) {
        const std::uint32_t kind = 77;
        std::memcpy(rec + 4, &kind, 4);
      } else {
        const std::uint32_t kind = mproc::detail::mpmc_ring::k_first;
        std::memcpy(rec + 4, &kind, 4);
        const std::uint64_t total = ~std::uint64_t(0) >> 1;
        std::memcpy(rec + 8, &total, 8);
      }
      CHECK_THROWS_AS(q.get(5s), mproc::serialization_error);
      // Past the corrupt record: nothing is reported twice and the queue goes on.
      CHECK_THROWS_AS(q.get_nowait(), mproc::queue_empty);
      q.put("after");
      CHECK(q.get(5s) == "after");
    }
  }
}

TEST_CASE("bad construction arguments", "[queue]") {
  CHECK_THROWS_AS(mproc::Queue<int>(mproc::queue_options{.capacity = std::size_t(1) << 62}),
                  mproc::value_error);
}

namespace {
void spawned_producer(mproc::Queue<std::string> q, mproc::JoinableQueue<int> jobs,
                      mproc::SimpleQueue<int> simple) {
  q.put("from " + mproc::current_process().name);
  int v = jobs.get(std::chrono::seconds(10));
  jobs.task_done();
  simple.put(v * 2);
}
}  // namespace

TEST_CASE("queues passed to spawn and forkserver children are the same queues", "[queue][start-methods]") {
  mproc_test::ensure_init();
  for (auto method : {mproc::start_method::spawn, mproc::start_method::forkserver}) {
    INFO("start method " << mproc::to_string(method));
    mproc::Queue<std::string> q;
    mproc::JoinableQueue<int> jobs;
    mproc::SimpleQueue<int> simple;
    jobs.put(21);
    mproc::Process p({.name = "qchild", .method = method}, spawned_producer, q, jobs, simple);
    p.start();
    REQUIRE(q.get(std::chrono::seconds(20)) == "from qchild");
    REQUIRE(jobs.join(std::chrono::seconds(20)));
    REQUIRE(simple.get(std::chrono::seconds(20)) == 42);
    REQUIRE(p.join(std::chrono::seconds(20)));
    REQUIRE(p.exitcode() == 0);
  }
}
