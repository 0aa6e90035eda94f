// Cross-process behaviour of Lock, RLock, Semaphore, BoundedSemaphore, Event,
// Condition and Barrier. Children are forked and report through exit codes; every
// wait has a timeout and children that overrun are killed.
#include <catch2/catch.hpp>

#include "test_support.hpp"

#include <mproc/detail/posix/fork.hpp>
#include <mproc/detail/posix/shm_region.hpp>
#include <mproc/process.hpp>
#include <mproc/synchronize.hpp>

#include <atomic>
#include <chrono>
#include <csignal>
#include <dirent.h>
#include <mutex>
#include <poll.h>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
namespace d = mproc::detail;

using mproc_test::count_fds;
using mproc_test::join_child;
using mproc_test::kTimedOut;

namespace {

/// A shared int for children to update (Value is tested in test_sharedctypes).
struct shared_ints {
  d::shm_region r = d::shm_region::create(4096);
  std::atomic<int>& operator[](std::size_t i) const { return r.as<std::atomic<int>>()[i]; }
  int* raw() const { return r.as<int>(); }
};

int join_process(mproc::Process& p, std::chrono::milliseconds timeout = 20s) {
  if (!p.join(timeout)) {
    p.kill();
    p.join();
    return kTimedOut;
  }
  return p.exitcode().value_or(kTimedOut);
}

void locked_increments(mproc::Lock lock, d::shm_region mem, int n) {
  for (int i = 0; i < n; ++i) {
    std::scoped_lock g(lock);
    // A non-atomic read-modify-write: only the lock keeps it exact.
    volatile int* p = mem.as<int>();
    *p = *p + 1;
  }
}

void wait_for_event(mproc::Event ev, mproc::Event ready) {
  ready.set();
  if (!ev.wait(10s)) std::exit(2);
}

}  // namespace

TEST_CASE("Lock protects a counter incremented by 4 Processes") {
  mproc::Lock lock;
  shared_ints mem;
  constexpr int per_child = 20000;
  std::vector<mproc::Process> procs;
  for (int c = 0; c < 4; ++c) procs.emplace_back(locked_increments, lock, mem.r, per_child);
  for (auto& p : procs) p.start();
  for (auto& p : procs) CHECK(join_process(p) == 0);
  CHECK(mem.raw()[0] == 4 * per_child);
}

