// Start methods and start policies.
#include <catch2/catch.hpp>

#include "spawn_entry.hpp"
#include "test_support.hpp"

#include <algorithm>
#include <map>
#include <atomic>
#include <chrono>
#include <string>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <poll.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <mproc/context.hpp>
#include <mproc/connection.hpp>
#include <mproc/pool.hpp>
#include <mproc/process.hpp>
#include <mproc/shared_memory.hpp>
#include <mproc/sharedctypes.hpp>
#include <mproc/synchronize.hpp>
#include <mproc/detail/hmac.hpp>  // a forged answer to the forkserver's challenge
#include <mproc/serialization/boost.hpp>  // types with a Boost serialize()

using namespace std::chrono_literals;

namespace {

/// A user-written policy: counts and logs each launch, then forks like fork_policy.
struct counting_fork_policy {
  static inline std::atomic<int> launches{0};
  static inline std::string last_name;
  static mproc::launched_child launch(const mproc::launch_request& r) {
    ++launches;
    last_name = std::string(r.name);
    mproc::detail::log(mproc::log_level::info, "launching %s", last_name.c_str());
    return mproc::fork_policy::launch(r);
  }
};

/// A policy that starts its child with its own fork() call.
struct raw_fork_policy {
  static mproc::launched_child launch(const mproc::launch_request& r) {
    pid_t pid = mproc::detail::fork_child(r.child_main);
    return {pid, {}};  // no pidfd: the library opens one
  }
};

struct not_a_policy {};

void exit_with(int code) { std::exit(code); }
using mproc_test::init_from_cmdline;

}  // namespace

static_assert(mproc::start_policy<mproc::fork_policy>);
static_assert(mproc::start_policy<mproc::dynamic_policy>);
static_assert(mproc::start_policy<counting_fork_policy>);
static_assert(!mproc::start_policy<not_a_policy>);
static_assert(!mproc::start_policy<int>);

TEST_CASE("start method setting", "[context]") {
  CHECK(mproc::get_start_method() == mproc::start_method::fork);
  auto all = mproc::get_all_start_methods();
  REQUIRE_FALSE(all.empty());
  CHECK(all.front() == mproc::start_method::fork);
  mproc::set_start_method(mproc::start_method::spawn);
  CHECK(mproc::get_start_method() == mproc::start_method::spawn);
  mproc::set_start_method(mproc::start_method::fork);
  CHECK(mproc::get_start_method() == mproc::start_method::fork);
  CHECK(std::string(mproc::to_string(mproc::start_method::forkserver)) == "forkserver");
}

TEST_CASE("init records the command line", "[context]") {
  char arg0[] = "prog";
  char arg1[] = "--flag";
  char* argv[] = {arg0, arg1, nullptr};
  mproc::init(2, argv);
  CHECK(mproc::initialized());
  CHECK(mproc::detail::bootstrap().argv == std::vector<std::string>{"prog", "--flag"});
  CHECK_FALSE(mproc::detail::bootstrap().executable.empty());
}

TEST_CASE("spawn and forkserver without init raise a clear start_method_error", "[context]") {
  // Pretend init was never called (another test case may have called it).
  auto& b = mproc::detail::bootstrap();
  bool was_called;
  {
    std::lock_guard lk(b.m);
    was_called = std::exchange(b.called, false);
  }
  struct restore {
    bool v;
    ~restore() {
      std::lock_guard lk(mproc::detail::bootstrap().m);
      mproc::detail::bootstrap().called = v;
    }
  } r{was_called};
  auto expect_missing_init = [](auto&& start, const char* method) {
    try {
      start();
      FAIL("no exception");
    } catch (const mproc::start_method_error& e) {
      std::string what = e.what();
      CHECK_THAT(what, Catch::Contains(method));
      CHECK_THAT(what, Catch::Contains("mproc::init(argc, argv)"));
    }
  };
  mproc::Process by_option({.name = "s", .daemon = false, .method = mproc::start_method::spawn},
                           exit_with, 3);
  expect_missing_init([&] { by_option.start(); }, "'spawn'");
  CHECK_THROWS_AS(by_option.pid(), mproc::state_error);  // nothing was started

  mproc::set_start_method(mproc::start_method::forkserver);
  mproc::Process by_default(exit_with, 0);
  expect_missing_init([&] { by_default.start(); }, "'forkserver'");
  mproc::set_start_method(mproc::start_method::fork);
  by_default.start();  // the failed attempt left the object usable
  CHECK(by_default.join(10s));
  CHECK(by_default.exitcode() == 0);

  mproc::basic_process<mproc::spawn_policy> fixed(exit_with, 1);
  expect_missing_init([&] { fixed.start(); }, "'spawn'");
  mproc::basic_process<mproc::forkserver_policy> fixed2(exit_with, 1);
  expect_missing_init([&] { fixed2.start(); }, "'forkserver'");
  CHECK(mproc::active_children().empty());
}

