// Python parity of processes and their handles: Process::sentinel() until close(),
// parent_process(), the inherited start method, forkserver children outliving their
// server, Connection::send_bytes(buf, offset, size), Barrier's default timeout and
// portable action, Value/Array sharing one lock, designated callbacks.
// mproc-test-timeout: 600
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <mproc/connection.hpp>
#include <mproc/detail/handle_passing.hpp>
#include <mproc/pool.hpp>
#include <mproc/process.hpp>
#include <mproc/shared_memory.hpp>
#include <mproc/sharedctypes.hpp>
#include <mproc/synchronize.hpp>

#include "spawn_entry.hpp"
#include "test_support.hpp"

extern char** environ;

using namespace std::chrono_literals;
using mproc::start_method;
using mproc_test::join_process;
using mproc_test::with_method;

namespace {

using mproc_test::ensure_init;

bool fd_valid(int fd) { return ::fcntl(fd, F_GETFD) != -1; }

bool readable(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, timeout_ms) == 1 && (p.revents & (POLLIN | POLLHUP)) != 0;
}

/// State letter from /proc/<pid>/stat; 0 when the process does not exist.
char proc_state(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string s;
  if (!std::getline(f, s)) return 0;
  auto rp = s.rfind(')');
  if (rp == std::string::npos || rp + 2 >= s.size()) return 0;
  return s[rp + 2];
}
bool is_gone(pid_t pid) {
  char st = proc_state(pid);
  return st == 0 || st == 'Z' || st == 'X';
}
bool wait_gone(pid_t pid, std::chrono::milliseconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!is_gone(pid)) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

void sleep_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

void set_after(mproc::Value<int> v, int ms, int value) {
  sleep_ms(ms);
  v.store(value);
}

// ---- parent_process()

// Reports what the child sees of its parent: [0] pid, [1] is_alive, [2] join(50ms)
// returned false, [3] the name is MainProcess.
void report_parent(mproc::Array<int> out) {
  auto parent = mproc::parent_process();
  if (!parent) return;
  out[0] = int(parent->pid);
  out[1] = parent->is_alive() ? 1 : 0;
  out[2] = parent->join(50ms) ? 0 : 1;
  out[3] = parent->name == "MainProcess" ? 1 : 0;
}

// The grandchild: waits for its parent to end, then reports the parent's pid and
// whether is_alive() agrees.
void await_parent_death(mproc::Array<int> out) {
  auto parent = mproc::parent_process();
  if (!parent) return;
  out[1] = int(parent->pid);
  if (parent->join(30s)) out[2] = parent->is_alive() ? -1 : 1;
}
// The middle process: starts the grandchild (by the inherited method) and ends at
// once, without joining it.
void start_and_vanish(mproc::Array<int> out) {
  mproc::Process g(await_parent_death, out);
  g.start();
  out[0] = int(::getpid());
  ::_exit(0);
}

// ---- start method inheritance

// [0] what the process reports, [1] what its child reports (started without a method
// unless `inner` >= 0).
void report_method_child(mproc::Array<int> out) { out[1] = int(mproc::get_start_method()); }
void report_method(mproc::Array<int> out, int inner) {
  out[0] = int(mproc::get_start_method());
  mproc::process_options o;
  if (inner >= 0) o.method = start_method(inner);
  mproc::Process g(o, report_method_child, out);
  g.start();
  if (!g.join(60s)) {
    g.kill();
    g.join();
    out[1] = -2;
  }
}

// ---- Barrier

