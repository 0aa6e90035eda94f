// mproc-test-timeout: 600
// concurrent.futures' waiting on mproc::Pool results: wait(), as_completed(),
// cancel(), running(), done(), add_done_callback(), and map_options::timeout, under
// every start method.
#include <mproc/pool.hpp>

#include <catch2/catch.hpp>

#include "spawn_entry.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <sys/stat.h>
#include <unistd.h>

using namespace std::chrono_literals;

namespace {

int sleep_ms(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ms;
}
int fail_after_ms(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  throw std::invalid_argument("failed after " + std::to_string(ms));
}
int square(int x) { return x * x; }

// A task leaving a trace in the file system, to tell whether it ran at all. Tags
// include this process's pid, so that parallel runs do not mix.
std::string marker_path(long tag) { return "/tmp/mproc-test-futures-" + std::to_string(tag); }
long tag_of(int n) { return long(::getpid()) * 10 + n; }
long touch_marker(long tag) {
  std::ofstream(marker_path(tag)) << "ran";
  return tag;
}
bool marker_exists(int n) {
  struct stat st;
  return ::stat(marker_path(tag_of(n)).c_str(), &st) == 0;
}
void remove_marker(int n) { std::remove(marker_path(tag_of(n)).c_str()); }

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

mproc::start_method any_method() {
  return GENERATE(mproc::start_method::fork, mproc::start_method::spawn,
                  mproc::start_method::forkserver);
}

}  // namespace

TEST_CASE("wait: ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION and a timeout", "[futures]") {
  const auto method = any_method();
  INFO("start method " << mproc::to_string(method));
  mproc_test::ensure_init();
  mproc::Pool pool({.processes = 2, .method = method});

  SECTION("ALL_COMPLETED waits for every result") {
    std::vector<mproc::AsyncResult<int>> rs;
    for (int ms : {50, 10, 30}) rs.push_back(pool.apply_async(sleep_ms, ms));
    auto [done, not_done] = mproc::wait(rs);
    REQUIRE(done.size() == 3);
    REQUIRE(not_done.empty());
    for (std::size_t i = 0; i < 3; ++i) REQUIRE(done[i] == &rs[i]);  // in the vector's order
    REQUIRE(done[0]->get() == 50);
  }
  SECTION("FIRST_COMPLETED returns as soon as one is done") {
    std::vector<mproc::AsyncResult<int>> rs;
    rs.push_back(pool.apply_async(sleep_ms, 1500));
    rs.push_back(pool.apply_async(sleep_ms, 10));
    const auto t0 = std::chrono::steady_clock::now();
    auto [done, not_done] = mproc::wait(rs, mproc::FIRST_COMPLETED);
    REQUIRE(seconds_since(t0) < 1.4);
    REQUIRE(done.size() == 1);
    REQUIRE(done[0] == &rs[1]);
    REQUIRE(not_done.size() == 1);
    REQUIRE(not_done[0] == &rs[0]);
    REQUIRE_FALSE(not_done[0]->done());
  }
  SECTION("FIRST_EXCEPTION returns at the first failure, or when all are done") {
    std::vector<mproc::AsyncResult<int>> rs;
    rs.push_back(pool.apply_async(sleep_ms, 1500));
    rs.push_back(pool.apply_async(fail_after_ms, 20));
    const auto t0 = std::chrono::steady_clock::now();
    auto [done, not_done] = mproc::wait(rs, mproc::FIRST_EXCEPTION);
    REQUIRE(seconds_since(t0) < 1.4);
    REQUIRE(done.size() == 1);
    REQUIRE(done[0] == &rs[1]);
    REQUIRE_THROWS_AS(done[0]->get(), std::invalid_argument);
    REQUIRE(not_done.size() == 1);

    // No failure: as ALL_COMPLETED.
    std::vector<mproc::AsyncResult<int>> ok;
    ok.push_back(pool.apply_async(sleep_ms, 10));
    ok.push_back(pool.apply_async(sleep_ms, 200));
    auto [d2, nd2] = mproc::wait(ok, mproc::FIRST_EXCEPTION);
    REQUIRE(d2.size() == 2);
    REQUIRE(nd2.empty());
  }
  SECTION("a timeout returns what is done so far") {
    std::vector<mproc::AsyncResult<int>> rs;
    rs.push_back(pool.apply_async(sleep_ms, 10));
    rs.push_back(pool.apply_async(sleep_ms, 1500));
    REQUIRE(rs[0].get(10s) == 10);
    const auto t0 = std::chrono::steady_clock::now();
    auto [done, not_done] = mproc::wait(rs, mproc::ALL_COMPLETED, 200ms);
    const double took = seconds_since(t0);
    REQUIRE(took >= 0.19);
    REQUIRE(took < 1.4);
    REQUIRE(done.size() == 1);
    REQUIRE(done[0] == &rs[0]);
    REQUIRE(not_done.size() == 1);
    REQUIRE(not_done[0] == &rs[1]);
    auto [d2, nd2] = mproc::wait(rs, 0s);  // a poll
    REQUIRE(d2.size() == 1);
  }
}