TEST_CASE("compile-time fork_policy and an explicit fork option", "[context]") {
  mproc::basic_process<mproc::fork_policy> p([] { std::exit(4); });
  p.start();
  REQUIRE(p.join(10s));
  CHECK(p.exitcode() == 4);
  mproc::Process q({.name = "", .daemon = false, .method = mproc::start_method::fork},
                   [] { std::exit(5); });
  q.start();
  REQUIRE(q.join(10s));
  CHECK(q.exitcode() == 5);
}

TEST_CASE("a user-written start policy plugs in", "[context]") {
  counting_fork_policy::launches = 0;
  mproc::basic_process<counting_fork_policy> p({.name = "custom"}, [](int code) { std::exit(code); },
                                               6);
  p.start();
  REQUIRE(p.join(10s));
  CHECK(p.exitcode() == 6);
  CHECK(counting_fork_policy::launches == 1);
  CHECK(counting_fork_policy::last_name == "custom");

  mproc::basic_process<raw_fork_policy> r([] { std::exit(8); });
  r.start();
  CHECK(r.sentinel() >= 0);
  REQUIRE(r.join(10s));
  CHECK(r.exitcode() == 8);
}

namespace {
int triple(int x) { return 3 * x; }
}  // namespace

TEST_CASE("basic_pool starts its workers with its policy, a user-written one included",
          "[context][pool]") {
  mproc_test::ensure_init();
  const std::vector<int> in{1, 2, 3, 4, 5, 6, 7};
  const std::vector<int> want{3, 6, 9, 12, 15, 18, 21};
  counting_fork_policy::launches = 0;
  {
    mproc::basic_pool<counting_fork_policy> pool(2);
    CHECK(pool.map(triple, in) == want);
  }
  CHECK(counting_fork_policy::launches >= 2);  // one per worker (more if one is replaced)
  mproc::basic_pool<mproc::spawn_policy> spawned(2);
  CHECK(spawned.map(triple, in) == want);
  mproc::basic_pool<mproc::forkserver_policy> served(2);
  CHECK(served.map(triple, in) == want);
  mproc::basic_pool<mproc::fork_policy> forked(2);
  CHECK(forked.map(triple, in) == want);
}

// ---- spawn and forkserver
//
// Children spawned from this executable enter through init before Catch's main runs
// (tests/spawn_entry.hpp); the test process itself calls init as main would.

namespace {

using mproc::start_method;

mproc::process_options with(start_method m, std::string name = "") {
  return {.name = std::move(name), .daemon = false, .method = m};
}

int count_fds() {
  int n = 0;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (::readdir(d)) ++n;
    ::closedir(d);
  }
  return n;
}

bool is_gone(pid_t pid) {
  // Gone, or a zombie of someone else's (not ours to reap): neither runs any more.
  if (::kill(pid, 0) != 0) return errno == ESRCH;
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", int(pid));
  std::FILE* f = std::fopen(path, "r");
  if (!f) return true;
  int p;
  char comm[256], state = '?';
  int n = std::fscanf(f, "%d %255s %c", &p, comm, &state);
  std::fclose(f);
  return n == 3 && (state == 'Z' || state == 'X');
}

