// mpi::Pool under `mpirun -np 3`: rank 0 runs the Catch2 session, ranks 1 and 2 serve
// tasks inside the environment's constructor (through local processes by default;
// test_mpi_local.cpp tests what those add). Under `-np 1` (tests tagged [ranks]
// excluded) the same checks cover the root running tasks itself. Every wait has a timeout, so a lost
// result fails a test instead of hanging it.
#define CATCH_CONFIG_RUNNER
#include <mproc/mpi.hpp>

#include <catch2/catch.hpp>

#include <boost/multiprecision/cpp_int.hpp>
#include <mproc/detail/cpp_int_serialization.hpp>
#include <boost/serialization/string.hpp>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <numeric>
#include <set>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <unistd.h>

using namespace std::chrono_literals;
using boost::multiprecision::cpp_int;

struct registered_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
MPROC_REGISTER_EXCEPTION(registered_error);

namespace {

mproc::mpi::environment* g_env = nullptr;

int square(int x) { return x * x; }
long add(long a, long b) { return a + b; }
std::string shout(const std::string& s) { return s + "!"; }
int rank_pid(int) { return static_cast<int>(::getpid()); }
int sleep_ms(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ms;
}
void nothing(int) {}

// A lazy, single-pass input: 1..n computed as it is read. Not a std::views pipeline:
// clang 14 cannot compile libstdc++ 12's views.
struct one_to {
  struct iterator {
    using value_type = int;
    using difference_type = std::ptrdiff_t;
    int i = 0;
    int operator*() const { return i + 1; }
    iterator& operator++() {
      ++i;
      return *this;
    }
    void operator++(int) { ++i; }
  };
  struct sentinel {
    int n = 0;
    friend bool operator==(const iterator& it, const sentinel& s) { return it.i >= s.n; }
  };
  int n = 0;
  iterator begin() const { return {}; }
  sentinel end() const { return {n}; }
};

int fail_on_three(int x) {
  if (x == 3) throw std::invalid_argument("three is not allowed");
  return x;
}
struct custom_error : std::exception {
  const char* what() const noexcept override { return "custom failure"; }
};
int throw_custom(int) { throw custom_error(); }
int throw_mproc_timeout(int) { throw mproc::timeout_error("task gave up"); }

cpp_int factorial(int n) {
  cpp_int r = 1;
  for (int i = 2; i <= n; ++i) r *= i;
  return r;
}

struct point {
  std::string label;
  std::vector<double> xs;
  template <class Archive>
  void serialize(Archive& ar, unsigned) {
    ar & label & xs;
  }
};
point stretch(const point& p) {
  point out{p.label + "'", p.xs};
  for (auto& x : out.xs) x *= 2;
  return out;
}

/// A serializable function object: its state travels with each chunk.
struct multiplier {
  int k = 1;
  int operator()(int x) const { return k * x; }
  template <class Archive>
  void serialize(Archive& ar, unsigned) {
    ar & k;
  }
};

int throw_registered(int n) { throw registered_error("registered " + std::to_string(n)); }
int throw_system_error(int) { throw std::system_error(std::make_error_code(std::errc::io_error), "io"); }

std::vector<int> iota_vec(int n) {
  std::vector<int> v(static_cast<std::size_t>(n));
  std::iota(v.begin(), v.end(), 0);
  return v;
}

}  // namespace

TEST_CASE("without worker ranks the root runs the tasks", "[single]") {
  REQUIRE(g_env->workers() == 0);
  mproc::mpi::Pool pool({.local_processes = -1});  // in the root itself
  REQUIRE(pool.processes() == 1);
  REQUIRE(pool.apply(rank_pid, 0) == static_cast<int>(::getpid()));
}

TEST_CASE("the job has worker ranks", "[ranks]") {
  REQUIRE(g_env->rank() == 0);
  REQUIRE(g_env->size() == 3);
  REQUIRE(g_env->workers() == 2);
  mproc::mpi::Pool pool;
  REQUIRE(pool.processes() == 2);
}

TEST_CASE("map returns results in input order for any chunksize") {
  mproc::mpi::Pool pool;
  const auto in = iota_vec(1000);
  std::vector<int> want(in.size());
  std::transform(in.begin(), in.end(), want.begin(), square);
  for (std::size_t cs : {0u, 1u, 7u, 1000u, 5000u}) {
    CAPTURE(cs);
    REQUIRE(pool.map(square, in, cs) == want);
  }
  REQUIRE(pool.map(square, std::vector<int>{}).empty());
  // strings, and a lazy view as input
  std::vector<std::string> words{"a", "bc", ""};
  REQUIRE(pool.map(shout, words) == std::vector<std::string>{"a!", "bc!", "!"});
  one_to lazy{50};
  auto r = pool.map(square, lazy, 3);
  REQUIRE(r.size() == 50);
  REQUIRE(r.back() == 2500);
}