TEST_CASE("wait: a result listed twice appears once; empty input; empty result", "[futures]") {
  mproc::Pool pool(2);
  std::vector<mproc::AsyncResult<int>> rs;
  rs.push_back(pool.apply_async(square, 3));
  rs.push_back(rs[0]);  // a copy shares the result
  rs.push_back(pool.apply_async(square, 4));
  auto [done, not_done] = mproc::wait(rs);
  REQUIRE(done.size() == 2);
  REQUIRE(done[0] == &rs[0]);
  REQUIRE(done[1] == &rs[2]);
  REQUIRE(not_done.empty());

  std::vector<mproc::AsyncResult<int>> none;
  auto [d0, nd0] = mproc::wait(none, mproc::FIRST_COMPLETED);
  REQUIRE(d0.empty());
  REQUIRE(nd0.empty());

  std::vector<mproc::AsyncResult<int>> bad(1);
  REQUIRE_THROWS_AS(mproc::wait(bad), mproc::state_error);
}

TEST_CASE("wait called again and again does not pile up registrations", "[futures]") {
  mproc::Pool pool(1);
  std::vector<mproc::AsyncResult<int>> rs;
  rs.push_back(pool.apply_async(sleep_ms, 400));
  for (int i = 0; i < 2000; ++i) (void)mproc::wait(rs, mproc::ALL_COMPLETED, 0s);
  {
    std::lock_guard l(rs[0].state()->m);
    REQUIRE(rs[0].state()->listeners.size() <= 1);
  }
  REQUIRE(rs[0].get(10s) == 400);
}

TEST_CASE("as_completed: completion order, duplicates once, timeout", "[futures]") {
  const auto method = any_method();
  INFO("start method " << mproc::to_string(method));
  mproc_test::ensure_init();
  mproc::Pool pool({.processes = 3, .method = method});
  std::vector<mproc::AsyncResult<int>> rs;
  for (int ms : {600, 10, 300}) rs.push_back(pool.apply_async(sleep_ms, ms));
  rs.push_back(rs[1]);  // listed twice: yielded once, as Python's set of futures
  rs.push_back(rs[0]);
  std::vector<int> order;
  for (auto& r : mproc::as_completed(rs, 30s)) order.push_back(r.get());
  REQUIRE(order == std::vector<int>{10, 300, 600});

  // The rest late: the ready ones are yielded, then timeout_error.
  std::vector<mproc::AsyncResult<int>> late;
  late.push_back(pool.apply_async(sleep_ms, 10));
  late.push_back(pool.apply_async(sleep_ms, 1500));
  REQUIRE(late[0].get(10s) == 10);
  std::vector<int> got;
  const auto t0 = std::chrono::steady_clock::now();
  try {
    for (auto& r : mproc::as_completed(late, 300ms)) got.push_back(r.get());
    FAIL("no timeout_error");
  } catch (const mproc::timeout_error&) {
  }
  const double took = seconds_since(t0);
  REQUIRE(took >= 0.29);
  REQUIRE(took < 1.4);
  REQUIRE(got == std::vector<int>{10});
}

