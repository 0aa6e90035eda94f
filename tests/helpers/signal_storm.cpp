// Runs the library's blocking calls while no-op signal handlers (installed without
// SA_RESTART) interrupt the program about every millisecond: SIGALRM from an interval
// timer (any thread may take it) and SIGUSR1 aimed at the main thread, where the
// calls below block. Every call must give the same result as without signals, and a
// timed call must time out after its timeout: not early (EINTR taken for the end) and
// not much later (the full timeout restarted after each signal would never end).
// Usage: signal_storm <fork|spawn|forkserver>. Prints "ok <check>" per check, then
// "signals <count>"; exits 0 when every check passed, 1 otherwise ("FAIL ..." lines).
#include <mproc/mproc.hpp>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include <pthread.h>
#include <signal.h>
#include <sys/time.h>
#include <unistd.h>

namespace {

using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

std::atomic<long> signals_seen{0};
void count_signal(int) { signals_seen.fetch_add(1, std::memory_order_relaxed); }

int failures = 0;
void check(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok" : "FAIL", what.c_str());
  std::fflush(stdout);
  if (!ok) ++failures;
}

// A timed wait that ran out must have lasted its timeout, and not much more.
bool lasted(clock_type::time_point start, std::chrono::milliseconds timeout) {
  const auto took = clock_type::now() - start;
  return took >= timeout && took < timeout + 2s;
}

long square(long x) { return x * x; }

void produce(mproc::Queue<int> q, int n) {
  for (int i = 0; i < n; ++i) {
    q.put(i);
    if (i % 100 == 0) std::this_thread::sleep_for(1ms);  // the consumer waits now and then
  }
}

void echo(mproc::Connection c) {
  for (;;) {
    int v = c.recv<int>();
    if (v < 0) return;
    c.send(v + 1);
  }
}

void hold_lock(mproc::Lock lock, mproc::Event held, mproc::Event release) {
  lock.acquire();
  held.set();
  (void)release.wait(20s);
  lock.release();
}

void set_later(mproc::Event e) {
  std::this_thread::sleep_for(100ms);
  e.set();
}

void nap(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <fork|spawn|forkserver>\n", argv[0]);
    return 2;
  }
  const std::string m = argv[1];
  const mproc::start_method method = m == "spawn"        ? mproc::start_method::spawn
                                     : m == "forkserver" ? mproc::start_method::forkserver
                                                         : mproc::start_method::fork;
  mproc::set_start_method(method);

  struct sigaction sa {};
  sa.sa_handler = count_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: interrupted system calls fail with EINTR
  ::sigaction(SIGALRM, &sa, nullptr);
  ::sigaction(SIGUSR1, &sa, nullptr);

  const pthread_t main_thread = ::pthread_self();
  std::atomic<bool> stop{false};
  std::thread pinger([&] {
    sigset_t mine;
    sigemptyset(&mine);
    sigaddset(&mine, SIGALRM);
    sigaddset(&mine, SIGUSR1);
    ::pthread_sigmask(SIG_BLOCK, &mine, nullptr);
    while (!stop.load()) {
      ::pthread_kill(main_thread, SIGUSR1);
      std::this_thread::sleep_for(1ms);
    }
  });
  // A call that hangs under signals fails the run instead of hanging it (children die
  // with this process).
  std::thread([] {
    std::this_thread::sleep_for(60s);
    std::printf("FAIL watchdog: still running after 60 s\n");
    std::fflush(stdout);
    ::_exit(1);
  }).detach();
  itimerval every_ms{{0, 1000}, {0, 1000}};
  ::setitimer(ITIMER_REAL, &every_ms, nullptr);