bool wait_gone(pid_t pid, std::chrono::milliseconds limit) {
  auto end = std::chrono::steady_clock::now() + limit;
  while (!is_gone(pid)) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

void cleanup(mproc::Process& p) {
  try {
    if (!p.join(0ms)) {
      p.kill();
      (void)p.join(5s);
    }
  } catch (...) {
  }
}

// Targets (free functions: they cross as code offsets).
void noop() {}
void throw_runtime() { throw std::runtime_error("boom in child"); }
void raise_kill() { ::raise(SIGKILL); }
void sleep_long() {
  for (int i = 0; i < 300; ++i) ::usleep(100'000);
}
void add_to(mproc::Value<int> v, int n) {
  std::scoped_lock g(v.get_lock());
  v.value() += n;
}
void check_args(int i, std::string s, std::vector<double> d, std::string_view c,
                mproc::RawValue<int> out) {
  out.value() = (i == 42 && s == "text" && d == std::vector<double>{1.5, 2.5} && std::string(c) == "cstr")
                    ? 1
                    : 2;
}
void report_identity(mproc::Connection c) {
  auto parent = mproc::parent_process();
  c.send(mproc::current_process().name);
  c.send(parent ? int(parent->pid) : -1);
}
void fill_array(mproc::Array<long> a, mproc::RawArray<int> r) {
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = long(i * 10);
  for (auto& x : r) x = -1;
}
void hold_lock(mproc::Lock l, mproc::RLock rl, mproc::Connection c) {
  l.acquire();
  rl.acquire();
  c.send(std::string("held"));
  (void)c.recv<std::string>(30s);
  rl.release();
  l.release();
  c.send(std::string("released"));
}
void echo_twice(mproc::Connection c) {
  for (int i = 0; i < 2; ++i) c.send(c.recv<int>(30s) * 2);
}
void write_shm(mproc::SharedMemory m) {
  auto s = m.as<unsigned char>();
  for (std::size_t i = 0; i < s.size(); ++i) s[i] = static_cast<unsigned char>(i + 1);
}
void sync_child(mproc::Semaphore s, mproc::BoundedSemaphore bs, mproc::Event go, mproc::Event done,
                mproc::Condition c, mproc::RawValue<int> flag, mproc::Barrier b) {
  s.release();
  s.release();
  bs.acquire();  // the bound 1 lets exactly one acquire through
  if (!go.wait(30s)) std::exit(10);
  done.set();
  {
    std::scoped_lock g(c);
    flag.value() = 1;
    c.notify_all();
  }
  (void)b.wait(30s);
}
void nested(mproc::Value<int> v, int method) {
  // A spawned child may start children of its own, by any method.
  mproc::Process p(with(start_method(method)), add_to, v, 10);
  p.start();
  if (!p.join(30s)) std::exit(20);
  if (p.exitcode() != 0) std::exit(21);
}
struct stateful_adder {
  int n = 0;
  template <class Ar>
  void serialize(Ar& ar, unsigned) {
    ar & n;
  }
  void operator()(mproc::Value<int> v) const { v.value() += n; }
};

const std::vector<start_method> fresh_image_methods{start_method::spawn, start_method::forkserver};

}  // namespace

TEST_CASE("all three start methods are available", "[context][spawn]") {
  auto all = mproc::get_all_start_methods();
  CHECK(all == std::vector<start_method>{start_method::fork, start_method::spawn,
                                         start_method::forkserver});
}

TEST_CASE("spawn and forkserver: exit codes, exceptions, names, parent", "[context][spawn]") {
  init_from_cmdline();
  for (start_method m : fresh_image_methods) {
    INFO(mproc::to_string(m));
    mproc::Process ok(with(m), noop);
    mproc::Process code(with(m), exit_with, 7);
    mproc::Process thrown(with(m, "thrower"), throw_runtime);
    mproc::Process killed(with(m), raise_kill);
    for (auto* p : {&ok, &code, &thrown, &killed}) p->start();
    for (auto* p : {&ok, &code, &thrown, &killed}) {
      CHECK(p->join(30s));
      cleanup(*p);
    }
    CHECK(ok.exitcode() == 0);
    CHECK(code.exitcode() == 7);
    CHECK(thrown.exitcode() == 1);
    CHECK(killed.exitcode() == -SIGKILL);
    CHECK_FALSE(ok.is_alive());

    mproc::Process sleeper(with(m), sleep_long);
    sleeper.start();
    CHECK(sleeper.is_alive());
    CHECK_FALSE(sleeper.join(50ms));
    sleeper.terminate();
    CHECK(sleeper.join(30s));
    CHECK(sleeper.exitcode() == -SIGTERM);
    cleanup(sleeper);

    auto [a, b] = mproc::Pipe();
    mproc::Process named(with(m, "reporter"), report_identity, b);
    named.start();
    b = mproc::Connection();  // the child holds its own end now
    CHECK(a.recv<std::string>(30s) == "reporter");
    CHECK(a.recv<int>(30s) == int(::getpid()));
    CHECK(named.join(30s));
    CHECK(named.exitcode() == 0);
    cleanup(named);
  }
  CHECK(mproc::active_children().empty());
}

TEST_CASE("spawn and forkserver: arguments and handles arrive as the same objects",
          "[context][spawn]") {
  init_from_cmdline();
  for (start_method m : fresh_image_methods) {
    INFO(mproc::to_string(m));
    SECTION(std::string("values ") + mproc::to_string(m)) {
      mproc::RawValue<int> out(0);
      mproc::Process p(with(m), check_args, 42, std::string("text"), std::vector<double>{1.5, 2.5},
                       "cstr", out);
      p.start();
      REQUIRE(p.join(30s));
      CHECK(p.exitcode() == 0);
      CHECK(out.value() == 1);
    }
    SECTION(std::string("Value incremented by children ") + mproc::to_string(m)) {
      mproc::Value<int> v(100);
      std::vector<mproc::Process> ps;
      for (int i = 0; i < 3; ++i) ps.emplace_back(with(m), add_to, v, 5);
      ps.emplace_back(with(m), stateful_adder{1000}, v);
      for (auto& p : ps) p.start();
      for (auto& p : ps) {
        CHECK(p.join(30s));
        CHECK(p.exitcode() == 0);
        cleanup(p);
      }
      CHECK(v.load() == 1115);
    }
    SECTION(std::string("Array and RawArray ") + mproc::to_string(m)) {
      mproc::Array<long> a(5);
      mproc::RawArray<int> r{1, 2, 3};
      mproc::Process p(with(m), fill_array, a, r);
      p.start();
      REQUIRE(p.join(30s));
      CHECK(a.to_vector() == std::vector<long>{0, 10, 20, 30, 40});
      CHECK(r.to_vector() == std::vector<int>{-1, -1, -1});
    }
    SECTION(std::string("Lock and RLock held across ") + mproc::to_string(m)) {
      mproc::Lock l;
      mproc::RLock rl;
      auto [a, b] = mproc::Pipe();
      mproc::Process p(with(m), hold_lock, l, rl, b);
      p.start();
      b = mproc::Connection();
      REQUIRE(a.recv<std::string>(30s) == "held");
      CHECK_FALSE(l.acquire(false));
      CHECK_FALSE(rl.acquire(false));
      a.send(std::string("go"));
      CHECK(a.recv<std::string>(30s) == "released");
      CHECK(l.acquire(true, 10s));
      l.release();
      CHECK(p.join(30s));
      CHECK(p.exitcode() == 0);
      cleanup(p);
    }
    SECTION(std::string("Connection ") + mproc::to_string(m)) {
      auto [a, b] = mproc::Pipe();
      mproc::Process p(with(m), echo_twice, b);
      p.start();
      b = mproc::Connection();
      a.send(21);
      CHECK(a.recv<int>(30s) == 42);
      a.send(-4);
      CHECK(a.recv<int>(30s) == -8);
      CHECK(p.join(30s));
      CHECK(p.exitcode() == 0);
      cleanup(p);
    }
    SECTION(std::string("Semaphore, Event, Condition, Barrier ") + mproc::to_string(m)) {
      mproc::Semaphore s(0);
      mproc::BoundedSemaphore bs(1);
      mproc::Event go, done;
      mproc::Condition c;
      mproc::RawValue<int> flag(0);
      mproc::Barrier b(2);
      mproc::Process p(with(m), sync_child, s, bs, go, done, c, flag, b);
      p.start();
      CHECK(s.acquire(true, 30s));
      CHECK(s.acquire(true, 30s));
      go.set();
      CHECK(done.wait(30s));
      CHECK_FALSE(bs.acquire(false));  // taken by the child
      {
        std::scoped_lock g(c);
        CHECK(c.wait_for([&] { return flag.value() == 1; }, 30s));
      }
      CHECK(b.wait(30s) <= 1);
      CHECK(p.join(30s));
      CHECK(p.exitcode() == 0);
      cleanup(p);
    }
    SECTION(std::string("a Barrier whose action is a closure stays home ") + mproc::to_string(m)) {
      // (A free function or captureless lambda travels: see test_parity_process.)
      int captured = 0;
      mproc::Barrier b(2, [captured] { (void)captured; });
      mproc::Process p(with(m), [](mproc::Barrier) {}, b);
      CHECK_THROWS_AS(p.start(), mproc::state_error);
    }
    SECTION(std::string("SharedMemory ") + mproc::to_string(m)) {
      mproc::SharedMemory shm(mproc::create, 64);
      mproc::Process p(with(m), write_shm, shm);
      p.start();
      REQUIRE(p.join(30s));
      CHECK(p.exitcode() == 0);
      auto s = shm.as<unsigned char>();
      CHECK(int(s[0]) == 1);
      CHECK(int(s[63]) == 64);
      shm.close();
      shm.unlink();
    }
  }
}

TEST_CASE("spawn and forkserver children start children of their own, also from threads",
          "[context][spawn]") {
  init_from_cmdline();
  mproc::Value<int> v(0);
  int expected = 0;
  for (start_method outer : fresh_image_methods)
    for (start_method inner : {start_method::fork, start_method::spawn, start_method::forkserver}) {
      INFO(mproc::to_string(outer) << " -> " << mproc::to_string(inner));
      mproc::Process p(with(outer), nested, v, int(inner));
      std::thread([&] { p.start(); }).join();  // the child outlives the starting thread
      CHECK(p.join(60s));
      CHECK(p.exitcode() == 0);
      cleanup(p);
      expected += 10;
    }
  CHECK(v.load() == expected);
}

TEST_CASE("forks and spawns asked for by racing short-lived threads share one service thread",
          "[context][spawn]") {
  // Both kinds of start from a thread other than main run on the same long-lived thread;
  // the children must outlive the threads that asked, and no request may wait on another.
  init_from_cmdline();
  constexpr int threads = 4, per_thread = 6;
  std::vector<std::unique_ptr<mproc::Process>> procs(threads * per_thread);
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t)
    ts.emplace_back([t, &procs] {
      for (int i = 0; i < per_thread; ++i) {
        int k = t * per_thread + i;
        auto m = k % 2 ? start_method::spawn : start_method::fork;
        procs[k] = std::make_unique<mproc::Process>(with(m), exit_with, 10 + k);
        procs[k]->start();
      }
    });
  for (auto& th : ts) th.join();
  for (int k = 0; k < threads * per_thread; ++k) {
    INFO("child " << k);
    REQUIRE(procs[k]->join(60s));
    CHECK(procs[k]->exitcode() == 10 + k);
    cleanup(*procs[k]);
  }
}