TEST_CASE("starmap, apply, apply_async, submit, void tasks") {
  mproc::mpi::Pool pool;
  std::vector<std::pair<long, long>> pairs{{1, 2}, {10, 20}, {-5, 5}};
  REQUIRE(pool.starmap(add, pairs) == std::vector<long>{3, 30, 0});
  std::vector<std::tuple<long, long>> tuples{{2, 3}};
  REQUIRE(pool.starmap(add, tuples, 1) == std::vector<long>{5});
  REQUIRE(pool.apply(add, 40L, 2L) == 42);
  REQUIRE(pool.apply([](int a, int b) { return a * b; }, 6, 7) == 42);
  auto a = pool.apply_async(square, 9);
  REQUIRE(a.get(30s) == 81);
  REQUIRE(a.successful());
  auto s = pool.submit(shout, std::string("hey"));
  REQUIRE(s.get(30s) == "hey!");
  auto v = pool.apply_async(nothing, 1);
  REQUIRE(v.wait(30s));
  REQUIRE(v.successful());
  REQUIRE(pool.map(multiplier{3}, std::vector<int>{1, 2, 3}) == std::vector<int>{3, 6, 9});
}

TEST_CASE("work is spread over both worker ranks, none runs on the root", "[ranks]") {
  mproc::mpi::Pool pool({.local_processes = -1});  // tasks in the ranks: their pids tell them apart
  // chunksize 1 and two chunks in flight per rank: the first four tasks go to both ranks
  auto pids = pool.map(rank_pid, std::vector<int>(8, 0), 1);
  std::set<int> distinct(pids.begin(), pids.end());
  REQUIRE(distinct.size() == 2);
  REQUIRE(distinct.count(static_cast<int>(::getpid())) == 0);
}

TEST_CASE("a pool may use fewer worker ranks", "[ranks]") {
  mproc::mpi::Pool pool({.processes = 1, .local_processes = -1});
  REQUIRE(pool.processes() == 1);
  auto pids = pool.map(rank_pid, std::vector<int>(8, 0), 1);
  REQUIRE(std::set<int>(pids.begin(), pids.end()).size() == 1);
}

TEST_CASE("imap is ordered, imap_unordered yields every result once") {
  mproc::mpi::Pool pool;
  const auto in = iota_vec(300);
  std::vector<int> got;
  for (int r : pool.imap(square, in, 4)) got.push_back(r);
  std::vector<int> want(in.size());
  std::transform(in.begin(), in.end(), want.begin(), square);
  REQUIRE(got == want);

  std::vector<int> un;
  for (int r : pool.imap_unordered(square, in)) un.push_back(r);
  std::sort(un.begin(), un.end());
  REQUIRE(un == want);

  // abandoning an imap half way leaves the pool usable
  {
    auto range = pool.imap(sleep_ms, std::vector<int>(200, 1));
    int n = 0;
    for (int r : range) {
      REQUIRE(r == 1);
      if (++n == 5) break;
    }
  }
  REQUIRE(pool.apply(square, 4) == 16);
}

TEST_CASE("as_completed yields each AsyncResult once") {
  mproc::mpi::Pool pool;
  std::vector<mproc::AsyncResult<int>> rs;
  for (int ms : {60, 1, 30, 5, 0, 10}) rs.push_back(pool.apply_async(sleep_ms, ms));
  std::multiset<int> seen;
  for (auto& done : mproc::as_completed(rs)) {
    REQUIRE(done.ready());
    seen.insert(done.get());
  }
  REQUIRE(seen == std::multiset<int>{60, 1, 30, 5, 0, 10});
}

