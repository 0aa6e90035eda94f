// Every public blocking call given odd durations: NaN raises value_error, a negative
// one (-1 s, -inf) does not wait, a huge one (1e300 s, +inf, hours::max()) waits until
// the thing happens. One conversion serves them all (detail/deadline.hpp); these tests
// hold each call to it.
// mproc-test-timeout: 300
#include <catch2/catch.hpp>

#include "test_support.hpp"

#include <mproc/connection.hpp>
#include <mproc/managers.hpp>
#include <mproc/pool.hpp>
#include <mproc/process.hpp>
#include <mproc/queue.hpp>
#include <mproc/synchronize.hpp>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <semaphore>
#include <cmath>
#include <limits>
#include <string>
#include <thread>
#include <unistd.h>

using namespace std::chrono_literals;

namespace {

using dsec = std::chrono::duration<double>;
const dsec nan_d{std::numeric_limits<double>::quiet_NaN()};
const dsec neg_inf_d{-std::numeric_limits<double>::infinity()};
const dsec inf_d{std::numeric_limits<double>::infinity()};
const dsec huge_d{1e300};
const dsec minus_one_d{-1.0};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return dsec(std::chrono::steady_clock::now() - t0).count();
}

/// Checks one blocking call with every odd duration.
/// call(d): makes the call with timeout d; returns true if it got what it waited for
///          (false, or a timeout exception mapped to false, when it did not).
/// arm():   starts whatever makes the call succeed about 100 ms later; returns a
///          function that waits for that and resets the state to "not ready".
template <class Call, class Arm>
void check_durations(const char* name, Call call, Arm arm) {
  INFO(name);
  // NaN: refused at once, as a value_error naming the timeout.
  auto t0 = std::chrono::steady_clock::now();
  CHECK_THROWS_AS(call(nan_d), mproc::value_error);
  CHECK_THROWS_WITH(call(nan_d), Catch::Contains("NaN"));
  CHECK(seconds_since(t0) < 5);
  // Negative: a poll; nothing is ready, so it reports "not yet" without waiting.
  for (dsec d : {minus_one_d, neg_inf_d}) {
    t0 = std::chrono::steady_clock::now();
    CHECK_FALSE(call(d));
    CHECK(seconds_since(t0) < 5);
  }
  t0 = std::chrono::steady_clock::now();
  CHECK_FALSE(call(-1s));
  CHECK(seconds_since(t0) < 5);
  // Huge and infinite: waits (no overflow into the past), and gets it.
  for (dsec d : {huge_d, inf_d}) {
    auto done = arm();
    t0 = std::chrono::steady_clock::now();
    CHECK(call(d));
    CHECK(seconds_since(t0) >= 0.05);
    done();
  }
  auto done = arm();
  CHECK(call(std::chrono::hours::max()));
  done();
}

/// Runs f about 100 ms from now on a thread; the returned function joins it.
template <class F>
std::function<void()> later(F f) {
  auto t = std::make_shared<std::thread>([f] {
    std::this_thread::sleep_for(100ms);
    f();
  });
  return [t] { t->join(); };
}

/// done, then reset: the state goes back to "not ready" for the next case.
template <class F>
std::function<void()> then(std::function<void()> done, F reset) {
  return [done, reset] {
    done();
    reset();
  };
}

int square(int x) { return x * x; }
int slow_square(int x) {
  ::usleep(150'000);
  return x * x;
}

}  // namespace