TEST_CASE("cancel: a task not yet started never runs and get() raises cancelled_error",
          "[futures]") {
  const auto method = any_method();
  INFO("start method " << mproc::to_string(method));
  mproc_test::ensure_init();
  for (int tag : {1, 2, 3}) remove_marker(tag);
  {
    mproc::Pool pool({.processes = 1, .method = method});
    auto busy = pool.apply_async(sleep_ms, 800);
    // Once it runs, the worker holds it: it cannot be cancelled.
    const auto t0 = std::chrono::steady_clock::now();
    while (!busy.running() && seconds_since(t0) < 20) std::this_thread::sleep_for(1ms);
    REQUIRE(busy.running());
    REQUIRE_FALSE(busy.done());
    REQUIRE_FALSE(busy.cancel());
    REQUIRE_FALSE(busy.cancelled());

    // The worker holds one task at a time while their cost is unknown, so these wait
    // in the pool and can be cancelled.
    auto queued = pool.apply_async(touch_marker, tag_of(1));
    auto kept = pool.apply_async(touch_marker, tag_of(2));
    auto cancelled_map = pool.map_async(touch_marker, std::vector<long>(3, tag_of(3)));
    REQUIRE_FALSE(queued.running());
    std::atomic<int> callback_calls{0};
    bool saw_cancelled = false;
    queued.add_done_callback([&](mproc::AsyncResult<long>& r) {
      saw_cancelled = r.cancelled();
      ++callback_calls;
    });
    REQUIRE(queued.cancel());
    REQUIRE(queued.cancel());  // again: still true, as in Python
    REQUIRE(queued.cancelled());
    REQUIRE(queued.done());
    REQUIRE_FALSE(queued.running());
    REQUIRE_FALSE(queued.successful());
    REQUIRE(callback_calls == 1);
    REQUIRE(saw_cancelled);
    REQUIRE_THROWS_AS(queued.get(), mproc::cancelled_error);
    REQUIRE_THROWS_AS(queued.get(1s), mproc::cancelled_error);
    REQUIRE(cancelled_map.cancel());
    REQUIRE_THROWS_AS(cancelled_map.get(), mproc::cancelled_error);

    REQUIRE(busy.get(20s) == 800);
    REQUIRE(kept.get(20s) == tag_of(2));
    REQUIRE_FALSE(kept.cancel());  // done: too late
    REQUIRE_FALSE(kept.cancelled());
    pool.close();
    pool.join();
  }
  REQUIRE_FALSE(marker_exists(1));
  REQUIRE(marker_exists(2));
  REQUIRE_FALSE(marker_exists(3));
  for (int tag : {1, 2, 3}) remove_marker(tag);
}

TEST_CASE("a cancelled result counts as done, not as an exception, for wait", "[futures]") {
  mproc::Pool pool(1);
  auto busy = pool.apply_async(sleep_ms, 1500);
  std::vector<mproc::AsyncResult<int>> rs;
  rs.push_back(pool.apply_async(square, 2));
  rs.push_back(pool.apply_async(square, 3));
  REQUIRE(rs[0].cancel());
  const auto t0 = std::chrono::steady_clock::now();
  auto [done, not_done] = mproc::wait(rs, mproc::FIRST_EXCEPTION, 20s);
  // Python: a cancelled future is not an exception; this waited for the other one.
  REQUIRE(seconds_since(t0) > 0.3);
  REQUIRE(done.size() == 2);
  REQUIRE(rs[1].get() == 9);
  REQUIRE(busy.get(20s) == 1500);
}

