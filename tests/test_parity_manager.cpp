// Python parity of the Manager: every SyncManager proxy type (Event, Condition,
// Semaphore, BoundedSemaphore, RLock, Barrier, Array, JoinableQueue) locally, in
// Process targets and Pool tasks under every start method, and over TCP; Python's
// list, dict and queue methods; a dead server raises manager_error at once.
// mproc-test-timeout: 600
#include <catch2/catch.hpp>

#include "spawn_entry.hpp"

#include <mproc/managers.hpp>
#include <mproc/pool.hpp>
#include <mproc/process.hpp>
#include <mproc/serialization/boost.hpp>  // types with a Boost serialize()

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <sys/wait.h>

using namespace std::chrono_literals;
using mproc::start_method;

namespace {

int finish(mproc::Process& p, std::chrono::seconds limit = 60s) {
  if (!p.join(limit)) {
    p.kill();
    p.join();
    return -1000;
  }
  return p.exitcode().value_or(-999);
}

template <class F>
std::chrono::milliseconds time_of(F&& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
}

/// Everything a child does with the new proxies; a failed step exits with its number.
struct proxies {
  mproc::EventProxy go, done;
  mproc::ConditionProxy cond;
  mproc::SemaphoreProxy sem;
  mproc::SemaphoreProxy bounded;
  mproc::RLockProxy rlock;
  mproc::BarrierProxy barrier;
  mproc::ArrayProxy<int> arr;
  mproc::JoinableQueueProxy<int> jq;
  mproc::ListProxy<int> log;
  template <class A>
  void serialize(A& ar, unsigned) {
    ar & go & done & cond & sem & bounded & rlock & barrier & arr & jq & log;
  }
};

proxies make_proxies(mproc::Manager& m) {
  return {m.Event(), m.Event(), m.Condition(), m.Semaphore(0), m.BoundedSemaphore(1), m.RLock(),
          m.Barrier(2, 30s), m.Array<int>(4), m.JoinableQueue<int>(), m.list<int>()};
}

// The child's side of the conversation run_parent_side() has with it.
int child_side(proxies p) {
  if (!p.go.wait(30s)) return 2;
  // Condition: announce under the lock, then notify the parent waiting on it.
  {
    std::scoped_lock g(p.cond);
    p.log.append(1);
    p.cond.notify_all();
  }
  p.sem.release();  // the parent acquires it
  if (!p.bounded.acquire(true, 30s)) return 3;
  p.bounded.release();
  try {
    p.bounded.release();  // above the initial value
    return 4;
  } catch (const mproc::value_error&) {
  }
  // RLock: recursive for its holder; the parent cannot take it meanwhile.
  p.rlock.acquire();
  p.rlock.acquire();
  p.log.append(2);
  p.rlock.release();
  p.rlock.release();
  p.arr.set(-1, 40);
  p.arr.set(0, p.arr.get(0) + 1);
  (void)p.barrier.wait();  // the parent is the other party
  for (int i = 0; i < 3; ++i) {
    int v = p.jq.get(30s);
    p.log.append(100 + v);
    p.jq.task_done();
  }
  p.done.set();
  return 0;
}
int child_entry(proxies p) { return child_side(std::move(p)); }
void process_target(proxies p) { std::exit(child_side(std::move(p))); }

void run_parent_side(proxies& p, const std::function<void()>& start, const std::function<int()>& finish_child) {
  start();
  p.go.set();
  {
    std::unique_lock g(p.cond);
    CHECK(p.cond.wait_for([&] { return p.log.count(1) == 1; }, 30s));
  }
  CHECK(p.sem.acquire(true, 30s));
  CHECK(p.barrier.wait(30s) < 2);
  CHECK(p.arr.get(3) == 40);
  CHECK(p.arr.get(0) == 1);
  for (int i = 0; i < 3; ++i) p.jq.put(i);
  CHECK(p.jq.join(30s));  // every item confirmed
  CHECK(p.done.wait(30s));
  CHECK(finish_child() == 0);
  CHECK(p.log.items() == std::vector<int>{1, 2, 100, 101, 102});
}

}  // namespace