  try {
    {
      mproc::Pool pool(2);
      std::vector<long> in(2000);
      for (long i = 0; i < 2000; ++i) in[std::size_t(i)] = i;
      auto out = pool.map(square, in, {.chunksize = 1});
      bool right = out.size() == in.size();
      for (std::size_t i = 0; right && i < out.size(); ++i) right = out[i] == long(i) * long(i);
      check(right, "Pool.map");
      auto r = pool.apply_async(nap, 3000);
      auto t0 = clock_type::now();
      bool timed_out = false;
      try {
        r.get(100ms);
      } catch (const mproc::timeout_error&) {
        timed_out = true;
      }
      check(timed_out && lasted(t0, 100ms), "AsyncResult.get(100ms) times out on time");
      pool.terminate();
    }
    {
      mproc::Queue<int> q;
      mproc::Process p(produce, q, 3000);
      p.start();
      bool in_order = true;
      for (int i = 0; i < 3000; ++i) in_order = in_order && q.get(10s) == i;
      check(in_order, "Queue put/get across processes");
      auto t0 = clock_type::now();
      bool empty = false;
      try {
        (void)q.get(100ms);
      } catch (const mproc::queue_empty&) {
        empty = true;
      }
      check(empty && lasted(t0, 100ms), "Queue.get(100ms) on an empty queue");
      check(p.join(10s) && p.exitcode() == 0, "producer joined");
      mproc::Queue<int> small(1);
      small.put(1);
      t0 = clock_type::now();
      bool full = false;
      try {
        small.put(2, 100ms);
      } catch (const mproc::queue_full&) {
        full = true;
      }
      check(full && lasted(t0, 100ms), "Queue.put(100ms) on a full queue");
    }
    {
      auto [mine, theirs] = mproc::Pipe();
      mproc::Process p(echo, theirs);
      p.start();
      theirs.close();
      bool right = true;
      for (int i = 0; i < 500; ++i) {
        mine.send(i);
        right = right && mine.recv<int>(10s) == i + 1;
      }
      check(right, "Pipe send/recv round trips");
      auto t0 = clock_type::now();
      bool timed_out = false;
      try {
        (void)mine.recv<int>(100ms);
      } catch (const mproc::timeout_error&) {
        timed_out = true;
      }
      check(timed_out && lasted(t0, 100ms), "Connection.recv(100ms) with nothing sent");
      t0 = clock_type::now();
      check(!mine.poll(100ms) && lasted(t0, 100ms), "Connection.poll(100ms)");
      mine.send(-1);
      check(p.join(10s) && p.exitcode() == 0, "echo joined");
    }
    {
      mproc::Lock lock;
      mproc::Event held, release;
      mproc::Process p(hold_lock, lock, held, release);
      p.start();
      check(held.wait(10s), "Event.wait(10s) for an event set by a child");
      auto t0 = clock_type::now();
      check(!lock.acquire(true, 100ms) && lasted(t0, 100ms), "Lock.acquire(100ms) on a held lock");
      mproc::Event never;
      t0 = clock_type::now();
      check(!never.wait(100ms) && lasted(t0, 100ms), "Event.wait(100ms) on an unset event");
      release.set();
      check(lock.acquire(true, 10s), "Lock.acquire(10s) once released");
      lock.release();
      check(p.join(10s) && p.exitcode() == 0, "lock holder joined");
      mproc::Event later;
      mproc::Process setter(set_later, later);
      setter.start();
      check(later.wait(), "Event.wait() untimed");
      setter.join();
    }
    {
      mproc::Process p(nap, 3000);
      p.start();
      auto t0 = clock_type::now();
      check(!p.join(100ms) && lasted(t0, 100ms), "Process.join(100ms) on a running child");
      p.terminate();
      check(p.join(10s), "Process.join after terminate");
      mproc::Process q(nap, 50);
      q.start();
      q.join();
      check(q.exitcode() == 0, "Process.join() untimed");
    }
  } catch (const std::exception& e) {
    check(false, std::string("exception: ") + e.what());
  }

  itimerval off{};
  ::setitimer(ITIMER_REAL, &off, nullptr);
  stop = true;
  pinger.join();
  std::printf("signals %ld\n", signals_seen.load());
  return failures ? 1 : 0;
}