TEST_CASE("add_done_callback: runs once done, at once if done, and a throwing callback harms nothing",
          "[futures]") {
  const auto method = any_method();
  INFO("start method " << mproc::to_string(method));
  mproc_test::ensure_init();
  mproc::Pool pool({.processes = 2, .method = method});

  auto a = pool.apply_async(sleep_ms, 100);
  std::mutex m;
  std::vector<int> seen;
  std::thread::id ran_on;
  bool done_inside = false;
  // No Catch assertion in a callback: it runs on the pool's thread and Catch is not
  // thread-safe; what the callback saw is checked here afterwards.
  a.add_done_callback([&](mproc::AsyncResult<int>& r) {
    std::lock_guard l(m);
    done_inside = r.done();
    seen.push_back(r.get());
    ran_on = std::this_thread::get_id();
  });
  a.add_done_callback([](mproc::AsyncResult<int>&) { throw std::runtime_error("callback bug"); });
  a.add_done_callback([&](mproc::AsyncResult<int>& r) {
    std::lock_guard l(m);
    seen.push_back(r.get() + 1);
  });
  REQUIRE(a.get(20s) == 100);
  const auto t0 = std::chrono::steady_clock::now();
  while (seconds_since(t0) < 10) {
    std::lock_guard l(m);
    if (seen.size() == 2) break;
  }
  {
    std::lock_guard l(m);
    REQUIRE(seen == std::vector<int>{100, 101});  // in the order added, the throw skipped
    REQUIRE(done_inside);
  }

  // Already done: called at once, on this thread.
  bool now = false;
  const auto me = std::this_thread::get_id();
  a.add_done_callback([&](mproc::AsyncResult<int>& r) {
    now = r.get() == 100 && std::this_thread::get_id() == me;
  });
  REQUIRE(now);
  a.add_done_callback([](mproc::AsyncResult<int>&) { throw 42; });  // logged, not raised

  // A failed task: the callback sees the failure through get().
  auto b = pool.apply_async(fail_after_ms, 1);
  std::atomic<bool> saw_error{false};
  b.add_done_callback([&](mproc::AsyncResult<int>& r) {
    try {
      (void)r.get();
    } catch (const std::invalid_argument&) {
      saw_error = true;
    }
  });
  REQUIRE_THROWS_AS(b.get(20s), std::invalid_argument);
  while (!saw_error && seconds_since(t0) < 10) std::this_thread::sleep_for(1ms);
  REQUIRE(saw_error);

  // The pool is unharmed by the throwing callbacks.
  REQUIRE(pool.map(square, std::vector<int>{1, 2, 3}) == std::vector<int>{1, 4, 9});
}