TEST_CASE("spawn and forkserver refuse a closure with start_method_error", "[context][spawn]") {
  init_from_cmdline();
  int captured = 3;
  for (start_method m : fresh_image_methods) {
    mproc::Process p(with(m), [captured] { std::exit(captured); });
    try {
      p.start();
      FAIL("no exception");
    } catch (const mproc::start_method_error& e) {
      CHECK_THAT(std::string(e.what()), Catch::Contains("portable callable"));
    }
    CHECK_THROWS_AS(p.pid(), mproc::state_error);
  }
}

TEST_CASE("spawn and forkserver leak no descriptors and leave no zombies", "[context][spawn]") {
  init_from_cmdline();
  {  // the forkserver connection is opened once and kept: start it before counting
    mproc::Process warm(with(start_method::forkserver), noop);
    warm.start();
    REQUIRE(warm.join(30s));
  }
  const int before = count_fds();
  std::vector<pid_t> pids;
  for (int round = 0; round < 2; ++round)
    for (start_method m : fresh_image_methods) {
      mproc::Value<int> v(0);
      mproc::Process p(with(m), add_to, v, 1);
      p.start();
      pids.push_back(p.pid());
      CHECK(p.join(30s));
      CHECK(v.load() == 1);
    }
  CHECK(count_fds() == before);
  for (pid_t pid : pids) CHECK(wait_gone(pid, 3000ms));
  // Nothing of ours is left to reap.
  int st;
  CHECK(::waitpid(-1, &st, WNOHANG) <= 0);
}