TEST_CASE("exceptions come back as with mproc::Pool") {
  mproc::mpi::Pool pool;
  SECTION("std types keep their type and message") {
    auto r = pool.apply_async(fail_on_three, 3);
    REQUIRE(r.wait(30s));
    REQUIRE_FALSE(r.successful());
    REQUIRE_THROWS_AS(r.get(), std::invalid_argument);
    REQUIRE_THROWS_WITH(r.get(), "three is not allowed");
    REQUIRE_THROWS_AS(pool.apply(throw_mproc_timeout, 0), mproc::timeout_error);
  }
  SECTION("map raises the first failing item's error, other items ran") {
    REQUIRE_THROWS_AS(pool.map(fail_on_three, iota_vec(10), 2), std::invalid_argument);
    REQUIRE(pool.map(fail_on_three, std::vector<int>{1, 2}) == std::vector<int>{1, 2});
  }
  SECTION("other types arrive as remote_error with the type name and the rank's pid") {
    try {
      pool.apply(throw_custom, 1);
      FAIL("no exception");
    } catch (const mproc::remote_error& e) {
      REQUIRE(e.type_name().find("custom_error") != std::string::npos);
      REQUIRE(std::string(e.what()) == "custom failure");
      REQUIRE(e.pid() > 0);
      if (g_env->workers() > 0) REQUIRE(e.pid() != ::getpid());
    }
  }
  SECTION("imap raises at the failing item, after the earlier ones") {
    std::vector<int> got;
    auto range = pool.imap(fail_on_three, iota_vec(6));
    REQUIRE_THROWS_AS([&] {
      for (int r : range) got.push_back(r);
    }(), std::invalid_argument);
    REQUIRE(got == std::vector<int>{0, 1, 2});
  }
  SECTION("error_callback runs, callback does not") {
    std::atomic<int> ok{0}, err{0};
    auto m = pool.map_async(fail_on_three, iota_vec(5), {},
                            mproc::callbacks{[&](const std::vector<int>&) { ++ok; },
                                             [&](std::exception_ptr) { ++err; }});
    REQUIRE(m.wait(30s));
    REQUIRE(ok == 0);
    REQUIRE(err == 1);
  }
}

TEST_CASE("user types with serialize() and cpp_int results") {
  mproc::mpi::Pool pool;
  std::vector<point> pts{{"a", {1, 2}}, {"b", {}}, {"c", {0.5}}};
  auto out = pool.map(stretch, pts);
  REQUIRE(out.size() == 3);
  REQUIRE(out[0].label == "a'");
  REQUIRE(out[0].xs == std::vector<double>{2, 4});
  REQUIRE(out[1].xs.empty());
  REQUIRE(out[2].xs == std::vector<double>{1.0});

  std::vector<int> ns(300);
  std::iota(ns.begin(), ns.end(), 1);
  auto facts = pool.map(factorial, ns);
  for (std::size_t i = 0; i < ns.size(); ++i) REQUIRE(facts[i] == factorial(ns[i]));
  REQUIRE(facts[299].str().size() == 615);  // 300! has 615 digits
}

TEST_CASE("progress and callbacks run on the root") {
  mproc::mpi::Pool pool;
  std::mutex m;
  std::vector<std::pair<std::size_t, std::size_t>> calls;
  auto r = pool.map(square, iota_vec(100),
                    mproc::map_options{.chunksize = 10, .on_progress = [&](std::size_t d, std::size_t t) {
                      std::lock_guard l(m);
                      calls.emplace_back(d, t);
                    }});
  REQUIRE(r.size() == 100);
  std::lock_guard l(m);
  REQUIRE(calls.size() == 100);
  for (std::size_t i = 0; i < calls.size(); ++i) {
    REQUIRE(calls[i].first == i + 1);
    REQUIRE(calls[i].second == 100);
  }
  std::atomic<int> sum{0};
  auto a = pool.apply_async(mproc::callbacks{[&](const int& v) { sum += v; }}, square, 5);
  REQUIRE(a.get(30s) == 25);
  REQUIRE(sum == 25);
}

TEST_CASE("a throwing on_progress fails its own call, as with mproc::Pool") {
  struct progress_broke : std::runtime_error {
    using std::runtime_error::runtime_error;
  };
  // Progress may cover several items at once: the throw is at the first report of 2+.
  auto bad_progress = [](std::size_t done, std::size_t) {
    if (done >= 2) throw progress_broke("progress failed");
  };
  mproc::mpi::Pool pool;
  REQUIRE_THROWS_AS(pool.map(square, iota_vec(10), mproc::map_options{.chunksize = 1, .on_progress = bad_progress}),
                    progress_broke);
  std::size_t seen = 0;
  auto r = pool.imap(square, iota_vec(10), mproc::map_options{.chunksize = 1, .on_progress = bad_progress});
  try {
    for (int v : r) seen += v >= 0;
    FAIL("no exception");
  } catch (const progress_broke&) {
  }
  REQUIRE(seen == 10);  // the results came first
  REQUIRE(pool.map(square, iota_vec(3)) == std::vector<int>{0, 1, 4});
}

