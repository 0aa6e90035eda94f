#include <mproc/pool.hpp>

#include <catch2/catch.hpp>

#include "spawn_entry.hpp"
#include "test_support.hpp"

#include <algorithm>
#include <csignal>
#include <ctime>
#include <dirent.h>
#include <fstream>
#include <list>
#include <map>
#include <numeric>
#include <optional>
#include <random>
#include <ranges>
#include <set>
#include <sstream>
#include <thread>

using namespace std::chrono_literals;

namespace {

int square(int x) { return x * x; }
long add(long a, long b) { return a + b; }
std::string shout(const std::string& s) { return s + "!"; }
int pid_of_worker(int) { return static_cast<int>(::getpid()); }
std::string worker_name(int) { return mproc::current_process().name; }

int fail_on_three(int x) {
  if (x == 3) throw std::invalid_argument("three is not allowed");
  return x;
}
struct custom_error : std::exception {
  const char* what() const noexcept override { return "custom failure"; }
};
int throw_custom(int) { throw custom_error(); }

int die_on(int x) {
  if (x == 5) ::raise(SIGKILL);
  if (x == 6) ::_exit(3);
  if (x == 7) {
    std::signal(SIGABRT, SIG_DFL);  // the test framework's handler is inherited by workers
    std::abort();
  }
  return x * 2;
}
int sleep_ms(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ms;
}
int slow_identity(int x) {
  std::this_thread::sleep_for(200us);
  return x;
}

// A lazy, single-pass, optionally endless input range, as a generator looks to map and
// imap. Not std::views::iota: clang 14 cannot compile libstdc++ 12's views.
struct counting {
  struct iterator {
    using value_type = int;
    using difference_type = std::ptrdiff_t;
    int i = 0;
    int operator*() const { return i; }
    iterator& operator++() {
      ++i;
      return *this;
    }
    void operator++(int) { ++i; }
  };
  struct sentinel {
    std::optional<int> stop;
    friend bool operator==(const iterator& it, const sentinel& s) { return s.stop && it.i >= *s.stop; }
  };
  int from = 0;
  std::optional<int> stop;  // none: endless
  iterator begin() const { return {from}; }
  sentinel end() const { return {stop}; }
};
static_assert(std::ranges::input_range<counting> && !std::ranges::forward_range<counting>);

int g_init_value = 0;
void init_worker(int v) { g_init_value = v; }
int read_init(int) { return g_init_value; }
void bad_init() { throw std::runtime_error("initializer failed"); }

std::vector<double> scale(const std::vector<double>& v) {
  std::vector<double> out(v);
  for (auto& x : out) x *= 2;
  return out;
}

int count_fds() {
  int n = 0;
  DIR* d = ::opendir("/proc/self/fd");
  while (::readdir(d)) ++n;
  ::closedir(d);
  return n;
}

/// Direct children of this process, from /proc (includes zombies).
std::vector<pid_t> children() {
  std::vector<pid_t> out;
  DIR* d = ::opendir("/proc/self/task");
  while (auto* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::ifstream f(std::string("/proc/self/task/") + e->d_name + "/children");
    pid_t p;
    while (f >> p) out.push_back(p);
  }
  ::closedir(d);
  return out;
}

}  // namespace

TEST_CASE("map returns results in input order", "[pool]") {
  mproc::Pool pool(2);
  std::vector<int> in(1000);
  std::iota(in.begin(), in.end(), 0);
  for (std::size_t cs : {0, 1, 7, 1000, 5000}) {
    auto out = pool.map(square, in, cs);
    REQUIRE(out.size() == in.size());
    for (std::size_t i = 0; i < in.size(); ++i) REQUIRE(out[i] == in[i] * in[i]);
  }
  REQUIRE(pool.map(square, std::vector<int>{}).empty());
  REQUIRE(pool.map(shout, std::vector<std::string>{"a", "b"}) ==
          std::vector<std::string>{"a!", "b!"});
  // any input range, temporaries included
  auto r = pool.map(square, counting{0, 10});
  REQUIRE(r[9] == 81);
  std::list<int> l{1, 2, 3};
  REQUIRE(pool.map(square, l) == std::vector<int>{1, 4, 9});
}