TEST_CASE("Event, Lock, RLock, Semaphore, Condition, Barrier with odd durations", "[durations]") {
  mproc::Event ev;
  check_durations("Event::wait", [&](auto d) { return ev.wait(d); },
                  [&] { return then(later([&] { ev.set(); }), [&] { ev.clear(); }); });

  for (int kind = 0; kind < 2; ++kind) {
    mproc::Lock plain;
    mproc::RLock recursive;
    auto acquire = [&](auto d) { return kind ? recursive.acquire(true, d) : plain.acquire(true, d); };
    auto take = [&] { kind ? recursive.acquire() : plain.acquire(); };
    auto give = [&] { kind ? recursive.release() : plain.release(); };
    // Held by another thread, which lets go when armed and takes it back after.
    std::binary_semaphore held{0}, let_go{0}, retake{0};
    std::atomic<bool> stop{false};
    std::thread holder([&] {
      for (;;) {
        take();
        held.release();
        let_go.acquire();
        give();
        if (stop) return;
        retake.acquire();
      }
    });
    held.acquire();
    check_durations(kind ? "RLock::acquire" : "Lock::acquire",
                    [&](auto d) {
                      bool got = acquire(d);
                      if (got) give();
                      return got;
                    },
                    [&] {
                        return then(later([&] { let_go.release(); }), [&] {
                        retake.release();
                        held.acquire();
                      });
                    });
    CHECK_THROWS_AS(plain.acquire(false, nan_d), mproc::value_error);
    stop = true;
    let_go.release();
    holder.join();
  }

  mproc::Semaphore sem(0);
  check_durations("Semaphore::acquire", [&](auto d) { return sem.acquire(true, d); },
                  [&] { return later([&] { sem.release(); }); });
  mproc::BoundedSemaphore bsem(1);
  REQUIRE(bsem.acquire());
  check_durations("BoundedSemaphore::acquire", [&](auto d) { return bsem.acquire(true, d); },
                  [&] { return later([&] { bsem.release(); }); });

  mproc::Condition cond;
  bool flag = false;
  check_durations("Condition::wait",
                  [&](auto d) {
                    std::scoped_lock g(cond);
                    return cond.wait(d);
                  },
                  [&] {
                    return later([&] {
                      std::scoped_lock g(cond);
                      cond.notify_all();
                    });
                  });
  check_durations("Condition::wait_for",
                  [&](auto d) {
                    std::scoped_lock g(cond);
                    bool got = cond.wait_for([&] { return flag; }, d);
                    flag = false;
                    return got;
                  },
                  [&] {
                    return later([&] {
                      std::scoped_lock g(cond);
                      flag = true;
                      cond.notify_all();
                    });
                  });

  // Barrier: a timed-out wait breaks it (Python's rule), so each case gets its own.
  {
    mproc::Barrier b(2);
    CHECK_THROWS_AS(b.wait(nan_d), mproc::value_error);
    for (dsec d : {minus_one_d, neg_inf_d}) {
      mproc::Barrier b2(2);
      CHECK_THROWS_AS(b2.wait(d), mproc::broken_barrier_error);
    }
    for (dsec d : {huge_d, inf_d}) {
      mproc::Barrier b3(2);
      auto done = later([&] { b3.wait(); });
      CHECK_NOTHROW(b3.wait(d));
      done();
    }
  }
}

TEST_CASE("Connection calls with odd durations", "[durations]") {
  auto [a, b] = mproc::Pipe();
  check_durations("Connection::recv<int>",
                  [&](auto d) {
                    try {
                      return b.recv<int>(d) == 7;
                    } catch (const mproc::timeout_error&) {
                      return false;
                    }
                  },
                  [&] { return later([&] { a.send(7); }); });
  check_durations("Connection::recv_bytes",
                  [&](auto d) {
                    try {
                      return b.recv_bytes(d).size() == 3;
                    } catch (const mproc::timeout_error&) {
                      return false;
                    }
                  },
                  [&] { return later([&] { a.send_bytes(std::string_view("abc")); }); });
  std::vector<std::byte> buf(16);
  check_durations("Connection::recv_bytes_into",
                  [&](auto d) {
                    try {
                      return b.recv_bytes_into(buf, d) == 3;
                    } catch (const mproc::timeout_error&) {
                      return false;
                    }
                  },
                  [&] { return later([&] { a.send_bytes(std::string_view("xyz")); }); });
  check_durations("Connection::poll",
                  [&](auto d) {
                    bool ready = b.poll(d);
                    if (ready) (void)b.recv<int>();
                    return ready;
                  },
                  [&] { return later([&] { a.send(1); }); });
  check_durations("Connection::recv_fd",
                  [&](auto d) {
                    try {
                      return bool(b.recv_fd(d));
                    } catch (const mproc::timeout_error&) {
                      return false;
                    }
                  },
                  [&] { return later([&] { a.send_fd(0); }); });
  // send: a full socket buffer, drained by the armed thread.
  CHECK_THROWS_AS(a.send(1, nan_d), mproc::value_error);
  CHECK_THROWS_AS(a.send_bytes(std::span<const std::byte>(buf), nan_d), mproc::value_error);
  a.send(2, minus_one_d);  // room: a negative timeout still sends what fits now
  CHECK(b.recv<int>(1s) == 2);
  a.send(3, huge_d);
  a.send(4, inf_d);
  CHECK(b.recv<int>(1s) == 3);
  CHECK(b.recv<int>(1s) == 4);
}

