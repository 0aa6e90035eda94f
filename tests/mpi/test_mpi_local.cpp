// mpi::Pool with local processes (the default layout): each worker rank serves its
// chunks through a local pool, so a task that crashes its process or overruns
// task_timeout fails alone and the job goes on. Run under `mpirun -np 3` and `-np 1`
// (the root's own local pool). Every wait has a timeout.
#define CATCH_CONFIG_RUNNER
#include <mproc/mpi.hpp>
#include <mproc/serialization/boost.hpp>  // types with a Boost serialize()

#include <catch2/catch.hpp>

#include <boost/serialization/string.hpp>
#include <boost/serialization/vector.hpp>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "../test_support.hpp"

using namespace std::chrono_literals;

namespace {

mproc::mpi::environment* g_env = nullptr;

int own_pid(int) { return static_cast<int>(::getpid()); }
int twice(int x) { return 2 * x; }

/// Item i: most return 2i; some abort, some segfault, some sleep past the timeout.
enum class fate { value, aborts, segfaults, hangs };
fate fate_of(int i) {
  if (i % 1000 == 7) return fate::aborts;
  if (i % 1000 == 77) return fate::segfaults;
  if (i % 2500 == 123) return fate::hangs;
  return fate::value;
}
int risky(int i) {
  switch (fate_of(i)) {
    case fate::aborts:
      std::abort();
    case fate::segfaults:
      ::raise(SIGSEGV);
      return -1;
    case fate::hangs:
      std::this_thread::sleep_for(30s);
      return -1;
    case fate::value:
      break;
  }
  return 2 * i;
}

int g_init = 0;
void set_init(int a, const std::string& b) { g_init = a * 100 + static_cast<int>(b.size()); }
int read_init(int) { return g_init; }

int sleep_ms(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ms;
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

// An endless, single-pass input (not std::views: clang 14 cannot compile libstdc++ 12's).
struct naturals {
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
    friend bool operator==(const iterator&, const sentinel&) { return false; }
  };
  iterator begin() const { return {}; }
  sentinel end() const { return {}; }
};

}  // namespace

TEST_CASE("10,000 tasks: those that abort, segfault or overrun task_timeout fail alone") {
  mproc::mpi::Pool pool({.local_processes = 2, .task_timeout = 1s});
  REQUIRE(pool.local_processes() == 2 * pool.processes());
  constexpr int n = 10'000;
  std::vector<mproc::AsyncResult<int>> rs;
  rs.reserve(n);
  for (int i = 0; i < n; ++i) rs.push_back(pool.apply_async(risky, i));
  int ok = 0, died = 0, timed_out = 0;
  for (int i = 0; i < n; ++i) {
    INFO("task " << i);
    const fate f = fate_of(i);
    try {
      const int v = rs[static_cast<std::size_t>(i)].get(120s);
      REQUIRE(f == fate::value);
      REQUIRE(v == 2 * i);
      ++ok;
    } catch (const mproc::worker_died& e) {
      REQUIRE((f == fate::aborts || f == fate::segfaults));
      if (mproc_test::under_asan && f == fate::segfaults)
        REQUIRE(e.exitcode() != 0);  // AddressSanitizer's handler reports the SIGSEGV and exits
      else
        REQUIRE(e.signal() == (f == fate::aborts ? SIGABRT : SIGSEGV));
      REQUIRE(e.pid() > 0);
      ++died;
    } catch (const mproc::timeout_error& e) {
      REQUIRE(f == fate::hangs);
      REQUIRE(std::string(e.what()).find("task_timeout") != std::string::npos);
      ++timed_out;
    }
  }
  CHECK(died == 20);
  CHECK(timed_out == 4);
  CHECK(ok == n - 24);
  // The pool, its ranks and their local pools go on.
  REQUIRE(pool.map(twice, std::vector<int>{1, 2, 3}) == std::vector<int>{2, 4, 6});
}

TEST_CASE("tasks run in local processes, not in the ranks") {
  mproc::mpi::Pool pool({.local_processes = 2});
  auto pids = pool.map(own_pid, std::vector<int>(40, 0), 1);
  std::set<int> distinct(pids.begin(), pids.end());
  REQUIRE(distinct.count(static_cast<int>(::getpid())) == 0);
  REQUIRE(distinct.size() >= 2);
  REQUIRE(distinct.size() <= pool.local_processes());
}

TEST_CASE("max_tasks_per_child and an initializer with arguments") {
  {
    mproc::mpi::Pool pool({.local_processes = 1, .max_tasks_per_child = 1});
    auto pids = pool.map(own_pid, std::vector<int>(12, 0), 1);
    REQUIRE(std::set<int>(pids.begin(), pids.end()).size() == 12);  // a fresh process per task
  }
  mproc::mpi::Pool pool({.local_processes = 1, .initializer = {set_init, 7, std::string("abc")}});
  for (int v : pool.map(read_init, std::vector<int>(10, 0), 1)) REQUIRE(v == 703);
}

TEST_CASE("imap over an endless range, as_completed, user types") {
  mproc::mpi::Pool pool({.local_processes = 2});
  int seen = 0;
  for (int v : pool.imap(twice, naturals{}, 8)) {
    REQUIRE(v == 2 * seen);
    if (++seen == 2000) break;
  }
  std::vector<mproc::AsyncResult<int>> rs;
  for (int ms : {300, 10, 150}) rs.push_back(pool.apply_async(sleep_ms, ms));
  std::multiset<int> done;
  for (auto& r : mproc::as_completed(rs, 60s)) done.insert(r.get());
  REQUIRE(done == std::multiset<int>{10, 150, 300});
  const point p{"p", {1, 2.5}};
  const point q = pool.apply(stretch, p);
  REQUIRE(q.label == "p'");
  REQUIRE(q.xs == std::vector<double>{2, 5});
}

TEST_CASE("terminate() kills tasks running in local processes") {
  mproc::mpi::Pool pool({.local_processes = 1});
  auto hang = pool.apply_async(sleep_ms, 60'000);
  std::this_thread::sleep_for(200ms);
  const auto t0 = std::chrono::steady_clock::now();
  pool.terminate();
  REQUIRE(std::chrono::steady_clock::now() - t0 < 20s);
  REQUIRE_THROWS_AS(hang.get(10s), mproc::pool_not_running);
}

TEST_CASE("invalid local_processes is a value_error; the next pool works") {
  REQUIRE_THROWS_AS(mproc::mpi::Pool({.local_processes = -2}), mproc::value_error);
  mproc::mpi::Pool pool({.local_processes = -1});
  REQUIRE(pool.local_processes() == pool.processes());
  REQUIRE(pool.apply(twice, 21) == 42);
}

int main(int argc, char** argv) {
  mproc::mpi::environment env(argc, argv);  // worker ranks never return from here
  g_env = &env;
  return Catch::Session().run(argc, argv);
}