namespace {
double thread_cpu_seconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}
/// Item i costs i^2 * 1.2 ns of this thread's CPU (as factorials do, roughly): the last
/// eighth of 800 items holds a third of the work. Returns (worker pid, CPU it used).
std::pair<int, double> growing_cost(int i) {
  const double t0 = thread_cpu_seconds();
  const double cost = double(i) * double(i) * 1.2e-9;
  while (thread_cpu_seconds() - t0 < cost) {
  }
  return {static_cast<int>(::getpid()), thread_cpu_seconds() - t0};
}
/// The busiest worker's share of all the CPU the items used.
double busiest_share(const std::vector<std::pair<int, double>>& r) {
  std::map<int, double> per;
  double total = 0;
  for (auto [pid, cpu] : r) {
    per[pid] += cpu;
    total += cpu;
  }
  double most = 0;
  for (auto& [pid, cpu] : per) most = std::max(most, cpu);
  return most / total;
}
}  // namespace

TEST_CASE("map's default chunking keeps workers even when item costs grow along the input", "[pool]") {
  // Python's fixed chunks (800 / (4 x 2) = 100 items) leave the last, costliest chunk
  // (a third of the work) to one worker while the other idles: the busiest worker's
  // share was 0.56..0.71. CPU time is counted, not wall time, so that a loaded machine
  // does not change the verdict much.
  std::vector<int> in(800);
  std::iota(in.begin(), in.end(), 1);
  mproc::Pool pool(2);
  std::vector<double> shares;
  int shared_tails = 0;
  for (int round = 0; round < 5; ++round) {
    auto r = pool.map(growing_cost, in);
    REQUIRE(r.size() == in.size());
    std::set<int> tail_workers;
    for (std::size_t k = 700; k < r.size(); ++k) tail_workers.insert(r[k].first);
    shared_tails += tail_workers.size() == 2;  // the costliest eighth is shared
    shares.push_back(busiest_share(r));
  }
  // Python's chunks never share the last eighth. A worker descheduled by a loaded
  // machine for the whole tail can leave it to the other in one round, not in most.
  std::sort(shares.begin(), shares.end());
  INFO("busiest worker's shares " << shares[0] << " " << shares[1] << " " << shares[2] << " " << shares[3] << " "
                                  << shares[4]);
  REQUIRE(shared_tails >= 3);
  // The median of five rounds: one round under ThreadSanitizer on a machine busy with a
  // build reached 0.604 (of three, the median); sanitized workers' CPU time is also
  // dominated by instrumentation, which blurs the shares, hence their wider bound.
  CHECK(shares[2] <= (mproc_test::under_tsan || mproc_test::under_asan ? 0.65 : 0.6));
  // An explicit chunksize is kept exactly: each chunk runs whole on one worker.
  auto r = pool.map(growing_cost, std::vector<int>(in.begin(), in.begin() + 200), 50);
  for (std::size_t k = 0; k < r.size(); ++k) REQUIRE(r[k].first == r[k - k % 50].first);
}

TEST_CASE("starmap unpacks tuples and pairs", "[pool]") {
  mproc::Pool pool(2);
  std::vector<std::pair<long, long>> pairs{{2, 10}, {3, 5}, {5, 4}};
  REQUIRE(pool.starmap(add, pairs) == std::vector<long>{12, 8, 9});
  std::vector<std::tuple<long, long>> tuples{{1, 1}, {2, 2}};
  REQUIRE(pool.starmap(add, tuples) == std::vector<long>{2, 4});
  auto lam = [](int a, const std::string& s) { return s + std::to_string(a); };
  REQUIRE(pool.starmap(lam, std::vector<std::tuple<int, std::string>>{{1, "x"}}) ==
          std::vector<std::string>{"x1"});
}