TEST_CASE("lifecycle: closed pools refuse work, one pool at a time, terminate") {
  SECTION("submit after close") {
    mproc::mpi::Pool pool;
    auto pending = pool.map_async(sleep_ms, std::vector<int>{20, 20, 20});
    pool.close();
    REQUIRE_THROWS_AS(pool.apply(square, 1), mproc::pool_not_running);
    pool.join();
    REQUIRE(pending.ready());
    REQUIRE(pending.get() == std::vector<int>{20, 20, 20});
  }
  SECTION("join before close") {
    mproc::mpi::Pool pool;
    REQUIRE_THROWS_AS(pool.join(), mproc::state_error);
  }
  SECTION("a second pool while one exists") {
    mproc::mpi::Pool pool;
    REQUIRE_THROWS_AS(mproc::mpi::Pool(), mproc::state_error);
  }
  SECTION("terminate fails unfinished work, the ranks serve the next pool") {
    {
      mproc::mpi::Pool pool;
      std::atomic<std::size_t> done{0};
      auto r = pool.map_async(sleep_ms, std::vector<int>(40, 25),
                              mproc::map_options{.chunksize = 1, .on_progress = [&](std::size_t d, std::size_t) {
                                done = d;
                              }});
      // Terminate with chunks running on the ranks: their late results must not
      // reach the next pool.
      for (int i = 0; i < 3000 && done == 0; ++i) std::this_thread::sleep_for(1ms);
      REQUIRE(done > 0);
      pool.terminate();
      REQUIRE(done < 40);
      REQUIRE(r.wait(30s));
      REQUIRE_THROWS_AS(r.get(), mproc::pool_not_running);
      REQUIRE_THROWS_AS(pool.apply(square, 1), mproc::pool_not_running);
    }
    mproc::mpi::Pool next;
    REQUIRE(next.map(square, iota_vec(20)).back() == 361);
  }
}

TEST_CASE("large payloads cross intact") {
  mproc::mpi::Pool pool;
  std::vector<std::string> big(3);
  for (std::size_t i = 0; i < big.size(); ++i) big[i].assign((4u << 20) + i, static_cast<char>('a' + i));
  auto out = pool.map(shout, big, 1);
  for (std::size_t i = 0; i < big.size(); ++i) {
    REQUIRE(out[i].size() == big[i].size() + 1);
    REQUIRE(out[i].substr(0, big[i].size()) == big[i]);
  }
}

TEST_CASE("wait, cancel, done callbacks and map timeout work as with mproc::Pool") {
  mproc::mpi::Pool pool;
  // Enough long tasks to fill every rank's chunks in flight, then one that waits.
  std::vector<mproc::AsyncResult<int>> busy;
  for (int i = 0; i < 8; ++i) busy.push_back(pool.apply_async(sleep_ms, 150));
  auto queued = pool.apply_async(square, 5);
  std::atomic<int> calls{0};
  queued.add_done_callback([&](mproc::AsyncResult<int>& r) {
    if (r.cancelled()) ++calls;
  });
  REQUIRE(queued.cancel());
  REQUIRE(calls == 1);
  REQUIRE_THROWS_AS(queued.get(), mproc::cancelled_error);
  auto [done, not_done] = mproc::wait(busy, mproc::ALL_COMPLETED, 60s);
  REQUIRE(done.size() == busy.size());
  REQUIRE(not_done.empty());
  for (auto* r : done) REQUIRE(r->get() == 150);
  REQUIRE_THROWS_AS(pool.map(sleep_ms, std::vector<int>(40, 100), {.chunksize = 1, .timeout = 200ms}),
                    mproc::timeout_error);
  REQUIRE(pool.apply(square, 6) == 36);
}

TEST_CASE("registered exception types and system_error keep their type over MPI") {
  mproc::mpi::Pool pool;
  REQUIRE_THROWS_AS(pool.apply(throw_registered, 1), registered_error);
  REQUIRE_THROWS_WITH(pool.apply(throw_registered, 1), "registered 1");
  try {
    pool.apply(throw_system_error, 0);
    FAIL("no exception");
  } catch (const std::system_error& e) {
    REQUIRE(e.code() == std::errc::io_error);
  }
}

int main(int argc, char** argv) {
  mproc::mpi::environment env(argc, argv);  // worker ranks never return from here
  g_env = &env;
  return Catch::Session().run(argc, argv);
}