std::string barrier_counter_name() {
  // The action runs in whichever party arrives last: the test process or one of its
  // children. Both name the test process's counter the same way.
  auto parent = mproc::parent_process();
  return "mproc-t-barrier-" + std::to_string(parent ? parent->pid : ::getpid());
}
void count_barrier_action() {
  mproc::SharedMemory m(barrier_counter_name());
  auto* p = reinterpret_cast<std::atomic<int>*>(m.buf().data());
  p->fetch_add(1);
}
// Waits `rounds` times; records in out[i] the action count seen right after each
// release (the action runs before any party is released).
void barrier_party(mproc::Barrier b, mproc::Array<int> out, int rounds) {
  mproc::SharedMemory m(barrier_counter_name());
  auto* p = reinterpret_cast<std::atomic<int>*>(m.buf().data());
  for (int i = 0; i < rounds; ++i) {
    b.wait(30s);
    out[std::size_t(i)] = p->load();
  }
}

// ---- shared ctypes with a given lock

// Checks that the value, the array and the lock received are one lock; then holds it
// until `release` is set, after setting `held`.
void hold_shared_lock(mproc::Value<int> v, mproc::Array<int> a, mproc::RLock lock,
                      mproc::Event held, mproc::Event release, mproc::Array<int> out) {
  out[0] = v.get_lock() == lock ? 1 : 0;
  out[1] = a.get_lock() == lock ? 1 : 0;
  out[2] = v.get_lock() == a.get_lock() ? 1 : 0;
  std::scoped_lock g(lock);
  v.value() += 1;
  a[0] += 1;
  held.set();
  out[3] = release.wait(30s) ? 1 : 0;
}

}  // namespace

// ---------------------------------------------------------------------------------------