TEST_CASE("imap is ordered and lazy; imap_unordered yields everything", "[pool]") {
  mproc::Pool pool(2);
  std::vector<int> got;
  for (int r : pool.imap(square, std::vector<int>{1, 2, 3, 4, 5})) got.push_back(r);
  REQUIRE(got == std::vector<int>{1, 4, 9, 16, 25});

  std::multiset<int> un;
  for (int r : pool.imap_unordered(sleep_ms, std::vector<int>{30, 1, 20, 2}, 1)) un.insert(r);
  REQUIRE(un == std::multiset<int>{1, 2, 20, 30});

  // an endless input: consumed lazily, abandoned after 100 results
  int n = 0;
  long sum = 0;
  for (int r : pool.imap(square, counting{0, std::nullopt})) {
    sum += r;
    if (++n == 100) break;
  }
  REQUIRE(sum == 328350);
  // the pool is still usable afterwards
  REQUIRE(pool.apply(square, 12) == 144);
}

TEST_CASE("apply, apply_async, submit, map_async", "[pool]") {
  mproc::Pool pool(2);
  REQUIRE(pool.apply(add, 40L, 2L) == 42);
  auto a = pool.apply_async(square, 9);
  REQUIRE(a.get(5s) == 81);
  REQUIRE(a.get() == 81);  // may be called again
  REQUIRE(a.ready());
  REQUIRE(a.successful());
  auto s = pool.submit([](int x) { return x + 1; }, 1);
  REQUIRE(s.get() == 2);
  auto m = pool.map_async(square, std::vector<int>{1, 2, 3});
  REQUIRE(m.get() == std::vector<int>{1, 4, 9});
  auto sm = pool.starmap_async(add, std::vector<std::pair<long, long>>{{1, 2}});
  REQUIRE(sm.get() == std::vector<long>{3});
  auto v = pool.apply_async([] {});
  v.get();
  REQUIRE(v.successful());
}

TEST_CASE("get() on a temporary AsyncResult returns the value, not a dangling reference",
          "[pool]") {
  mproc::Pool pool(2);
  int sum = 0;
  for (int x : pool.map_async(square, std::vector<int>{1, 2, 3}).get()) sum += x;
  CHECK(sum == 14);
  for (int x : pool.map_async(square, std::vector<int>{4}).get(5s)) sum += x;
  CHECK(sum == 30);
  auto kept = pool.map_async(square, std::vector<int>{5});
  STATIC_REQUIRE(std::is_same_v<decltype(kept.get()), const std::vector<int>&>);
  STATIC_REQUIRE(std::is_same_v<decltype(std::move(kept).get()), std::vector<int>>);
  auto copy = kept;  // shares the state: the value is copied out, not moved
  CHECK(std::move(copy).get() == std::vector<int>{25});
  CHECK(kept.get() == std::vector<int>{25});
  CHECK(std::move(kept).get() == std::vector<int>{25});
}

TEST_CASE("get with a timeout raises timeout_error and can be retried", "[pool]") {
  mproc::Pool pool(1);
  auto a = pool.apply_async(sleep_ms, 300);
  REQUIRE_THROWS_AS(a.get(10ms), mproc::timeout_error);
  REQUIRE_FALSE(a.wait(1ms));
  REQUIRE_THROWS_AS(a.successful(), mproc::state_error);
  REQUIRE(a.get(10s) == 300);
}