TEST_CASE("every SyncManager proxy type in a Process target, under every start method",
          "[parity][managers]") {
  mproc_test::ensure_init();
  const start_method m = GENERATE(start_method::fork, start_method::spawn, start_method::forkserver);
  INFO(mproc::to_string(m));
  mproc::Manager mgr;
  proxies p = make_proxies(mgr);
  mproc::Process child({.method = m}, process_target, p);
  run_parent_side(
      p, [&] { child.start(); }, [&] { return finish(child); });
}

TEST_CASE("every SyncManager proxy type in a Pool task, under every start method",
          "[parity][managers][pool]") {
  mproc_test::ensure_init();
  const start_method m = GENERATE(start_method::fork, start_method::spawn, start_method::forkserver);
  INFO(mproc::to_string(m));
  mproc::Manager mgr;
  proxies p = make_proxies(mgr);
  mproc::Pool pool({.processes = 1, .method = m});
  std::optional<mproc::AsyncResult<int>> r;
  run_parent_side(
      p, [&] { r.emplace(pool.apply_async(child_entry, p)); }, [&] { return r->get(60s); });
}

TEST_CASE("every SyncManager proxy type over TCP", "[parity][managers][tcp]") {
  mproc_test::ensure_init();
  mproc::Manager server({.address = "127.0.0.1:0", .authkey = "k"});
  auto mgr = mproc::Manager::connect(server.address(), "k");
  proxies p = make_proxies(mgr);
  // The child talks to the server over TCP too (its proxies came from a TCP client).
  mproc::Process child({.method = start_method::fork}, process_target, p);
  run_parent_side(
      p, [&] { child.start(); }, [&] { return finish(child); });
}

TEST_CASE("manager Event, Semaphore, RLock, Condition, Barrier: Python's semantics",
          "[parity][managers]") {
  mproc::Manager m;
  SECTION("Event") {
    auto e = m.Event();
    CHECK_FALSE(e.is_set());
    CHECK_FALSE(e.wait(20ms));
    e.set();
    CHECK(e.is_set());
    CHECK(e.wait());
    e.clear();
    CHECK_FALSE(e.is_set());
  }
  SECTION("Semaphore and BoundedSemaphore") {
    auto s = m.Semaphore(2);
    CHECK(s.acquire(false));
    CHECK(s.acquire(false));
    CHECK_FALSE(s.acquire(false));
    CHECK_FALSE(s.acquire(true, 20ms));
    s.release(2);
    CHECK(s.get_value() == 2);
    s.release();  // a plain Semaphore may go above its initial value
    CHECK(s.get_value() == 3);
    auto b = m.BoundedSemaphore(1);
    CHECK_THROWS_AS(b.release(), mproc::value_error);
    CHECK(b.acquire());
    b.release();
    CHECK_THROWS_AS(m.Semaphore(-1), mproc::value_error);
  }
  SECTION("RLock") {
    auto l = m.RLock();
    CHECK(l.acquire());
    CHECK(l.acquire(false));  // recursive
    std::thread([&] {
      CHECK_FALSE(l.acquire(false));  // another thread
      CHECK_THROWS_AS(l.release(), mproc::state_error);
    }).join();
    l.release();
    l.release();
    CHECK_THROWS_AS(l.release(), mproc::state_error);
    std::thread([&] {
      CHECK(l.acquire(false));
      l.release();
    }).join();
  }
  SECTION("Condition") {
    auto c = m.Condition();
    CHECK_THROWS_AS(c.wait(10ms), mproc::state_error);  // the lock is not held
    CHECK_THROWS_AS(c.notify(), mproc::state_error);
    c.acquire();
    CHECK_FALSE(c.wait(20ms));  // nobody notifies; the lock is back afterwards
    c.release();
    auto flag = m.Value<int>(0);
    std::atomic<int> woken{0};
    std::vector<std::thread> waiters;
    for (int i = 0; i < 3; ++i)
      waiters.emplace_back([&] {
        std::unique_lock g(c);
        if (c.wait_for([&] { return flag.get() != 0; }, 30s)) ++woken;
      });
    std::this_thread::sleep_for(200ms);
    {
      std::scoped_lock g(c);
      flag.set(1);
      c.notify(1);  // one
    }
    std::this_thread::sleep_for(200ms);
    {
      std::scoped_lock g(c);
      c.notify_all();  // the others
    }
    for (auto& t : waiters) t.join();
    CHECK(woken == 3);
  }
  SECTION("Barrier") {
    CHECK_THROWS_AS(m.Barrier(0), mproc::value_error);
    auto b = m.Barrier(2, 100ms);
    CHECK(b.parties() == 2);
    const auto took = time_of([&] { CHECK_THROWS_AS(b.wait(), mproc::broken_barrier_error); });
    CHECK(took >= 90ms);
    CHECK(b.broken());
    CHECK_THROWS_AS(b.wait(10ms), mproc::broken_barrier_error);
    b.reset();
    CHECK_FALSE(b.broken());
    std::size_t other = 9;
    std::thread t([&] { other = b.wait(30s); });
    const std::size_t mine = b.wait(30s);
    t.join();
    CHECK(mine + other == 1);  // indexes 0 and 1
    // reset() while a party waits releases it with broken_barrier_error.
    std::thread w([&] { CHECK_THROWS_AS(b.wait(30s), mproc::broken_barrier_error); });
    while (b.n_waiting() == 0) std::this_thread::sleep_for(5ms);
    b.reset();
    w.join();
    CHECK_FALSE(b.broken());
    b.abort();
    CHECK(b.broken());
  }
  SECTION("Array") {
    auto a = m.Array<double>(std::vector<double>{1.5, 2.5, 3.5});
    CHECK(a.size() == 3);
    CHECK(a.get(-1) == 3.5);
    a.set(1, 9.0);
    CHECK(a.items() == std::vector<double>{1.5, 9.0, 3.5});
    CHECK_THROWS_AS(a.get(3), mproc::index_error);
    CHECK_THROWS_AS(a.set(-4, 0.0), mproc::index_error);
    std::vector<double> seen;
    for (double x : a) seen.push_back(x);
    CHECK(seen.size() == 3);
    auto z = m.Array<int>(5);
    CHECK(z.items() == std::vector<int>(5, 0));
  }
  SECTION("JoinableQueue") {
    auto q = m.JoinableQueue<int>();
    CHECK(q.join(10ms));  // nothing put: done at once
    q.put(1);
    q.put(2);
    CHECK_FALSE(q.join(20ms));
    CHECK(q.get() == 1);
    q.task_done();
    CHECK_FALSE(q.join(20ms));
    CHECK(q.get() == 2);
    q.task_done();
    CHECK(q.join(10ms));
    CHECK_THROWS_AS(q.task_done(), mproc::value_error);  // too many
  }
}