TEST_CASE("spawn: a program whose main does not call init gets start_method_error, no runaway",
          "[context][spawn]") {
  int p[2];
  REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, p[1], 1);
  std::string path = std::string(MPROC_TEST_HELPER_DIR) + "/spawn_no_init";
  char* argv[] = {path.data(), nullptr};
  // The helper must not see this process's own marker (there is none: checked).
  REQUIRE(std::getenv("MPROC_SPAWN") == nullptr);
  pid_t pid = -1;
  REQUIRE(::posix_spawn(&pid, path.c_str(), &fa, nullptr, argv, environ) == 0);
  posix_spawn_file_actions_destroy(&fa);
  ::close(p[1]);
  std::string out;
  char buf[4096];
  auto end = std::chrono::steady_clock::now() + 60s;
  for (;;) {
    pollfd pf{p[0], POLLIN, 0};
    if (::poll(&pf, 1, 1000) > 0) {
      ssize_t n = ::read(p[0], buf, sizeof buf);
      if (n <= 0) break;
      out.append(buf, std::size_t(n));
    }
    if (std::chrono::steady_clock::now() > end) break;
  }
  ::close(p[0]);
  int status = 0;
  if (::waitpid(pid, &status, WNOHANG) == 0) {
    std::this_thread::sleep_for(2s);
    if (::waitpid(pid, &status, WNOHANG) == 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      FAIL("helper did not finish");
    }
  }
  INFO(out);
  CHECK(mproc::detail::exitcode_from_status(status) == 0);
  CHECK_THAT(out, Catch::Contains("child: start_method_error"));
  CHECK_THAT(out, Catch::Contains("refuses to start children"));
  CHECK_THAT(out, Catch::Contains("parent: start_method_error"));
  CHECK_THAT(out, Catch::Contains("does not call mproc::init(argc, argv) as the first line of main"));
  CHECK_THAT(out, !Catch::Contains("runaway!"));
  CHECK_THAT(out, !Catch::Contains("target ran"));
}

