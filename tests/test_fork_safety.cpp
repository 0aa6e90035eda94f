// mproc-test-timeout: 600
// Forking while other threads use the library. Each round runs in a fresh child of
// this single-threaded test process, so whatever the library does on first use in a
// process happens again in every round, racing threads against forks.
#include <mproc/process.hpp>
#include <mproc/synchronize.hpp>

#include <catch2/catch.hpp>

#include "test_support.hpp"

#include <chrono>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

void waiter(mproc::Condition c, mproc::Semaphore sleeping, mproc::Semaphore woken) {
  c.acquire();
  sleeping.release();
  c.wait();
  woken.release();
  c.release();
}

/// CPython's test_notify_all: threads and forked processes wait on one Condition and
/// one notify_all wakes them all. 0 on success.
int notify_all_round() {
  mproc::Condition c;
  mproc::Semaphore sleeping(0), woken(0);
  constexpr int each = 3;
  std::vector<std::thread> threads;
  std::vector<mproc::Process> procs;
  // Interleaved, so forks happen while threads make their first calls.
  for (int k = 0; k < each; ++k) {
    threads.emplace_back(waiter, c, sleeping, woken);
    procs.emplace_back(mproc_test::with_method(mproc::start_method::fork), waiter, c, sleeping, woken);
    procs.back().start();
  }
  int rc = 0;
  for (int k = 0; k < 2 * each && rc == 0; ++k)
    if (!sleeping.acquire(true, 10s)) rc = 2;
  if (rc == 0) {
    c.acquire();
    c.notify_all();
    c.release();
    for (int k = 0; k < 2 * each && rc == 0; ++k)
      if (!woken.acquire(true, 10s)) rc = 3;
  }
  for (auto& p : procs)
    if (mproc_test::join_process(p, 10s) != 0 && rc == 0) rc = 4;
  if (rc != 0) std::_Exit(rc);  // threads still blocked: do not wait for them
  for (auto& t : threads) t.join();
  return rc;
}

}  // namespace

TEST_CASE("threads and forked processes waiting on one Condition never hang", "[fork][synchronize]") {
  const auto deadline = std::chrono::steady_clock::now() + 400s;
  for (int round = 0; round < 300; ++round) {
    INFO("round " << round);
    const pid_t pid = mproc::detail::fork_child([] { return notify_all_round(); });
    const int code = mproc_test::join_child(pid, 30s);
    REQUIRE(code == 0);
    REQUIRE(std::chrono::steady_clock::now() < deadline);
  }
}