TEST_CASE("Process::join with odd durations", "[durations][process]") {
  mproc::Process p(mproc_test::with_method(mproc::start_method::fork), [] { ::usleep(300'000); });
  p.start();
  CHECK_THROWS_AS(p.join(nan_d), mproc::value_error);
  CHECK(p.is_alive());
  CHECK_FALSE(p.join(minus_one_d));
  CHECK_FALSE(p.join(neg_inf_d));
  CHECK(p.is_alive());
  auto t0 = std::chrono::steady_clock::now();
  CHECK(p.join(inf_d));
  CHECK(seconds_since(t0) >= 0.05);
  CHECK(p.exitcode() == 0);
  mproc::Process q(mproc_test::with_method(mproc::start_method::fork), [] { ::usleep(100'000); });
  q.start();
  CHECK(q.join(huge_d));
  mproc::Process r(mproc_test::with_method(mproc::start_method::fork), [] { ::usleep(100'000); });
  r.start();
  CHECK(r.join(std::chrono::hours::max()));
}

TEST_CASE("Queue, JoinableQueue and SimpleQueue with odd durations", "[durations]") {
  mproc::Queue<int> q;
  check_durations("Queue::get",
                  [&](auto d) {
                    try {
                      return q.get(d) == 5;
                    } catch (const mproc::queue_empty&) {
                      return false;
                    }
                  },
                  [&] { return later([&] { q.put(5); }); });
  check_durations("Queue::try_get", [&](auto d) { return q.try_get(d).has_value(); },
                  [&] { return later([&] { q.put(6); }); });
  mproc::Queue<int> bounded(1);
  bounded.put(0);
  check_durations("Queue::put (full)",
                  [&](auto d) {
                    try {
                      bounded.put(1, d);
                      return true;
                    } catch (const mproc::queue_full&) {
                      return false;
                    }
                  },
                  [&] {
                    return later([&] { (void)bounded.get(); });
                  });
  mproc::JoinableQueue<int> jq;
  jq.put(1);
  check_durations("JoinableQueue::join", [&](auto d) { return jq.join(d); },
                  [&] {
                    return then(later([&] {
                                  (void)jq.get();
                                  jq.task_done();
                                }),
                                [&] { jq.put(1); });  // unfinished again for the next case
                  });
  mproc::SimpleQueue<int> sq;
  CHECK_THROWS_AS(sq.get(nan_d), mproc::value_error);
  CHECK_THROWS_AS(sq.get(minus_one_d), mproc::queue_empty);
}

TEST_CASE("AsyncResult::get / wait and pool options with odd durations", "[durations][pool]") {
  mproc::Pool pool(1);
  auto r = pool.apply_async(slow_square, 3);
  CHECK_THROWS_AS(r.get(nan_d), mproc::value_error);
  CHECK_THROWS_AS(r.wait(nan_d), mproc::value_error);
  CHECK_FALSE(r.wait(minus_one_d));
  CHECK_THROWS_AS(r.get(neg_inf_d), mproc::timeout_error);
  CHECK(r.wait(inf_d));
  CHECK(r.get(huge_d) == 9);
  auto s = pool.apply_async(slow_square, 4);
  CHECK(s.get(std::chrono::hours::max()) == 16);
  auto t = pool.apply_async(slow_square, 5);
  CHECK(t.get(inf_d) == 25);
  CHECK_THROWS_AS(mproc::Pool({.processes = 1, .task_timeout = nan_d}), mproc::value_error);
  CHECK(pool.apply(square, 6) == 36);
}

TEST_CASE("Manager proxies with odd durations", "[durations][managers]") {
  mproc::Manager m;
  auto q = m.Queue<int>();
  check_durations("QueueProxy::get",
                  [&](auto d) {
                    try {
                      return q.get(d) == 8;
                    } catch (const mproc::queue_empty&) {
                      return false;
                    }
                  },
                  [&] { return later([&] { q.put(8); }); });
  auto lk = m.Lock();
  CHECK_THROWS_AS(lk.acquire(true, nan_d), mproc::value_error);
  CHECK_THROWS_AS(lk.acquire(false, nan_d), mproc::value_error);
  REQUIRE(lk.acquire());
  CHECK_FALSE(lk.acquire(true, minus_one_d));
  lk.release();
  CHECK(lk.acquire(true, inf_d));
  lk.release();
  CHECK(lk.acquire(true, huge_d));
  lk.release();
  CHECK_THROWS_AS(mproc::Manager({.timeout = std::chrono::nanoseconds(-1)}), mproc::value_error);
}