TEST_CASE("spawn and forkserver children and the forkserver die with a SIGKILLed parent",
          "[context][spawn]") {
  int p[2];
  REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, p[1], 1);
  std::string path = std::string(MPROC_TEST_HELPER_DIR) + "/spawn_parent_killed";
  char* argv[] = {path.data(), nullptr};
  pid_t helper = -1;
  REQUIRE(::posix_spawn(&helper, path.c_str(), &fa, nullptr, argv, environ) == 0);
  posix_spawn_file_actions_destroy(&fa);
  ::close(p[1]);
  std::string out;
  char buf[256];
  auto end = std::chrono::steady_clock::now() + 30s;
  while (std::count(out.begin(), out.end(), '\n') < 4 && std::chrono::steady_clock::now() < end) {
    pollfd pf{p[0], POLLIN, 0};
    if (::poll(&pf, 1, 500) > 0) {
      ssize_t n = ::read(p[0], buf, sizeof buf);
      if (n <= 0) break;
      out.append(buf, std::size_t(n));
    }
  }
  ::close(p[0]);
  std::vector<pid_t> pids;
  for (std::size_t i = 0, j; (j = out.find('\n', i)) != std::string::npos; i = j + 1)
    pids.push_back(std::atoi(out.substr(i, j - i).c_str()));
  ::kill(helper, SIGKILL);
  int st;
  ::waitpid(helper, &st, 0);
  INFO(out);
  REQUIRE(pids.size() == 4);
  for (pid_t k : pids) {
    CHECK(k > 0);
    CHECK(wait_gone(k, 3000ms));
  }
}

// ---- the forkserver itself: where it lives, who may talk to it, when it ends