TEST_CASE("list, dict and queue proxies have Python's methods", "[parity][managers]") {
  mproc::Manager m;
  SECTION("list") {
    auto l = m.list<int>();
    l.extend(std::vector<int>{3, 1, 2, 1});
    CHECK(l.count(1) == 2);
    CHECK(l.count(7) == 0);
    CHECK(l.index(1) == 1);
    CHECK(l.index(1, 2) == 3);
    CHECK(l.index(1, -1) == 3);
    CHECK_THROWS_AS(l.index(1, 0, 1), mproc::value_error);
    CHECK_THROWS_AS(l.index(7), mproc::value_error);
    l.insert(0, 9);
    l.insert(-1, 8);   // before the last
    l.insert(100, 7);  // clamped: at the end
    l.insert(-100, 6);  // clamped: at the front
    CHECK(l.items() == std::vector<int>{6, 9, 3, 1, 2, 8, 1, 7});
    l.remove(1);  // the first
    CHECK(l.items() == std::vector<int>{6, 9, 3, 2, 8, 1, 7});
    CHECK_THROWS_AS(l.remove(42), mproc::value_error);
    l.sort();
    CHECK(l.items() == std::vector<int>{1, 2, 3, 6, 7, 8, 9});
    l.sort(std::greater<>{});
    CHECK(l.items() == std::vector<int>{9, 8, 7, 6, 3, 2, 1});
    l.reverse();
    CHECK(l.items() == std::vector<int>{1, 2, 3, 6, 7, 8, 9});
    CHECK(l.pop() == 9);
    CHECK(l.pop(0) == 1);
    CHECK(l.pop(-2) == 7);
    std::vector<int> seen;
    for (int x : l) {
      seen.push_back(x);
      l.append(0);  // iteration is over a snapshot: appending does not extend it
    }
    CHECK(seen == std::vector<int>{2, 3, 6, 8});
    CHECK(l.size() == 8);
    l.clear();
    CHECK_THROWS_AS(l.pop(), mproc::index_error);
    CHECK_THROWS_AS(l.pop(3), mproc::index_error);
    for ([[maybe_unused]] int x : l) FAIL("an empty list yields nothing");
  }
  SECTION("sort loses no concurrent change") {
    auto l = m.list<int>();
    for (int i = 0; i < 200; ++i) l.append(200 - i);
    std::thread adder([&] {
      for (int i = 0; i < 200; ++i) l.append(1000 + i);
    });
    for (int i = 0; i < 20; ++i) l.sort();
    adder.join();
    CHECK(l.size() == 400);
    l.sort();
    auto v = l.items();
    CHECK(std::is_sorted(v.begin(), v.end()));
  }
  SECTION("dict") {
    auto d = m.dict<std::string, int>();
    CHECK_THROWS_AS(d.popitem(), mproc::key_error);
    d.set("a", 1);
    d.set("b", 2);
    d.set("c", 3);
    CHECK(d.setdefault("a", 10) == 1);
    CHECK(d.setdefault("z", 26) == 26);
    CHECK(d.get("z") == 26);
    CHECK(d.pop("b", -1) == 2);
    CHECK(d.pop("b", -1) == -1);
    CHECK_THROWS_AS(d.pop("b"), mproc::key_error);
    CHECK(d.keys() == std::vector<std::string>{"a", "c", "z"});
    CHECK(d.values() == std::vector<int>{1, 3, 26});
    std::vector<std::string> order;
    for (auto& [k, v] : d) {
      order.push_back(k + "=" + std::to_string(v));
      d.set("late", 0);  // not seen: the iteration is over a snapshot
    }
    CHECK(order == std::vector<std::string>{"a=1", "c=3", "z=26"});
    auto last = d.popitem();  // last in, first out
    CHECK(last.first == "late");
    CHECK(d.popitem() == std::pair<std::string, int>{"z", 26});
    CHECK(d.size() == 2);
  }
  SECTION("queue") {
    auto q = m.Queue<int>(2);
    CHECK(q.empty());
    CHECK_FALSE(q.full());
    q.put(1);
    CHECK_FALSE(q.empty());
    CHECK_FALSE(q.full());
    q.put(2);
    CHECK(q.full());
    CHECK(q.qsize() == 2);
    CHECK_THROWS_AS(q.put_nowait(3), mproc::queue_full);
    (void)q.get();
    CHECK_FALSE(q.full());
    auto unbounded = m.Queue<int>();
    for (int i = 0; i < 100; ++i) unbounded.put(i);
    CHECK_FALSE(unbounded.full());
  }
}