TEST_CASE("task exceptions come back typed", "[pool]") {
  mproc::Pool pool(2);
  auto a = pool.apply_async(fail_on_three, 3);
  try {
    a.get();
    FAIL("no exception");
  } catch (const std::invalid_argument& e) {
    REQUIRE(std::string(e.what()) == "three is not allowed");
  }
  REQUIRE_FALSE(a.successful());
  try {
    pool.apply(throw_custom, 1);
    FAIL("no exception");
  } catch (const mproc::remote_error& e) {
    REQUIRE(e.type_name().find("custom_error") != std::string::npos);
    REQUIRE(std::string(e.what()) == "custom failure");
    REQUIRE(e.pid() > 0);
    REQUIRE(e.pid() != ::getpid());
  }
  // map rethrows, and the other items still ran
  REQUIRE_THROWS_AS(pool.map(fail_on_three, std::vector<int>{1, 2, 3, 4}), std::invalid_argument);
}

TEST_CASE("a worker that dies fails only its own task", "[pool]") {
  mproc::Pool pool(2);
  std::vector<mproc::AsyncResult<int>> rs;
  for (int i = 0; i < 12; ++i) rs.push_back(pool.apply_async(die_on, i));
  for (int i = 0; i < 12; ++i) {
    if (i == 5 || i == 6 || i == 7) {
      try {
        (void)rs[i].get(20s);
        FAIL("task " << i << " should have failed");
      } catch (const mproc::worker_died& e) {
        REQUIRE(e.pid() > 0);
        if (i == 5) {
          REQUIRE(e.signal() == SIGKILL);
          REQUIRE(e.exitcode() == -SIGKILL);
        }
        if (i == 6) {
          REQUIRE(e.signal() == 0);
          REQUIRE(e.exitcode() == 3);
        }
        if (i == 7) REQUIRE(e.signal() == SIGABRT);
      }
    } else {
      REQUIRE(rs[i].get(20s) == i * 2);
    }
  }
  // map over the same: the crash surfaces as worker_died, the pool recovers
  REQUIRE_THROWS_AS(pool.map(die_on, std::vector<int>{1, 5, 2}, 1), mproc::worker_died);
  REQUIRE(pool.map(square, std::vector<int>{1, 2, 3}) == std::vector<int>{1, 4, 9});
}

TEST_CASE("task_timeout kills the overrunning worker and fails only that task", "[pool]") {
  mproc::Pool pool({.processes = 2, .task_timeout = 300ms});
  auto slow = pool.apply_async(sleep_ms, 20000);
  auto fast = pool.apply_async(sleep_ms, 10);
  REQUIRE(fast.get(10s) == 10);
  REQUIRE(slow.wait(10s));  // the pool failed it long before its 20 s
  try {
    slow.get();
    FAIL("no timeout");
  } catch (const mproc::timeout_error& e) {
    REQUIRE(std::string(e.what()).find("task_timeout") != std::string::npos);
  }
  REQUIRE(pool.apply(square, 3) == 9);
}

TEST_CASE("a closed pool refuses work", "[pool]") {
  mproc::Pool pool(1);
  pool.close();
  REQUIRE_THROWS_AS(pool.apply_async(square, 1), mproc::pool_not_running);
  REQUIRE_THROWS_AS(pool.map(square, std::vector<int>{1}), mproc::pool_not_running);
  pool.join();
  mproc::Pool p2(1);
  REQUIRE_THROWS_AS(p2.join(), mproc::state_error);  // join before close
}

TEST_CASE("terminate fails unfinished work with pool_not_running", "[pool]") {
  mproc::Pool pool(1);
  auto a = pool.apply_async(sleep_ms, 20000);
  std::this_thread::sleep_for(50ms);
  pool.terminate();
  REQUIRE_THROWS_AS(a.get(5s), mproc::pool_not_running);
}

TEST_CASE("the destructor finishes outstanding work", "[pool]") {
  mproc::AsyncResult<int> a;
  {
    mproc::Pool pool(2);
    a = pool.apply_async(sleep_ms, 100);
  }
  REQUIRE(a.ready());
  REQUIRE(a.get() == 100);
}