TEST_CASE("sentinel() stays a valid, readable descriptor after join() until close()",
          "[parity][process]") {
  ensure_init();
  const start_method m = MPROC_TEST_EACH_START_METHOD();
  INFO(mproc::to_string(m));
  SECTION("asked for before the child ends") {
    mproc::Value<int> v(0);
    mproc::Process p(with_method(m), set_after, v, 300, 7);
    p.start();
    const int s = p.sentinel();
    REQUIRE(s >= 0);
    CHECK_FALSE(readable(s, 0));  // still running
    CHECK(readable(s, 30'000));
    CHECK(join_process(p) == 0);
    // Python: the sentinel is valid until close(); join() must not close it (its number
    // could otherwise be handed to an unrelated open()).
    CHECK(fd_valid(s));
    CHECK(p.sentinel() == s);
    CHECK(readable(s, 0));
    p.close();
    CHECK_FALSE(fd_valid(s));
    CHECK_THROWS_AS(p.sentinel(), mproc::state_error);
  }
  SECTION("asked for only after join()") {
    mproc::Process p(with_method(m), sleep_ms, 10);
    p.start();
    CHECK(join_process(p) == 0);
    const int s = p.sentinel();
    REQUIRE(s >= 0);
    CHECK(fd_valid(s));
    CHECK(readable(s, 0));
    CHECK(p.sentinel() == s);
    p.close();
    CHECK_FALSE(fd_valid(s));
  }
}

TEST_CASE("parent_process(): pid, name, is_alive() and join(timeout) in a child",
          "[parity][process]") {
  ensure_init();
  CHECK_FALSE(mproc::parent_process().has_value());  // the main process has none
  const start_method m = MPROC_TEST_EACH_START_METHOD();
  INFO(mproc::to_string(m));
  mproc::Array<int> out(4);
  mproc::Process p(with_method(m), report_parent, out);
  p.start();
  REQUIRE(join_process(p) == 0);
  CHECK(out[0] == int(::getpid()));
  CHECK(out[1] == 1);  // alive
  CHECK(out[2] == 1);  // join(50ms) timed out
  CHECK(out[3] == 1);
}

TEST_CASE("parent_process(): a grandchild notices its parent's death", "[parity][process]") {
  // Only forkserver grandchildren outlive their parent (a forked or spawned child dies
  // with its parent by design); the middle process inherits forkserver from its own
  // start.
  ensure_init();
  mproc::Array<int> out(3);
  mproc::Process p(with_method(start_method::forkserver), start_and_vanish, out);
  p.start();
  REQUIRE(join_process(p) == 0);
  const auto end = std::chrono::steady_clock::now() + 30s;
  while (out[2] == 0 && std::chrono::steady_clock::now() < end) sleep_ms(10);
  CHECK(out[0] > 0);
  CHECK(out[1] == out[0]);  // its parent is the middle process (not the server)
  CHECK(out[2] == 1);       // join() returned and is_alive() agreed
}

TEST_CASE("a child started by spawn or forkserver reports and uses its start method",
          "[parity][context]") {
  ensure_init();
  REQUIRE(mproc::get_start_method() == start_method::fork);
  const start_method m = MPROC_TEST_EACH_START_METHOD();
  INFO(mproc::to_string(m));
  SECTION("inherited") {
    mproc::Array<int> out(2, -1);
    mproc::Process p(with_method(m), report_method, out, -1);
    p.start();
    REQUIRE(join_process(p, 90s) == 0);
    CHECK(out[0] == int(m));
    CHECK(out[1] == int(m));  // its own child was started the same way
  }
  SECTION("unless told otherwise") {
    for (start_method inner : {start_method::fork, start_method::spawn, start_method::forkserver}) {
      INFO("inner " << mproc::to_string(inner));
      mproc::Array<int> out(2, -1);
      mproc::Process p(with_method(m), report_method, out, int(inner));
      p.start();
      REQUIRE(join_process(p, 90s) == 0);
      CHECK(out[0] == int(m));
      // A forked grandchild reports what its parent's setting was; the others their own.
      CHECK(out[1] == int(inner == start_method::fork ? m : inner));
    }
  }
  CHECK(mproc::get_start_method() == start_method::fork);  // the parent's own is untouched
}

TEST_CASE("forkserver: children outlive a killed server; the next start replaces it",
          "[parity][forkserver]") {
  ensure_init();
  {  // make sure a server runs and is known
    mproc::Process warm(with_method(start_method::forkserver), sleep_ms, 1);
    warm.start();
    REQUIRE(join_process(warm) == 0);
  }
  auto& fs = mproc::detail::forkserver_state();
  const pid_t server = fs.server_pid;
  REQUIRE(server > 0);
  mproc::Value<int> v(0);
  mproc::Process p(with_method(start_method::forkserver), set_after, v, 1500, 42);
  p.start();
  const pid_t child = p.pid();
  REQUIRE(::kill(server, SIGKILL) == 0);
  REQUIRE(wait_gone(server, 5s));
  sleep_ms(200);
  CHECK_FALSE(is_gone(child));
  CHECK(p.is_alive());  // not taken for finished because its server went away
  REQUIRE(p.join(30s));
  CHECK(v.load() == 42);  // it ran to completion
  CHECK(p.exitcode() == 0);
  // The next forkserver start finds the server gone and starts a new one.
  mproc::Value<int> w(0);
  mproc::Process q(with_method(start_method::forkserver), set_after, w, 0, 5);
  q.start();
  REQUIRE(join_process(q) == 0);
  CHECK(w.load() == 5);
  CHECK(fs.server_pid > 0);
  CHECK(fs.server_pid != server);
}

namespace {
struct probe {
  pid_t pid = -1;
  int in = -1;
  std::map<std::string, std::string> info;
  [[nodiscard]] pid_t pid_of(const char* key) const {
    auto it = info.find(key);
    return it == info.end() ? -1 : std::atoi(it->second.c_str());
  }
};

probe start_probe() {
  int in[2], out[2];
  REQUIRE(::pipe2(in, O_CLOEXEC) == 0);
  REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  std::string path = std::string(MPROC_TEST_HELPER_DIR) + "/forkserver_probe";
  char mode[] = "eager";
  char* argv[] = {path.data(), mode, nullptr};
  probe pr;
  REQUIRE(::posix_spawn(&pr.pid, path.c_str(), &fa, nullptr, argv, environ) == 0);
  posix_spawn_file_actions_destroy(&fa);
  ::close(in[0]);
  ::close(out[1]);
  pr.in = in[1];
  std::string text;
  char buf[512];
  const auto end = std::chrono::steady_clock::now() + 30s;
  while (text.find("ready\n") == std::string::npos && std::chrono::steady_clock::now() < end) {
    pollfd pf{out[0], POLLIN, 0};
    if (::poll(&pf, 1, 200) <= 0) continue;
    ssize_t n = ::read(out[0], buf, sizeof buf);
    if (n <= 0) break;
    text.append(buf, std::size_t(n));
  }
  ::close(out[0]);
  for (std::size_t i = 0, j; (j = text.find('\n', i)) != std::string::npos; i = j + 1) {
    std::string line = text.substr(i, j - i);
    auto sp = line.find(' ');
    if (sp != std::string::npos) pr.info[line.substr(0, sp)] = line.substr(sp + 1);
  }
  INFO(text);
  REQUIRE(text.find("ready\n") != std::string::npos);
  return pr;
}
}  // namespace

TEST_CASE("forkserver: a child whose server was killed still dies with the program",
          "[parity][forkserver]") {
  // Orphans are adopted by the nearest subreaper: this process, which reaps them.
  REQUIRE(::prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
  probe pr = start_probe();
  const pid_t server = pr.pid_of("server"), child = pr.pid_of("child");
  REQUIRE(server > 0);
  REQUIRE(child > 0);
  ::kill(server, SIGKILL);
  CHECK(wait_gone(server, 5s));
  sleep_ms(300);
  CHECK_FALSE(is_gone(child));  // not killed with its server
  ::kill(pr.pid, SIGKILL);
  CHECK(mproc_test::join_child(pr.pid, 20s) == -SIGKILL);
  ::close(pr.in);
  CHECK(wait_gone(child, 5s));  // but with the program
  // Reap what was adopted (the server, the child, the server's keeper).
  const auto end = std::chrono::steady_clock::now() + 10s;
  for (;;) {
    pid_t r = ::waitpid(-1, nullptr, WNOHANG);
    if (r > 0) continue;
    if (r < 0 || std::chrono::steady_clock::now() > end) break;
    sleep_ms(10);
  }
  ::prctl(PR_SET_CHILD_SUBREAPER, 0);
}

TEST_CASE("Connection::send_bytes(buf, offset, size) follows Python's bounds rules",
          "[parity][connection]") {
  auto pipe = mproc::Pipe();  // not a structured binding: clang 14 cannot capture those
  mproc::Connection r = pipe.first, w = pipe.second;
  const std::string s = "hello world";
  auto text = [&] {
    auto b = r.recv_bytes(5s);
    return std::string(reinterpret_cast<const char*>(b.data()), b.size());
  };
  w.send_bytes(s, 6);
  CHECK(text() == "world");
  w.send_bytes(s, 0, 5);
  CHECK(text() == "hello");
  w.send_bytes(s, 3, 0);
  CHECK(text().empty());
  w.send_bytes(s, s.size());  // offset == length: an empty message
  CHECK(text().empty());
  w.send_bytes(s, 4, 7);  // the last byte exactly
  CHECK(text() == "o world");
  std::vector<std::byte> bytes(8);
  for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = std::byte(i);
  w.send_bytes(std::span<const std::byte>(bytes), 2, 3);
  auto got = r.recv_bytes(5s);
  REQUIRE(got.size() == 3);
  CHECK(got[0] == std::byte(2));
  CHECK(got[2] == std::byte(4));
  std::string_view literal = "abcdef";
  w.send_bytes(literal, 1, 2);
  CHECK(text() == "bc");
  // Out of range: value_error, and nothing is sent.
  CHECK_THROWS_AS(w.send_bytes(s, s.size() + 1), mproc::value_error);
  CHECK_THROWS_AS(w.send_bytes(s, 5, 7), mproc::value_error);
  CHECK_THROWS_AS(w.send_bytes(s, 12, 0), mproc::value_error);
  CHECK_THROWS_AS(w.send_bytes(s, std::size_t(-1)), mproc::value_error);  // a negative offset
  CHECK_THROWS_AS(w.send_bytes(s, 0, std::size_t(-1)), mproc::value_error);  // a negative size
  CHECK_THROWS_AS(w.send_bytes(s, 2, std::size_t(-1)), mproc::value_error);  // wraps: still refused
  CHECK_THROWS_AS(w.send_bytes(bytes, 9), mproc::value_error);
  CHECK_FALSE(r.poll());
  w.send_bytes(s, 10, 1);
  CHECK(text() == "d");
  static_assert(std::is_base_of_v<mproc::error, mproc::value_error>);
}

TEST_CASE("Barrier(parties, action, timeout): the default timeout applies to wait()",
          "[parity][barrier]") {
  mproc::Barrier b(2, nullptr, 150ms);
  REQUIRE(b.timeout().has_value());
  CHECK(*b.timeout() == 150ms);
  const auto t0 = std::chrono::steady_clock::now();
  CHECK_THROWS_AS(b.wait(), mproc::broken_barrier_error);  // the other party never comes
  const auto took = std::chrono::steady_clock::now() - t0;
  CHECK(took >= 140ms);
  CHECK(took < 10s);
  CHECK(b.broken());
  b.reset();
  // An explicit timeout still overrides the default.
  CHECK_THROWS_AS(b.wait(20ms), mproc::broken_barrier_error);
  CHECK_FALSE(mproc::Barrier(2).timeout().has_value());
  // A copy (as a forked child holds) shares the default.
  mproc::Barrier c(1, [] {}, 1s);
  mproc::Barrier copy = c;
  CHECK(copy.timeout() == std::optional<std::chrono::nanoseconds>(1s));
  CHECK(copy.wait() == 0);
}

TEST_CASE("a Barrier with a portable action passes to children under every start method",
          "[parity][barrier]") {
  ensure_init();
  const start_method m = MPROC_TEST_EACH_START_METHOD();
  INFO(mproc::to_string(m));
  mproc::SharedMemory counter(mproc::create, sizeof(std::atomic<int>), barrier_counter_name());
  auto* count = new (counter.buf().data()) std::atomic<int>(0);
  constexpr int rounds = 3;
  for (bool lambda : {false, true}) {
    INFO((lambda ? "captureless lambda" : "free function"));
    count->store(0);
    mproc::Barrier b = lambda ? mproc::Barrier(3, [] { count_barrier_action(); }, 30s)
                              : mproc::Barrier(3, count_barrier_action, 30s);
    CHECK(b.has_action());
    mproc::Array<int> out1(rounds), out2(rounds);
    mproc::Process p1(with_method(m), barrier_party, b, out1, rounds);
    mproc::Process p2(with_method(m), barrier_party, b, out2, rounds);
    p1.start();
    p2.start();
    for (int i = 0; i < rounds; ++i) {
      b.wait();  // the default timeout: a lost party fails the test instead of hanging
      CHECK(count->load() >= i + 1);
    }
    CHECK(join_process(p1) == 0);
    CHECK(join_process(p2) == 0);
    CHECK(count->load() == rounds);  // once per round, wherever it ran
    for (int i = 0; i < rounds; ++i) {
      CHECK(out1[std::size_t(i)] >= i + 1);
      CHECK(out2[std::size_t(i)] >= i + 1);
    }
  }
  if (m != start_method::fork) {
    // A closure still cannot cross; it says so.
    int captured = 1;
    mproc::Barrier closure(2, [captured] { (void)captured; });
    mproc::Array<int> out(rounds);
    mproc::Process p(with_method(m), barrier_party, closure, out, 1);
    CHECK_THROWS_AS(p.start(), mproc::state_error);
  }
  counter.unlink();
}

TEST_CASE("Value and Array constructed with an existing lock share it (Python's lock=)",
          "[parity][sharedctypes]") {
  ensure_init();
  SECTION("in one process") {
    mproc::RLock shared;
    mproc::Value<int> a(5, shared);
    mproc::Array<int> b(8, shared);
    CHECK(a.value() == 5);
    CHECK(b.size() == 8);
    CHECK(a.get_lock() == shared);
    CHECK(b.get_lock() == shared);
    CHECK(a.get_lock() == b.get_lock());
    CHECK(a.external_lock());
    mproc::Value<int> own(0);
    CHECK_FALSE(own.get_lock() == shared);
    CHECK_FALSE(own.external_lock());
    {
      std::scoped_lock g(shared);
      // Held through the shared lock: the value's and the array's lock are held (an
      // RLock: the holder may take it again).
      CHECK(a.get_lock().held_by_caller());
      CHECK(b.get_lock().acquire(false));
      b.get_lock().release();
      std::thread([&] { CHECK_FALSE(a.get_lock().acquire(false)); }).join();
    }
    std::thread([&] {
      CHECK(a.get_lock().acquire(false));
      a.get_lock().release();
    }).join();
  }
  SECTION("a non-recursive Lock stays non-recursive") {
    mproc::Lock plain;
    mproc::Value<double> v(1.5, plain);
    CHECK(v.get_lock() == plain);
    v.get_lock().acquire();
    CHECK(plain.held_by_caller());
    CHECK_FALSE(v.get_lock().acquire(false));  // a Lock: a second acquire fails
    CHECK_THROWS_AS(v.get_lock().acquire(), mproc::lock_error);
    v.get_lock().release();
    CHECK_FALSE(plain.held_by_caller());
  }
  SECTION("across fork, spawn and forkserver children") {
    const start_method m = MPROC_TEST_EACH_START_METHOD();
    INFO(mproc::to_string(m));
    mproc::RLock shared;
    mproc::Value<int> v(0, shared);
    mproc::Array<int> a(4, shared);
    mproc::Event held, release;
    mproc::Array<int> out(4);
    mproc::Process p(with_method(m), hold_shared_lock, v, a, shared, held, release, out);
    p.start();
    REQUIRE(held.wait(30s));
    // The child holds the shared lock: neither object's lock can be had here.
    CHECK_FALSE(v.get_lock().acquire(false));
    CHECK_FALSE(a.get_lock().acquire(false));
    CHECK_FALSE(shared.acquire(false));
    release.set();
    CHECK(join_process(p) == 0);
    CHECK(out[0] == 1);
    CHECK(out[1] == 1);
    CHECK(out[2] == 1);
    CHECK(out[3] == 1);
    CHECK(v.load() == 1);
    CHECK(a[0] == 1);
    CHECK(a.get_lock().acquire(false));
    a.get_lock().release();
  }
}

namespace {
int fail_task(int x) {
  if (x > 0) throw std::runtime_error("boom");
  return x;
}
std::atomic<int> errors_seen{0};
void on_error(std::exception_ptr) { ++errors_seen; }
}  // namespace

// Designated initializers: needing nothing deduced, they compile with every compiler.
// With aggregate deduction (GCC, clang 17 and later) the template arguments may be left
// out too.
[[maybe_unused]] static auto designated_error_only = mproc::callbacks<>{.error_callback = on_error};
#if !defined(__clang__) || __clang_major__ >= 17
[[maybe_unused]] static auto designated_deduced = mproc::callbacks{.error_callback = on_error};
#endif

TEST_CASE("callbacks{.error_callback = f} (designated initializers)", "[parity][pool]") {
  mproc::Pool pool(1);
#if !defined(__clang__) || __clang_major__ >= 17
  auto cb = mproc::callbacks{.error_callback = on_error};
#else
  auto cb = mproc::callbacks<>{.error_callback = on_error};
#endif
  errors_seen = 0;
  auto bad = pool.apply_async(cb, fail_task, 1);
  CHECK_THROWS_AS(bad.get(), std::exception);
  auto good = pool.apply_async(cb, fail_task, 0);
  CHECK(good.get() == 0);
  CHECK(errors_seen.load() == 1);
}