TEST_CASE("a proxy call on a manager whose server died raises manager_error at once",
          "[parity][managers][death]") {
  for (bool tcp : {false, true}) {
    INFO((tcp ? "over TCP" : "local"));
    mproc::Manager m(tcp ? mproc::manager_options{.address = "127.0.0.1:0", .authkey = "k"}
                         : mproc::manager_options{});
    std::optional<mproc::Manager> client;
    if (tcp) client.emplace(mproc::Manager::connect(m.address(), "k"));
    mproc::Manager& use = tcp ? *client : m;
    auto e = use.Event();
    auto s = use.Semaphore(0);
    auto b = use.Barrier(2);
    auto l = use.list<int>();
    auto q = use.JoinableQueue<int>();
    l.append(1);
    q.put(1);
    REQUIRE(::kill(m.server_pid(), SIGKILL) == 0);
    ::waitpid(m.server_pid(), nullptr, 0);
    // Calls that would block for ever on a live server fail too, quickly.
    const auto took = time_of([&] {
      CHECK_THROWS_AS(l.count(1), mproc::manager_error);
      CHECK_THROWS_AS(e.wait(), mproc::manager_error);
      CHECK_THROWS_AS(s.acquire(), mproc::manager_error);
      CHECK_THROWS_AS(b.wait(), mproc::manager_error);
      CHECK_THROWS_AS(q.join(), mproc::manager_error);
      CHECK_THROWS_AS(e.set(), mproc::manager_error);
    });
    CHECK(took < 5s);
  }
}
