// Cross-process behaviour of Lock, RLock, Semaphore, BoundedSemaphore, Event,
// Condition and Barrier, under every start method. Children are Processes whose
// targets are free functions taking the shared objects as arguments (so they cross
// spawn and forkserver as the same objects) and report through exit codes; every wait
// has a timeout and children that overrun are killed.
#include <catch2/catch.hpp>

#include "spawn_entry.hpp"
#include "test_support.hpp"

#include <mproc/connection.hpp>
#include <mproc/process.hpp>
#include <mproc/sharedctypes.hpp>
#include <mproc/synchronize.hpp>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

using namespace std::chrono_literals;

using mproc_test::count_fds;
using mproc_test::join_process;
using mproc_test::with_method;

namespace {

/// Shared ints for children to update (Value is tested in test_sharedctypes): a
/// RawArray, so it reaches children of every start method as the same memory.
using shared_ints = mproc::RawArray<int>;
shared_ints make_shared_ints() { return shared_ints(1024); }
std::atomic_ref<int> at(shared_ints& m, std::size_t i) { return std::atomic_ref<int>(m[i]); }

/// A started Process running target(args...) by start method m.
template <class... A>
mproc::Process started(mproc::start_method m, A&&... a) {
  mproc::Process p(with_method(m), std::forward<A>(a)...);
  p.start();
  return p;
}

void locked_increments(mproc::Lock lock, shared_ints mem, int n) {
  for (int i = 0; i < n; ++i) {
    std::scoped_lock g(lock);
    // A non-atomic read-modify-write: only the lock keeps it exact.
    volatile int* p = &mem[0];
    *p = *p + 1;
  }
}

void foreign_lock_attempts(mproc::Lock lock) {
  if (lock.try_lock()) std::exit(2);
  if (lock.acquire(true, 50ms)) std::exit(3);
  bool raised = false;
  try {
    lock.release();
  } catch (const mproc::lock_error&) {
    raised = true;
  }
  if (!raised) std::exit(4);
}

void acquire_and_release(mproc::Lock lock) {
  if (!lock.acquire(true, 10s)) std::exit(5);
  lock.release();
}

[[noreturn]] void hold_lock_forever(mproc::Lock lock, mproc::Connection c) {
  lock.acquire();
  c.send(std::string("held"));
  for (;;) ::pause();
}

[[noreturn]] void hold_rlock_forever(mproc::RLock lock, mproc::Event held) {
  lock.acquire();  // blocks until the parent releases it
  held.set();
  for (;;) ::pause();
}

void condition_victim(mproc::Condition cond, shared_ints mem) {
  std::scoped_lock g(cond);
  ++at(mem, 0);
  (void)cond.wait(30s);
}

void condition_survivor(mproc::Condition cond, shared_ints mem) {
  bool woken;
  {
    std::scoped_lock g(cond);
    ++at(mem, 0);
    woken = cond.wait_for([&] { return at(mem, 1).load() != 0; }, 20s);
  }
  if (!woken) std::exit(2);
}

void rlock_foreign_attempts(mproc::RLock r) {
  if (r.acquire(true, 50ms)) std::exit(2);
  bool raised = false;
  try {
    r.release();
  } catch (const mproc::lock_error&) {
    raised = true;
  }
  if (!raised) std::exit(3);
}

void rlock_nested(mproc::RLock r) {
  if (!r.acquire(true, 10s)) std::exit(2);
  r.acquire();
  r.release();
  r.release();
}

void release_after_50ms(mproc::Semaphore s) {
  std::this_thread::sleep_for(50ms);
  s.release();
}

void contend_for_slots(mproc::Semaphore slots, shared_ints mem) {
  // mem: [0] inside now, [1] max seen, [2] entries
  for (int i = 0; i < 200; ++i) {
    if (!slots.acquire(true, 10s)) std::exit(2);
    int now = ++at(mem, 0);
    int seen = at(mem, 1).load();
    while (now > seen && !at(mem, 1).compare_exchange_weak(seen, now)) {
    }
    ++at(mem, 2);
    --at(mem, 0);
    slots.release();
  }
}

void wait_for_event(mproc::Event ev, mproc::Event ready) {
  ready.set();
  if (!ev.wait(10s)) std::exit(2);
}

constexpr int kCapacity = 4;

void condition_producer(mproc::Condition cond, shared_ints mem, int index, int count) {
  // mem: [0] items in buffer, [3 + index] what this producer produced
  for (int i = 1; i <= count; ++i) {
    std::unique_lock g(cond);
    if (!cond.wait_for([&] { return at(mem, 0).load() < kCapacity; }, 10s)) std::exit(2);
    at(mem, 0) += 1;
    at(mem, 3 + std::size_t(index)) += i;
    cond.notify_all();
  }
}

void condition_ticket_waiter(mproc::Condition cond, shared_ints mem) {
  // mem: [0] waiters ready, [1] woken, [2] tickets
  bool woken;
  {
    std::scoped_lock g(cond);
    ++at(mem, 0);
    woken = cond.wait_for([&] { return at(mem, 2).load() > 0; }, 20s);
    if (woken) {
      --at(mem, 2);  // consume one ticket
      ++at(mem, 1);
    }
  }
  if (!woken) std::exit(2);
}

/// One party of the multi-round barrier test: 0 when every round went right.
int barrier_rounds(mproc::Barrier& bar, shared_ints& mem, int rounds) {
  for (int r = 0; r < rounds; ++r) {
    unsigned idx = bar.wait(10s);
    if (idx >= 4) return 2;
    at(mem, std::size_t(r) * 4 + idx) += 1;
  }
  return 0;
}

void barrier_party(mproc::Barrier bar, shared_ints mem, int rounds) {
  if (int rc = barrier_rounds(bar, mem, rounds)) std::exit(rc);
}

void expect_broken_barrier(mproc::Barrier bar) {
  bool broken = false;
  try {
    (void)bar.wait(20s);
  } catch (const mproc::broken_barrier_error&) {
    broken = true;
  }
  if (!broken) std::exit(2);
}

void barrier_wait_once(mproc::Barrier bar) {
  if (bar.wait(20s) >= 3) std::exit(2);
}

/// Waits up to 20 s for pred().
template <class Pred>
bool eventually(Pred pred) {
  auto until = std::chrono::steady_clock::now() + 20s;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

}  // namespace

#define FOR_EACH_START_METHOD(method)                       \
  auto method = MPROC_TEST_EACH_START_METHOD();             \
  INFO("start method " << mproc::to_string(method));        \
  mproc_test::ensure_init()

TEST_CASE("Lock protects a counter incremented by 4 Processes") {
  FOR_EACH_START_METHOD(method);
  mproc::Lock lock;
  shared_ints mem = make_shared_ints();
  constexpr int per_child = 20000;
  std::vector<mproc::Process> procs;
  for (int c = 0; c < 4; ++c) procs.emplace_back(with_method(method), locked_increments, lock, mem, per_child);
  for (auto& p : procs) p.start();
  for (auto& p : procs) CHECK(join_process(p) == 0);
  CHECK(mem[0] == 4 * per_child);
}

TEST_CASE("Lock ownership rules") {
  mproc::Lock lock;
  SECTION("release without holding raises lock_error") {
    CHECK_THROWS_AS(lock.release(), mproc::lock_error);
  }
  SECTION("blocking re-acquire by the holder raises instead of deadlocking") {
    lock.acquire();
    CHECK_THROWS_AS(lock.acquire(), mproc::lock_error);
    CHECK_FALSE(lock.acquire(false));
    CHECK_FALSE(lock.acquire(true, 10ms));
    lock.release();
  }
  SECTION("copies are the same lock") {
    mproc::Lock copy = lock;
    copy.acquire();
    bool other_thread_got_it = true;
    std::thread t([&] { other_thread_got_it = lock.try_lock(); });
    t.join();
    CHECK_FALSE(other_thread_got_it);
    lock.release();
  }
  SECTION("std::unique_lock with try_lock_for / try_lock_until") {
    std::unique_lock g(lock, 100ms);
    CHECK(g.owns_lock());
    g.unlock();
    CHECK(lock.try_lock_until(std::chrono::steady_clock::now() + 10ms));
    lock.unlock();
  }
}

TEST_CASE("Another process can neither take nor release a held Lock") {
  FOR_EACH_START_METHOD(method);
  mproc::Lock lock;
  lock.acquire();
  auto k = started(method, foreign_lock_attempts, lock);
  CHECK(join_process(k) == 0);
  lock.release();
  auto k2 = started(method, acquire_and_release, lock);
  CHECK(join_process(k2) == 0);
}

TEST_CASE("A Lock whose owner was SIGKILLed is recovered by the next acquirer") {
  FOR_EACH_START_METHOD(method);
  mproc::Lock lock;
  auto [rd, wr] = mproc::Pipe();
  auto k = started(method, hold_lock_forever, lock, wr);
  wr.close();  // the child holds its own end
  REQUIRE(rd.recv<std::string>(30s) == "held");
  CHECK_FALSE(lock.acquire(false));
  k.kill();
  CHECK(join_process(k) == -SIGKILL);
  REQUIRE(lock.acquire(true, 5s));
  CHECK(lock.owner_died());
  lock.release();
  REQUIRE(lock.acquire(true, 5s));
  CHECK_FALSE(lock.owner_died());
  lock.release();
}

TEST_CASE("A waiter blocked on a Lock is woken when the owner dies") {
  FOR_EACH_START_METHOD(method);
  mproc::RLock lock;
  lock.acquire();
  // The owner is a child; the parent blocks in acquire while it is killed.
  mproc::Event held;
  auto owner = started(method, hold_rlock_forever, lock, held);
  lock.release();
  REQUIRE(held.wait(30s));
  const pid_t owner_pid = owner.pid();
  std::thread killer([&] {
    std::this_thread::sleep_for(100ms);
    ::kill(owner_pid, SIGKILL);  // not reaped before the join below: still our child
  });
  bool got = lock.acquire(true, 10s);
  killer.join();
  CHECK(join_process(owner) == -SIGKILL);
  REQUIRE(got);
  CHECK(lock.owner_died());
  lock.release();
}

TEST_CASE("A Lock held by a thread that exited is recovered") {
  mproc::Lock lock;
  std::thread t([&] { lock.acquire(); });
  t.join();
  REQUIRE(lock.acquire(true, 5s));
  CHECK(lock.owner_died());
  lock.release();
}

TEST_CASE("A waiter killed inside Condition.wait does not block the others") {
  FOR_EACH_START_METHOD(method);
  mproc::Condition cond;
  shared_ints mem = make_shared_ints();  // [0] waiters ready, [1] go
  auto victim = started(method, condition_victim, cond, mem);
  auto survivor = started(method, condition_survivor, cond, mem);
  CHECK(eventually([&] { return at(mem, 0).load() >= 2; }));
  victim.kill();
  CHECK(join_process(victim) == -SIGKILL);
  {
    REQUIRE(cond.acquire(true, 5s));
    at(mem, 1) = 1;
    cond.notify_all();
    cond.release();
  }
  CHECK(join_process(survivor) == 0);
}

TEST_CASE("RLock recursion and ownership") {
  FOR_EACH_START_METHOD(method);
  mproc::RLock r;
  r.acquire();
  r.acquire();
  CHECK(r.acquire(false));
  CHECK(r.recursion_depth() == 3);
  auto k = started(method, rlock_foreign_attempts, r);
  CHECK(join_process(k) == 0);
  r.release();
  r.release();
  CHECK(r.recursion_depth() == 1);
  r.release();
  CHECK(r.recursion_depth() == 0);
  CHECK_THROWS_AS(r.release(), mproc::lock_error);
  auto k2 = started(method, rlock_nested, r);
  CHECK(join_process(k2) == 0);
}

TEST_CASE("Semaphore counts across processes, with timeouts") {
  FOR_EACH_START_METHOD(method);
  mproc::Semaphore s(2);
  CHECK(s.get_value() == 2);
  CHECK(s.acquire());
  CHECK(s.acquire(false));
  CHECK_FALSE(s.acquire(false));
  CHECK_FALSE(s.acquire(true, 30ms));
  CHECK_FALSE(s.try_lock_for(10ms));
  auto k = started(method, release_after_50ms, s);
  CHECK(s.acquire(true, 30s));
  CHECK(join_process(k) == 0);
  s.release(2);
  CHECK(s.get_value() == 2);

  SECTION("many processes contend for 2 slots, never more than 2 inside") {
    mproc::Semaphore slots(2);
    shared_ints mem = make_shared_ints();  // [0] inside now, [1] max seen, [2] entries
    std::vector<mproc::Process> kids;
    for (int c = 0; c < 4; ++c) kids.push_back(started(method, contend_for_slots, slots, mem));
    for (auto& p : kids) CHECK(join_process(p) == 0);
    CHECK(at(mem, 1).load() <= 2);
    CHECK(at(mem, 2).load() == 800);
    CHECK(slots.get_value() == 2);
  }
}

TEST_CASE("BoundedSemaphore rejects an extra release") {
  mproc::BoundedSemaphore b(2);
  CHECK_THROWS_AS(b.release(), mproc::lock_error);
  b.acquire();
  b.release();
  CHECK_THROWS_AS(b.release(), mproc::lock_error);
  CHECK(b.get_value() == 2);
  mproc::Semaphore big(1);
  CHECK_THROWS_AS(big.release(0x7fffffffu), mproc::lock_error);
  mproc::BoundedSemaphore zero(0);
  CHECK_FALSE(zero.acquire(false));
  CHECK_THROWS_AS(zero.release(), mproc::lock_error);
  CHECK_THROWS_AS(mproc::Semaphore(-1), mproc::value_error);
}

TEST_CASE("Event wakes a waiter in another process") {
  FOR_EACH_START_METHOD(method);
  mproc::Event ev;
  CHECK_FALSE(ev.is_set());
  CHECK_FALSE(ev.wait(20ms));
  mproc::Event child_ready;
  auto p = started(method, wait_for_event, ev, child_ready);
  REQUIRE(child_ready.wait(30s));
  std::this_thread::sleep_for(20ms);
  ev.set();
  CHECK(join_process(p) == 0);
  CHECK(ev.is_set());
  CHECK(ev.wait(0ms));
  ev.clear();
  CHECK_FALSE(ev.is_set());
}

TEST_CASE("Condition producer/consumer across processes") {
  FOR_EACH_START_METHOD(method);
  mproc::Condition cond;
  shared_ints mem = make_shared_ints();  // [0] items in buffer, [3 + p] produced by p
  constexpr int producers = 3, per_producer = 300;
  std::vector<mproc::Process> kids;
  for (int p = 0; p < producers; ++p)
    kids.push_back(started(method, condition_producer, cond, mem, p, per_producer));
  int consumed = 0;
  bool stalled = false;
  while (consumed < producers * per_producer && !stalled) {
    std::unique_lock g(cond);
    // The first wait also covers the producers' start-up.
    if (!cond.wait_for([&] { return at(mem, 0).load() > 0; }, 20s)) {
      stalled = true;
      break;
    }
    consumed += at(mem, 0).exchange(0);
    cond.notify_all();
  }
  for (auto& k : kids) CHECK(join_process(k) == 0);
  CHECK_FALSE(stalled);
  CHECK(consumed == producers * per_producer);
  for (int p = 0; p < producers; ++p)
    CHECK(at(mem, 3 + std::size_t(p)).load() == per_producer * (per_producer + 1) / 2);
}

TEST_CASE("Condition notify wakes one waiter; wait needs the lock") {
  FOR_EACH_START_METHOD(method);
  mproc::Lock lk;
  mproc::Condition cond(lk);
  CHECK_THROWS_AS(cond.wait(1ms), mproc::lock_error);
  CHECK_THROWS_AS(cond.notify(), mproc::lock_error);
  {
    std::scoped_lock g(cond);
    CHECK_FALSE(cond.wait(20ms));  // nobody notifies
    CHECK(lk.held_by_caller());
  }
  shared_ints mem = make_shared_ints();  // [0] waiters ready, [1] woken, [2] tickets
  std::vector<mproc::Process> kids;
  for (int c = 0; c < 3; ++c) kids.push_back(started(method, condition_ticket_waiter, cond, mem));
  REQUIRE(eventually([&] { return at(mem, 0).load() == 3; }));
  {
    std::scoped_lock g(cond);
    at(mem, 2) = 1;
    cond.notify();
  }
  CHECK(eventually([&] { return at(mem, 1).load() >= 1; }));
  std::this_thread::sleep_for(50ms);  // a second wake-up would show here
  CHECK(at(mem, 1).load() == 1);
  {
    std::scoped_lock g(cond);
    at(mem, 2) = 2;
    cond.notify_all();
  }
  for (auto& k : kids) CHECK(join_process(k) == 0);
  CHECK(at(mem, 1).load() == 3);
}

TEST_CASE("Condition over an RLock restores the recursion depth after wait") {
  mproc::RLock r;
  mproc::Condition cond(r);
  r.acquire();
  r.acquire();
  CHECK_FALSE(cond.wait(5ms));
  CHECK(r.recursion_depth() == 2);
  r.release();
  r.release();
}

TEST_CASE("Barrier with 4 processes over several rounds") {
  FOR_EACH_START_METHOD(method);
  mproc::Barrier bar(4);
  CHECK(bar.parties() == 4);
  shared_ints mem = make_shared_ints();  // [round*4 + index] = 1 when that index was returned
  constexpr int rounds = 5;
  std::vector<mproc::Process> kids;
  for (int c = 0; c < 3; ++c) kids.push_back(started(method, barrier_party, bar, mem, rounds));
  int mine = 0;
  try {
    mine = barrier_rounds(bar, mem, rounds);
  } catch (const mproc::broken_barrier_error&) {
    mine = 3;
  }
  CHECK(mine == 0);
  for (auto& k : kids) CHECK(join_process(k) == 0);
  for (int i = 0; i < rounds * 4; ++i) CHECK(at(mem, std::size_t(i)).load() == 1);
  CHECK_FALSE(bar.broken());
}

TEST_CASE("A broken Barrier raises broken_barrier_error; reset repairs it") {
  mproc::Barrier bar(3);
  SECTION("timeout breaks it for every waiter") {
    FOR_EACH_START_METHOD(method);
    auto k = started(method, expect_broken_barrier, bar);
    // Only two of three parties arrive: the parent's timeout breaks the barrier and
    // the child is released with the error too.
    REQUIRE(eventually([&] { return bar.n_waiting() >= 1; }));
    CHECK_THROWS_AS(bar.wait(100ms), mproc::broken_barrier_error);
    CHECK(join_process(k) == 0);
    CHECK(bar.broken());
    CHECK_THROWS_AS(bar.wait(10ms), mproc::broken_barrier_error);
    bar.reset();
    CHECK_FALSE(bar.broken());
    std::vector<mproc::Process> kids;
    for (int c = 0; c < 2; ++c) kids.push_back(started(method, barrier_wait_once, bar));
    CHECK(bar.wait(30s) < 3);
    for (auto& p : kids) CHECK(join_process(p) == 0);
  }
  SECTION("abort wakes a waiter in another process") {
    FOR_EACH_START_METHOD(method);
    auto k = started(method, expect_broken_barrier, bar);
    REQUIRE(eventually([&] { return bar.n_waiting() >= 1; }));
    bar.abort();
    CHECK(join_process(k) == 0);
    CHECK_THROWS_AS(bar.wait(), mproc::broken_barrier_error);
  }
  SECTION("the action runs once per round, in the last arriving party") {
    std::atomic<int> runs{0};
    mproc::Barrier b1(1, [&] { ++runs; });
    CHECK(b1.wait() == 0);
    CHECK(b1.wait(1s) == 0);
    CHECK(runs.load() == 2);
  }
  CHECK_THROWS_AS(mproc::Barrier(0), mproc::value_error);
}

TEST_CASE("Synchronization objects leak no descriptors") {
  std::size_t before = count_fds();
  {
    mproc::Lock a;
    mproc::RLock b;
    mproc::Semaphore c(3);
    mproc::BoundedSemaphore e(1);
    mproc::Event f;
    mproc::Condition g;
    mproc::Barrier h(2);
    auto copies = std::vector<mproc::Lock>(10, a);
    CHECK(count_fds() > before);
  }
  CHECK(count_fds() == before);
}