TEST_CASE("initializer and max_tasks_per_child", "[pool]") {
  {
    mproc::Pool pool({.processes = 2, .initializer = {init_worker, 42}});
    auto v = pool.map(read_init, std::vector<int>(10, 0));
    REQUIRE(v == std::vector<int>(10, 42));
  }
  {
    mproc::Pool pool({.processes = 2, .max_tasks_per_child = 1});
    auto pids = pool.map(pid_of_worker, std::vector<int>(8, 0), 1);
    std::set<int> distinct(pids.begin(), pids.end());
    REQUIRE(distinct.size() == 8);  // every task ran in a fresh worker
  }
  {
    mproc::Pool pool({.processes = 1, .initializer = bad_init});
    auto a = pool.apply_async(square, 2);
    REQUIRE_THROWS_AS(a.get(20s), mproc::error);
  }
}

TEST_CASE("workers are named PoolWorker-N", "[pool]") {
  mproc::Pool pool(2);
  for (const auto& n : pool.map(worker_name, std::vector<int>(4, 0)))
    REQUIRE(n.rfind("PoolWorker-", 0) == 0);
}

TEST_CASE("callbacks, progress and as_completed", "[pool]") {
  mproc::Pool pool(2);
  std::atomic<int> got{0};
  std::atomic<int> errors{0};
  // Positional, not designated: clang < 17 cannot deduce from designated initializers.
  auto ok = pool.apply_async(mproc::callbacks{[&](const int& v) { got = v; },
                                              [&](std::exception_ptr) { ++errors; }},
                             square, 7);
  auto bad = pool.apply_async(mproc::callbacks{[&](const int&) {},
                                               [&](std::exception_ptr) { ++errors; }},
                              fail_on_three, 3);
  ok.wait(10s);
  bad.wait(10s);
  std::this_thread::sleep_for(10ms);
  REQUIRE(got == 49);
  REQUIRE(errors == 1);

  std::size_t last_done = 0, last_total = 0, calls = 0;
  bool increasing = true;
  pool.map(square, std::vector<int>(50, 1),
           mproc::map_options{.chunksize = 5, .on_progress = [&](std::size_t d, std::size_t t) {
                                increasing &= d > last_done;
                                last_done = d;
                                last_total = t;
                                ++calls;
                              }});
  REQUIRE(increasing);
  REQUIRE(last_done == 50);
  REQUIRE(last_total == 50);
  REQUIRE(calls >= 10);  // at least once per chunk (results arrive in batches)

  std::vector<mproc::AsyncResult<int>> rs;
  for (int ms : {300, 10, 150}) rs.push_back(pool.apply_async(sleep_ms, ms));
  std::vector<int> order;
  for (auto& r : mproc::as_completed(rs)) order.push_back(r.get());
  REQUIRE(order == std::vector<int>{10, 150, 300});
}

TEST_CASE("large arguments and results stream through the rings", "[pool]") {
  mproc::Pool pool(2);
  std::vector<std::vector<double>> in(3, std::vector<double>(2'000'000, 1.5));  // 16 MB each
  auto out = pool.map(scale, in, 1);
  REQUIRE(out.size() == 3);
  for (auto& v : out) {
    REQUIRE(v.size() == 2'000'000);
    REQUIRE(v.front() == 3.0);
    REQUIRE(v.back() == 3.0);
  }
}