TEST_CASE("map_options::timeout: the whole map, each next imap result", "[futures]") {
  const auto method = any_method();
  INFO("start method " << mproc::to_string(method));
  mproc_test::ensure_init();
  mproc::Pool pool({.processes = 1, .method = method});
  REQUIRE(pool.apply(square, 2) == 4);  // the worker is up

  SECTION("map raises timeout_error and drops the items not handed out") {
    const auto t0 = std::chrono::steady_clock::now();
    REQUIRE_THROWS_AS(pool.map(sleep_ms, std::vector<int>(40, 100), {.chunksize = 1, .timeout = 300ms}),
                      mproc::timeout_error);
    const double took = seconds_since(t0);
    REQUIRE(took >= 0.29);
    REQUIRE(took < 3.0);
    // 40 x 100 ms would keep the only worker busy for 4 s: the rest was dropped.
    const auto t1 = std::chrono::steady_clock::now();
    REQUIRE(pool.apply(square, 3) == 9);
    REQUIRE(seconds_since(t1) < 2.0);
    REQUIRE_THROWS_AS(pool.starmap(sleep_ms, std::vector<std::tuple<int>>(40, {100}),
                                   {.chunksize = 1, .timeout = 200ms}),
                      mproc::timeout_error);
    // in time: the value
    REQUIRE(pool.map(square, std::vector<int>{1, 2}, {.timeout = 20s}) == std::vector<int>{1, 4});
  }
  SECTION("map_async: get() and wait() without a timeout of their own use it") {
    auto r = pool.map_async(sleep_ms, std::vector<int>{600}, {.timeout = 100ms});
    const auto t0 = std::chrono::steady_clock::now();
    REQUIRE_THROWS_AS(r.get(), mproc::timeout_error);
    REQUIRE(seconds_since(t0) < 3.0);
    r.wait();  // returns at the deadline
    REQUIRE_FALSE(r.ready());
    REQUIRE(r.get(20s) == std::vector<int>{600});  // still there for a longer get
    REQUIRE(r.get() == std::vector<int>{600});     // and once done, without one too
  }
  SECTION("imap: each next result, and iteration can go on after a timeout") {
    auto it_range = pool.imap(sleep_ms, std::vector<int>{10, 900, 10}, {.chunksize = 1, .timeout = 300ms});
    auto it = it_range.begin();
    REQUIRE(*it == 10);
    REQUIRE_THROWS_AS(++it, mproc::timeout_error);
    // The late result is not lost: iterating again waits for it.
    std::vector<int> rest;
    for (int attempt = 0; attempt < 100 && rest.size() < 2; ++attempt) {
      try {
        for (auto it2 = it_range.begin(); it2 != it_range.end(); ++it2) rest.push_back(*it2);
      } catch (const mproc::timeout_error&) {
      }
    }
    REQUIRE(rest == std::vector<int>{900, 10});

    std::multiset<int> un;
    for (int v : pool.imap_unordered(sleep_ms, std::vector<int>{5, 6}, {.timeout = 20s})) un.insert(v);
    REQUIRE(un == std::multiset<int>{5, 6});
  }
  SECTION("imap_unordered: each next result, the late one still delivered afterwards") {
    auto range = pool.imap_unordered(sleep_ms, std::vector<int>{10, 900}, {.chunksize = 1, .timeout = 300ms});
    auto it = range.begin();
    REQUIRE(*it == 10);
    const auto t0 = std::chrono::steady_clock::now();
    REQUIRE_THROWS_AS(++it, mproc::timeout_error);
    REQUIRE(seconds_since(t0) < 3.0);
    std::vector<int> rest;
    for (int attempt = 0; attempt < 100 && rest.empty(); ++attempt) {
      try {
        for (auto it2 = range.begin(); it2 != range.end(); ++it2) rest.push_back(*it2);
      } catch (const mproc::timeout_error&) {
      }
    }
    REQUIRE(rest == std::vector<int>{900});
  }
  SECTION("starmap_async: get() without a timeout of its own uses it") {
    auto r = pool.starmap_async(sleep_ms, std::vector<std::tuple<int>>{{600}}, {.timeout = 100ms});
    const auto t0 = std::chrono::steady_clock::now();
    REQUIRE_THROWS_AS(r.get(), mproc::timeout_error);
    REQUIRE(seconds_since(t0) < 3.0);
    REQUIRE(r.get(20s) == std::vector<int>{600});
  }
}
TEST_CASE("cancel after the pool failed a result that never started changes nothing", "[futures]") {
  mproc::Pool pool(1);
  auto busy = pool.apply_async(sleep_ms, 300);
  auto never = pool.apply_async(square, 2);
  pool.terminate();
  REQUIRE_THROWS_AS(never.get(10s), mproc::pool_not_running);
  REQUIRE_FALSE(never.cancel());  // done: as Python's cancel() of a finished future
  REQUIRE_FALSE(never.cancelled());
  REQUIRE_THROWS_AS(never.get(), mproc::pool_not_running);
  REQUIRE_THROWS_AS(busy.get(10s), mproc::pool_not_running);
}