namespace {

/// A running tests/helpers/forkserver_probe and what it reported.
struct probe {
  pid_t pid = -1;
  int in = -1;  // its standard input: closing it ends the probe normally
  std::map<std::string, std::string> info;
  [[nodiscard]] pid_t pid_of(const char* key) const {
    auto it = info.find(key);
    return it == info.end() ? -1 : std::atoi(it->second.c_str());
  }
  [[nodiscard]] std::string dir() const { return info.count("dir") ? info.at("dir") : ""; }
};

probe start_probe(const char* mode) {
  int in[2], out[2];
  REQUIRE(::pipe2(in, O_CLOEXEC) == 0);
  REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  std::string path = std::string(MPROC_TEST_HELPER_DIR) + "/forkserver_probe";
  char* argv[] = {path.data(), const_cast<char*>(mode), nullptr};
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

// ThreadSanitizer's runtime may start a background thread of its own in a forked child.
constexpr int kRuntimeThreads = mproc_test::under_tsan ? 1 : 0;

/// Field `key` of /proc/<pid>/status (empty when the process is gone).
std::string proc_status(pid_t pid, const std::string& key) {
  std::FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/status").c_str(), "r");
  if (!f) return {};
  char line[512];
  std::string out;
  while (std::fgets(line, sizeof line, f))
    if (std::strncmp(line, key.c_str(), key.size()) == 0 && line[key.size()] == ':') {
      out = line + key.size() + 1;
      out.erase(0, out.find_first_not_of(" \t"));
      out.erase(out.find_last_not_of(" \t\n") + 1);
    }
  std::fclose(f);
  return out;
}

bool wait_path_gone(const std::string& path, std::chrono::milliseconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  struct stat st;
  while (::lstat(path.c_str(), &st) == 0) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

/// Connects to the forkserver's socket and reads its 32-byte challenge; -1 if refused.
int connect_forkserver(const std::string& path) {
  int s = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::strncpy(sa.sun_path, path.c_str(), sizeof sa.sun_path - 1);
  if (::connect(s, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    ::close(s);
    return -1;
  }
  return s;
}

/// Reads what the peer sends within the limit, until EOF: (bytes, saw EOF).
std::pair<std::string, bool> drain(int s, std::chrono::milliseconds limit) {
  std::string got;
  char buf[256];
  const auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    pollfd pf{s, POLLIN, 0};
    if (::poll(&pf, 1, 50) <= 0) continue;
    ssize_t n = ::recv(s, buf, sizeof buf, 0);
    if (n <= 0) return {got, true};
    got.append(buf, std::size_t(n));
  }
  return {got, false};
}

}  // namespace

TEST_CASE("forkserver: forked from init, single-threaded, not a child, private socket",
          "[context][forkserver]") {
  for (const char* mode : {"eager", "lazy"}) {
    DYNAMIC_SECTION(mode) {
      probe pr = start_probe(mode);
      const pid_t server = pr.pid_of("server"), child = pr.pid_of("child");
      const std::string dir = pr.dir();
      REQUIRE(server > 0);
      REQUIRE(child > 0);
      const int threads = std::atoi(proc_status(server, "Threads").c_str());
      CHECK(threads >= 1);
      CHECK(threads <= 1 + kRuntimeThreads);
      CHECK(proc_status(server, "Name") == "mproc-forksrv");
      // Forked from init it is nobody's child (a wait() loop in the program never waits
      // for it); spawned on first use it is the program's child.
      const std::string ppid = proc_status(server, "PPid");
      if (std::strcmp(mode, "eager") == 0) CHECK(ppid != std::to_string(pr.pid));
      else CHECK(ppid == std::to_string(pr.pid));
      CHECK(proc_status(child, "PPid") == std::to_string(server));
      struct stat st;
      REQUIRE(::stat(dir.c_str(), &st) == 0);
      CHECK((st.st_mode & 0777) == 0700);
      CHECK(st.st_uid == ::geteuid());
      REQUIRE(::stat((dir + "/s").c_str(), &st) == 0);
      CHECK(S_ISSOCK(st.st_mode));
      CHECK((st.st_mode & 0777) == 0600);
      // A normal exit of the program ends the server and its children and removes the
      // directory.
      ::close(pr.in);
      CHECK(mproc_test::join_child(pr.pid, 20s) == 0);
      CHECK(wait_gone(server, 3000ms));
      CHECK(wait_gone(child, 3000ms));
      CHECK(wait_path_gone(dir, 3000ms));
    }
  }
}

TEST_CASE("forkserver: a SIGKILLed program takes the server, its children and its socket with it",
          "[context][forkserver]") {
  for (const char* mode : {"eager", "lazy"}) {
    DYNAMIC_SECTION(mode) {
      probe pr = start_probe(mode);
      const pid_t server = pr.pid_of("server"), child = pr.pid_of("child");
      REQUIRE(server > 0);
      REQUIRE(!pr.dir().empty());
      ::kill(pr.pid, SIGKILL);
      CHECK(mproc_test::join_child(pr.pid, 20s) == -SIGKILL);
      ::close(pr.in);
      CHECK(wait_gone(server, 3000ms));
      CHECK(wait_gone(child, 3000ms));
      CHECK(wait_path_gone(pr.dir(), 3000ms));
    }
  }
}

TEST_CASE("forkserver: only the key holder of the same uid gets in", "[context][forkserver]") {
  init_from_cmdline();
  {
    mproc::Process warm(with(start_method::forkserver), noop);
    warm.start();
    REQUIRE(warm.join(30s));
  }
  auto& fs = mproc::detail::forkserver_state();
  const std::string path = fs.addr.path, dir = fs.addr.dir;
  REQUIRE(!path.empty());

  SECTION("a wrong answer to the challenge is cut off") {
    int s = connect_forkserver(path);
    REQUIRE(s >= 0);
    char nonce[32];
    REQUIRE(mproc::detail::recv_all_fds(s, nonce, sizeof nonce, nullptr, 5'000'000'000, "nonce"));
    const std::string wrong = mproc::detail::hmac_sha256("not the key", std::string(nonce, 32));
    REQUIRE(::send(s, wrong.data(), wrong.size(), MSG_NOSIGNAL) == 32);
    auto [got, eof] = drain(s, 5s);
    CHECK(got.empty());  // no welcome byte
    CHECK(eof);
    ::close(s);
  }
  SECTION("silence is cut off after the challenge time limit") {
    int s = connect_forkserver(path);
    REQUIRE(s >= 0);
    auto [got, eof] = drain(s, 6s);
    CHECK(got.size() == 32);  // the challenge, then nothing
    CHECK(eof);
    ::close(s);
  }
  SECTION("another uid cannot reach the socket, and is refused if it does") {
    if (::geteuid() != 0) {
      WARN("not root: cannot act as another user, so this section checks nothing");
      return;
    }
    auto as_nobody = [&](bool expect_refused_connect) {
      pid_t pid = ::fork();
      if (pid == 0) {
        if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(10);
        int s = connect_forkserver(path);
        if (expect_refused_connect) ::_exit(s < 0 ? 0 : 11);
        if (s < 0) ::_exit(12);
        auto [got, eof] = drain(s, 5s);
        ::_exit(got.empty() && eof ? 0 : 13);  // closed before any challenge
      }
      return mproc_test::join_child(pid, 20s);
    };
    CHECK(as_nobody(true) == 0);  // the 0700 directory keeps it out
    // Open the way (as root, for this test only): SO_PEERCRED still refuses it.
    REQUIRE(::chmod(dir.c_str(), 0711) == 0);
    REQUIRE(::chmod(path.c_str(), 0666) == 0);
    const int code = as_nobody(false);
    ::chmod(path.c_str(), 0600);
    ::chmod(dir.c_str(), 0700);
    CHECK(code == 0);
  }
  // The server is unharmed and serves the key holder.
  mproc::Process after(with(start_method::forkserver), exit_with, 7);
  after.start();
  REQUIRE(after.join(30s));
  CHECK(after.exitcode() == 7);
}

TEST_CASE("forkserver: ignores the group's signals; a killed server is replaced on the next start",
          "[context][forkserver]") {
  init_from_cmdline();
  mproc::Process first(with(start_method::forkserver), exit_with, 3);
  first.start();
  REQUIRE(first.join(30s));
  auto& fs = mproc::detail::forkserver_state();
  const pid_t old_server = fs.server_pid;
  const std::string old_dir = fs.addr.dir;
  REQUIRE(old_server > 0);
  // Signals meant for the program's group (Ctrl-C, a SIGTERM to the group) leave the
  // server to follow the program.
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT}) ::kill(old_server, sig);
  std::this_thread::sleep_for(200ms);
  CHECK_FALSE(is_gone(old_server));
  mproc::Process still(with(start_method::forkserver), exit_with, 5);
  still.start();
  REQUIRE(still.join(30s));
  CHECK(still.exitcode() == 5);
  CHECK(fs.server_pid == old_server);
  ::kill(old_server, SIGKILL);
  REQUIRE(wait_gone(old_server, 3000ms));
  mproc::Process second(with(start_method::forkserver), exit_with, 4);
  second.start();
  REQUIRE(second.join(30s));
  CHECK(second.exitcode() == 4);
  CHECK(fs.server_pid > 0);
  CHECK(fs.server_pid != old_server);
  struct stat st;
  CHECK(::stat(old_dir.c_str(), &st) != 0);  // the dead server's directory is removed
}

TEST_CASE("forkserver and spawn requests from a hostile peer are refused, not obeyed",
          "[context][forkserver]") {
  using mproc::detail::spawn_header;
  auto read_from = [](const std::string& bytes, std::int64_t timeout_ns = 2'000'000'000) {
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    REQUIRE(::send(sv[0], bytes.data(), bytes.size(), MSG_NOSIGNAL) == ssize_t(bytes.size()));
    ::shutdown(sv[0], SHUT_WR);
    mproc::detail::spawn_request req;
    try {
      bool ok = mproc::detail::read_spawn_request(sv[1], req, timeout_ns, timeout_ns, "test request");
      ::close(sv[0]);
      ::close(sv[1]);
      return std::string(ok ? "ok" : "eof");
    } catch (const mproc::error& e) {
      ::close(sv[0]);
      ::close(sv[1]);
      return std::string(e.what());
    }
  };
  auto header_bytes = [](const spawn_header& h) {
    return std::string(reinterpret_cast<const char*>(&h), sizeof h);
  };
  spawn_header good;
  good.entry_offset = mproc::detail::encode_code_address(reinterpret_cast<const void*>(&exit_with));
  good.payload_size = 3;
  CHECK(read_from(header_bytes(good) + "abc") == "ok");
  CHECK(read_from("") == "eof");

  spawn_header h = good;
  h.magic = 42;
  CHECK_THAT(read_from(header_bytes(h) + "abc"), Catch::Contains("bad magic"));
  h = good;
  h.payload_size = std::uint64_t(1) << 40;  // claims a terabyte: refused, nothing allocated
  CHECK_THAT(read_from(header_bytes(h)), Catch::Contains("larger than 1 GiB"));
  h = good;
  h.payload_size = std::uint64_t(1) << 29;  // allowed size, but the peer stops early
  CHECK_THAT(read_from(header_bytes(h) + "abc"), Catch::Contains("peer closed mid-"));
  h = good;
  h.nfds = 1000;
  CHECK_THAT(read_from(header_bytes(h) + "abc"), Catch::Contains("descriptors"));
  h = good;
  h.nfds = 2;  // announced, not sent
  CHECK_THAT(read_from(header_bytes(h) + "abc"), Catch::Contains("2 descriptors, 0 arrived"));
  h = good;
  h.entry_offset = 0x7fff'ffff'ffffLL;
  CHECK_THAT(read_from(header_bytes(h) + "abc"), Catch::Contains("not code of this program"));
  CHECK_THAT(read_from(header_bytes(good).substr(0, 10)), Catch::Contains("closed mid-message"));
}