TEST_CASE("workers killed at random during a 10,000-task run", "[pool][chaos]") {
  mproc::Pool pool(2);
  std::vector<mproc::AsyncResult<int>> rs;
  rs.reserve(10000);
  std::atomic<bool> stop{false};
  std::atomic<int> kills{0};
  std::thread killer([&] {
    std::mt19937 rng(12345);
    while (!stop) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5 + rng() % 20));
      auto kids = children();
      if (kids.empty()) continue;
      pid_t victim = kids[rng() % kids.size()];
      if (::kill(victim, SIGKILL) == 0) ++kills;
      if (kills >= 20) break;
    }
  });
  for (int i = 0; i < 10000; ++i) rs.push_back(pool.apply_async(slow_identity, i));
  int died = 0;
  for (int i = 0; i < 10000; ++i) {
    try {
      int v = rs[i].get(60s);
      REQUIRE(v == i);
    } catch (const mproc::worker_died&) {
      ++died;
    }
  }
  stop = true;
  killer.join();
  REQUIRE(died <= kills);
  REQUIRE(pool.apply(square, 4) == 16);
}

TEST_CASE("no fds, children or zombies are left behind", "[pool]") {
  { mproc::Pool warm(1); }  // library singletons exist from here on
  const int fds = count_fds();
  const auto kids_before = children().size();
  for (int i = 0; i < 20; ++i) {
    mproc::Pool pool(2);
    REQUIRE(pool.map(square, std::vector<int>{1, 2}) == std::vector<int>{1, 4});
  }
  {
    mproc::Pool pool(2);
    pool.apply_async(die_on, 5).wait(10s);
  }
  REQUIRE(count_fds() == fds);
  REQUIRE(children().size() == kids_before);
}

TEST_CASE("the pool works the same under every start method", "[pool][start-methods]") {
  auto method = GENERATE(mproc::start_method::fork, mproc::start_method::spawn,
                         mproc::start_method::forkserver);
  INFO("start method " << mproc::to_string(method));
  mproc_test::ensure_init();
  { mproc::Pool warm({.processes = 1, .method = method}); }  // start-method singletons
  const int fds = count_fds();
  {
    mproc::Pool pool({.processes = 2, .method = method, .initializer = {init_worker, 9},
                      .task_timeout = 2s});
    std::vector<int> in(500);
    std::iota(in.begin(), in.end(), 0);
    auto out = pool.map(square, in, 7);
    for (int i = 0; i < 500; ++i) REQUIRE(out[i] == i * i);
    REQUIRE(pool.map(shout, std::vector<std::string>{"x"}) == std::vector<std::string>{"x!"});
    REQUIRE(pool.apply(read_init, 0) == 9);
    REQUIRE_THROWS_AS(pool.apply(fail_on_three, 3), std::invalid_argument);
    try {
      (void)pool.apply(die_on, 5);
      FAIL("no worker_died");
    } catch (const mproc::worker_died& e) {
      REQUIRE(e.signal() == SIGKILL);
    }
    REQUIRE_THROWS_AS(pool.apply(sleep_ms, 10000), mproc::timeout_error);
    std::multiset<int> un;
    for (int r : pool.imap_unordered(square, std::vector<int>{1, 2, 3})) un.insert(r);
    REQUIRE(un == std::multiset<int>{1, 4, 9});
    for (const auto& n : pool.map(worker_name, std::vector<int>(2, 0)))
      REQUIRE(n.rfind("PoolWorker-", 0) == 0);
  }
  REQUIRE(count_fds() == fds);
}

TEST_CASE("functions from shared libraries are named across spawn and forkserver", "[pool][start-methods]") {
  mproc_test::ensure_init();
  // std::abs(int) and ::toupper live in libc, not in the executable: ASLR loads libc
  // at a different distance from the program in every process.
  auto libc_abs = static_cast<int (*)(int)>(&::abs);
  auto libc_toupper = static_cast<int (*)(int)>(&::toupper);
  for (auto method : {mproc::start_method::fork, mproc::start_method::spawn,
                      mproc::start_method::forkserver}) {
    INFO("start method " << mproc::to_string(method));
    mproc::Pool pool({.processes = 1, .method = method});
    REQUIRE(pool.map(libc_abs, std::vector<int>{-3, 4, -5}) == std::vector<int>{3, 4, 5});
    REQUIRE(pool.apply(libc_toupper, int('a')) == int('A'));
  }
}