TEST_CASE("Lock protects a counter incremented by 4 forked children") {
  mproc::Lock lock;
  shared_ints mem;
  constexpr int per_child = 20000;
  std::vector<pid_t> kids;
  for (int c = 0; c < 4; ++c)
    kids.push_back(d::fork_child([&] {
      for (int i = 0; i < per_child; ++i) {
        std::scoped_lock g(lock);
        // A non-atomic read-modify-write: only the lock keeps it exact.
        volatile int* p = mem.raw();
        *p = *p + 1;
      }
      return 0;
    }));
  for (pid_t k : kids) CHECK(join_child(k) == 0);
  CHECK(mem.raw()[0] == 4 * per_child);
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
  SECTION("another process cannot take or release a held lock") {
    lock.acquire();
    pid_t k = d::fork_child([&] {
      if (lock.try_lock()) return 2;
      if (lock.acquire(true, 50ms)) return 3;
      try {
        lock.release();
        return 4;
      } catch (const mproc::lock_error&) {
      }
      return 0;
    });
    CHECK(join_child(k) == 0);
    lock.release();
    k = d::fork_child([&] { return lock.acquire(true, 5s) ? (lock.release(), 0) : 5; });
    CHECK(join_child(k) == 0);
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

TEST_CASE("A Lock whose owner was SIGKILLed is recovered by the next acquirer") {
  mproc::Lock lock;
  int fds[2];
  REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
  d::unique_fd rd(fds[0]), wr(fds[1]);
  pid_t k = d::fork_child([&] {
    lock.acquire();
    char c = 'x';
    if (::write(wr.get(), &c, 1) != 1) return 2;
    ::pause();
    return 0;
  });
  wr.reset();
  char c = 0;
  REQUIRE(d::retry_eintr([&] { return ::read(rd.get(), &c, 1); }) == 1);
  CHECK_FALSE(lock.acquire(false));
  ::kill(k, SIGKILL);
  CHECK(join_child(k) == -SIGKILL);
  REQUIRE(lock.acquire(true, 5s));
  CHECK(lock.owner_died());
  lock.release();
  REQUIRE(lock.acquire(true, 5s));
  CHECK_FALSE(lock.owner_died());
  lock.release();
}

TEST_CASE("A waiter blocked on a Lock is woken when the owner dies") {
  mproc::RLock lock;
  lock.acquire();
  // The owner is a child; the parent blocks in acquire while it is killed.
  mproc::Event held;
  pid_t owner = d::fork_child([&] {
    lock.acquire();  // blocks until the parent releases below
    held.set();
    ::pause();
    return 0;
  });
  lock.release();
  REQUIRE(held.wait(5s));
  std::thread killer([&] {
    std::this_thread::sleep_for(100ms);
    ::kill(owner, SIGKILL);
  });
  bool got = lock.acquire(true, 10s);
  killer.join();
  CHECK(join_child(owner) == -SIGKILL);
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
  mproc::Condition cond;
  shared_ints mem;  // [0] waiters ready, [1] go
  pid_t victim = d::fork_child([&] {
    std::scoped_lock g(cond);
    ++mem[0];
    (void)cond.wait(30s);
    return 0;
  });
  pid_t survivor = d::fork_child([&] {
    std::scoped_lock g(cond);
    ++mem[0];
    return cond.wait_for([&] { return mem[1].load() != 0; }, 10s) ? 0 : 2;
  });
  auto until = std::chrono::steady_clock::now() + 10s;
  while (mem[0].load() < 2 && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(1ms);
  ::kill(victim, SIGKILL);
  CHECK(join_child(victim) == -SIGKILL);
  {
    REQUIRE(cond.acquire(true, 5s));
    mem[1] = 1;
    cond.notify_all();
    cond.release();
  }
  CHECK(join_child(survivor) == 0);
}

TEST_CASE("RLock recursion and ownership") {
  mproc::RLock r;
  r.acquire();
  r.acquire();
  CHECK(r.acquire(false));
  CHECK(r.recursion_depth() == 3);
  pid_t k = d::fork_child([&] {
    if (r.acquire(true, 50ms)) return 2;
    try {
      r.release();
      return 3;
    } catch (const mproc::lock_error&) {
      return 0;
    }
  });
  CHECK(join_child(k) == 0);
  r.release();
  r.release();
  CHECK(r.recursion_depth() == 1);
  r.release();
  CHECK(r.recursion_depth() == 0);
  CHECK_THROWS_AS(r.release(), mproc::lock_error);
  k = d::fork_child([&] {
    if (!r.acquire(true, 5s)) return 2;
    r.acquire();
    r.release();
    r.release();
    return 0;
  });
  CHECK(join_child(k) == 0);
}

TEST_CASE("Semaphore counts across processes, with timeouts") {
  mproc::Semaphore s(2);
  CHECK(s.get_value() == 2);
  CHECK(s.acquire());
  CHECK(s.acquire(false));
  CHECK_FALSE(s.acquire(false));
  CHECK_FALSE(s.acquire(true, 30ms));
  CHECK_FALSE(s.try_lock_for(10ms));
  pid_t k = d::fork_child([&] {
    std::this_thread::sleep_for(50ms);
    s.release();
    return 0;
  });
  CHECK(s.acquire(true, 10s));
  CHECK(join_child(k) == 0);
  s.release(2);
  CHECK(s.get_value() == 2);

  SECTION("many processes contend for 2 slots, never more than 2 inside") {
    mproc::Semaphore slots(2);
    shared_ints mem;  // [0] inside now, [1] max seen, [2] entries
    std::vector<pid_t> kids;
    for (int c = 0; c < 4; ++c)
      kids.push_back(d::fork_child([&] {
        for (int i = 0; i < 200; ++i) {
          if (!slots.acquire(true, 10s)) return 2;
          int now = ++mem[0];
          int seen = mem[1].load();
          while (now > seen && !mem[1].compare_exchange_weak(seen, now)) {
          }
          ++mem[2];
          --mem[0];
          slots.release();
        }
        return 0;
      }));
    for (pid_t p : kids) CHECK(join_child(p) == 0);
    CHECK(mem[1].load() <= 2);
    CHECK(mem[2].load() == 800);
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
  CHECK_THROWS_AS(mproc::Semaphore(-1), std::invalid_argument);
}

TEST_CASE("Event wakes a waiter in another process") {
  mproc::Event ev;
  CHECK_FALSE(ev.is_set());
  CHECK_FALSE(ev.wait(20ms));
  mproc::Event child_ready;
  mproc::Process p(wait_for_event, ev, child_ready);
  p.start();
  REQUIRE(child_ready.wait(10s));
  std::this_thread::sleep_for(20ms);
  ev.set();
  CHECK(join_process(p) == 0);
  CHECK(ev.is_set());
  CHECK(ev.wait(0ms));
  ev.clear();
  CHECK_FALSE(ev.is_set());
}

TEST_CASE("Condition producer/consumer across processes") {
  mproc::Condition cond;
  shared_ints mem;  // [0] items in buffer, [1] total consumed sum, [2..] unused
  constexpr int producers = 3, per_producer = 300, capacity = 4;
  std::vector<pid_t> kids;
  for (int p = 0; p < producers; ++p)
    kids.push_back(d::fork_child([&, p] {
      for (int i = 1; i <= per_producer; ++i) {
        std::unique_lock g(cond);
        if (!cond.wait_for([&] { return mem[0].load() < capacity; }, 10s)) return 2;
        mem[0] += 1;
        mem[3 + p] += i;  // what this producer produced
        cond.notify_all();
      }
      return 0;
    }));
  int consumed = 0;
  bool stalled = false;
  while (consumed < producers * per_producer && !stalled) {
    std::unique_lock g(cond);
    if (!cond.wait_for([&] { return mem[0].load() > 0; }, 10s)) {
      stalled = true;
      break;
    }
    consumed += mem[0].exchange(0);
    cond.notify_all();
  }
  for (pid_t k : kids) CHECK(join_child(k) == 0);
  CHECK_FALSE(stalled);
  CHECK(consumed == producers * per_producer);
  for (int p = 0; p < producers; ++p) CHECK(mem[3 + p].load() == per_producer * (per_producer + 1) / 2);
}

TEST_CASE("Condition notify wakes one waiter; wait needs the lock") {
  mproc::Lock lk;
  mproc::Condition cond(lk);
  CHECK_THROWS_AS(cond.wait(1ms), mproc::lock_error);
  CHECK_THROWS_AS(cond.notify(), mproc::lock_error);
  {
    std::scoped_lock g(cond);
    CHECK_FALSE(cond.wait(20ms));  // nobody notifies
    CHECK(lk.held_by_caller());
  }
  shared_ints mem;  // [0] waiters ready, [1] woken
  std::vector<pid_t> kids;
  for (int c = 0; c < 3; ++c)
    kids.push_back(d::fork_child([&] {
      std::scoped_lock g(cond);
      ++mem[0];
      if (!cond.wait_for([&] { return mem[2].load() > 0; }, 10s)) return 2;
      --mem[2];  // consume one ticket
      ++mem[1];
      return 0;
    }));
  auto until = std::chrono::steady_clock::now() + 10s;
  while (mem[0].load() < 3 && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(1ms);
  REQUIRE(mem[0].load() == 3);
  {
    std::scoped_lock g(cond);
    mem[2] = 1;
    cond.notify();
  }
  until = std::chrono::steady_clock::now() + 10s;
  while (mem[1].load() < 1 && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(1ms);
  CHECK(mem[1].load() == 1);
  {
    std::scoped_lock g(cond);
    mem[2] = 2;
    cond.notify_all();
  }
  for (pid_t k : kids) CHECK(join_child(k) == 0);
  CHECK(mem[1].load() == 3);
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
  mproc::Barrier bar(4);
  CHECK(bar.parties() == 4);
  shared_ints mem;  // [round*4 + index] = 1 when that index was returned
  constexpr int rounds = 5;
  auto party = [&] {
    for (int r = 0; r < rounds; ++r) {
      unsigned idx = bar.wait(10s);
      if (idx >= 4) return 2;
      mem[r * 4 + idx] += 1;
    }
    return 0;
  };
  std::vector<pid_t> kids;
  for (int c = 0; c < 3; ++c) kids.push_back(d::fork_child(party));
  int mine = 0;
  try {
    mine = party();
  } catch (const mproc::broken_barrier_error&) {
    mine = 3;
  }
  CHECK(mine == 0);
  for (pid_t k : kids) CHECK(join_child(k) == 0);
  for (int i = 0; i < rounds * 4; ++i) CHECK(mem[i].load() == 1);
  CHECK_FALSE(bar.broken());
}

TEST_CASE("A broken Barrier raises broken_barrier_error; reset repairs it") {
  mproc::Barrier bar(3);
  SECTION("timeout breaks it for every waiter") {
    pid_t k = d::fork_child([&] {
      try {
        bar.wait(10s);
        return 2;
      } catch (const mproc::broken_barrier_error&) {
        return 0;
      }
    });
    // Only two of three parties arrive: the parent's timeout breaks the barrier and
    // the child is released with the error too.
    std::this_thread::sleep_for(20ms);
    CHECK_THROWS_AS(bar.wait(100ms), mproc::broken_barrier_error);
    CHECK(join_child(k) == 0);
    CHECK(bar.broken());
    CHECK_THROWS_AS(bar.wait(10ms), mproc::broken_barrier_error);
    bar.reset();
    CHECK_FALSE(bar.broken());
    std::vector<pid_t> kids;
    for (int c = 0; c < 2; ++c) kids.push_back(d::fork_child([&] { return bar.wait(10s) < 3 ? 0 : 2; }));
    CHECK(bar.wait(10s) < 3);
    for (pid_t p : kids) CHECK(join_child(p) == 0);
  }
  SECTION("abort wakes a waiter in another process") {
    pid_t k = d::fork_child([&] {
      try {
        bar.wait(10s);
        return 2;
      } catch (const mproc::broken_barrier_error&) {
        return 0;
      }
    });
    auto until = std::chrono::steady_clock::now() + 10s;
    while (bar.n_waiting() < 1 && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(1ms);
    bar.abort();
    CHECK(join_child(k) == 0);
    CHECK_THROWS_AS(bar.wait(), mproc::broken_barrier_error);
  }
  SECTION("the action runs once per round, in the last arriving party") {
    shared_ints mem;
    mproc::Barrier b1(1, [&] { ++mem[0]; });
    CHECK(b1.wait() == 0);
    CHECK(b1.wait(1s) == 0);
    CHECK(mem[0].load() == 2);
  }
  CHECK_THROWS_AS(mproc::Barrier(0), std::invalid_argument);
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
