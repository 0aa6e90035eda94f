// Shared state benchmarks, side by side in one run:
//
//  1. A counter incremented under a lock by 2 processes x N, both released at once
//     from a start line: mproc::Value<int> with its RLock, vs the raw limits (a
//     lock-free atomic add in shared memory, and a plain process-shared pthread
//     mutex), vs Python's multiprocessing.Value.
//  2. A 256 MiB SharedMemory block filled by 2 processes (one half each), on fresh
//     pages (first touch) and again by the same processes (warm), vs 2 threads
//     filling private memory, vs Python's shared_memory doing the same fill.
//
// Rounds are interleaved (mproc, raw, Python, ...) and medians reported, so a noisy
// machine skews every column alike. Python is benchmarks/python/bench_shared_state.py.
//
//   bench_shared_state [--rounds N] [--quick] [--json] [--no-python] [--increments N] [--mib N]
#include <mproc/process.hpp>
#include <mproc/shared_memory.hpp>
#include <mproc/sharedctypes.hpp>
#include <mproc/synchronize.hpp>

#include "bench_common.hpp"

#include <atomic>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <pthread.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

using bench::clk;
using bench::secs_since;

namespace {

/// Runs body(i) in 2 forked processes and waits for both. With `gated`, both wait at a
/// start line and the time runs from their release (so they really contend);
/// otherwise from fork to reap.
template <class Body>
double two_raw_processes(Body body, bool gated = false) {
  auto* gate = static_cast<std::atomic<int>*>(
      ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  new (gate) std::atomic<int>(0);
  new (gate + 1) std::atomic<int>(0);
  auto t = clk::now();
  pid_t kids[2];
  for (int i = 0; i < 2; ++i) {
    kids[i] = ::fork();
    if (kids[i] == 0) {
      if (gated) {
        gate[1].fetch_add(1);
        while (gate[0].load() == 0) std::this_thread::yield();
      }
      body(i);
      ::_exit(0);
    }
  }
  if (gated) {
    while (gate[1].load() < 2) std::this_thread::yield();
    t = clk::now();
    gate[0].store(1);
  }
  for (pid_t k : kids) ::waitpid(k, nullptr, 0);
  ::munmap(gate, 4096);
  return secs_since(t);
}

/// As two_raw_processes, with mproc::Process; a gated target gets (i, ready, go, args...)
/// and must release `ready` then wait for `go`.
template <bool gated, class Target, class... Args>
double two_mproc_processes(Target target, Args... args) {
  std::vector<mproc::Process> ps;
  mproc::Semaphore ready(0);
  mproc::Event go;
  for (int i = 0; i < 2; ++i) {
    if constexpr (gated)
      ps.emplace_back(target, i, ready, go, args...);
    else
      ps.emplace_back(target, i, args...);
  }
  auto t = clk::now();
  for (auto& p : ps) p.start();
  if (gated) {
    for (int i = 0; i < 2; ++i) ready.acquire();
    t = clk::now();
    go.set();
  }
  for (auto& p : ps) p.join();
  double s = secs_since(t);
  for (auto& p : ps)
    if (p.exitcode() != 0) {
      std::fprintf(stderr, "worker failed\n");
      std::exit(1);
    }
  return s;
}

// ------------------------------------------------------------ counter under a lock

double mproc_value(int increments) {
  mproc::Value<int> counter(0);
  double s = two_mproc_processes<true>(
      [](int, mproc::Semaphore ready, mproc::Event go, mproc::Value<int> c, int n) {
        ready.release();
        go.wait();
        for (int i = 0; i < n; ++i) {
          std::scoped_lock g(c.get_lock());
          c.value() += 1;
        }
      },
      counter, increments);
  if (counter.value() != 2 * increments) {
    std::fprintf(stderr, "mproc Value lost updates: %d\n", counter.value());
    std::exit(1);
  }
  return s;
}

double raw_atomic(int increments) {
  auto* p = static_cast<std::atomic<int>*>(
      ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  new (p) std::atomic<int>(0);
  double s = two_raw_processes([&](int) {
    for (int i = 0; i < increments; ++i) p->fetch_add(1, std::memory_order_relaxed);
  }, true);
  bool ok = p->load() == 2 * increments;
  ::munmap(p, 4096);
  if (!ok) std::exit(1);
  return s;
}

double raw_pthread_mutex(int increments) {
  struct shared {
    pthread_mutex_t m;
    alignas(64) int value;
  };
  auto* p = static_cast<shared*>(
      ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  pthread_mutexattr_t a;
  pthread_mutexattr_init(&a);
  pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
  pthread_mutex_init(&p->m, &a);
  p->value = 0;
  double s = two_raw_processes([&](int) {
    for (int i = 0; i < increments; ++i) {
      pthread_mutex_lock(&p->m);
      p->value += 1;
      pthread_mutex_unlock(&p->m);
    }
  }, true);
  bool ok = p->value == 2 * increments;
  ::munmap(p, 4096);
  if (!ok) std::exit(1);
  return s;
}

// ------------------------------------------------------------------------ fills

void fill_half(int i, std::byte* base, std::size_t size, int value) {
  std::size_t half = size / 2;
  std::byte* start = base + (i == 0 ? 0 : half);
  std::memset(start, value, i == 0 ? half : size - half);
}

struct fill_times {
  double first, warm;
};

/// Two long-lived processes fill one half each of a fresh segment (first touch), then
/// the same processes fill it again (warm: pages already mapped in them, as they are
/// for threads). Each phase is timed from the release of both at a start line until
/// both report done.
fill_times mproc_fill(std::size_t size) {
  mproc::SharedMemory shm(mproc::create, size);
  mproc::Semaphore ready(0), done(0);
  mproc::Event go_first, go_warm;
  auto worker = [](int i, mproc::SharedMemory s, mproc::Semaphore ready, mproc::Semaphore done,
                   mproc::Event go_first, mproc::Event go_warm) {
    std::size_t half = s.size() / 2;
    ready.release();
    go_first.wait();
    // One kernel call maps this process's half instead of a fault per page.
    s.populate(i == 0 ? 0 : half, i == 0 ? half : s.size() - half);
    fill_half(i, s.buf().data(), s.size(), 1);
    done.release();
    go_warm.wait();
    fill_half(i, s.buf().data(), s.size(), 2);
    done.release();
  };
  std::vector<mproc::Process> ps;
  for (int i = 0; i < 2; ++i) ps.emplace_back(worker, i, shm, ready, done, go_first, go_warm);
  for (auto& p : ps) p.start();
  for (int i = 0; i < 2; ++i) ready.acquire();
  auto phase = [&](mproc::Event& go) {
    auto t = clk::now();
    go.set();
    for (int i = 0; i < 2; ++i) done.acquire();
    return secs_since(t);
  };
  fill_times t{};
  t.first = phase(go_first);
  t.warm = phase(go_warm);
  for (auto& p : ps) p.join();
  bool ok = shm.buf()[0] == std::byte{2} && shm.buf()[size - 1] == std::byte{2};
  shm.unlink();
  if (!ok) std::exit(1);
  return t;
}

fill_times thread_fill(std::size_t size) {
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  auto* base = static_cast<std::byte*>(p);
  auto run = [&](int value) {
    auto t = clk::now();
    std::thread a([&] { fill_half(0, base, size, value); });
    std::thread b([&] { fill_half(1, base, size, value); });
    a.join();
    b.join();
    return secs_since(t);
  };
  fill_times t{};
  t.first = run(1);
  t.warm = run(2);
  ::munmap(p, size);
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  int increments = 200'000;
  std::size_t mib = 256;
  auto o = bench::parse_args(argc, argv, 5, 3,
                             "[--rounds N] [--quick] [--json] [--no-python] [--increments N] [--mib N]",
                             [&](std::string_view a, auto& next) {
                               if (a == "--increments") increments = std::max(1, std::atoi(next()));
                               else if (a == "--mib") mib = std::max(2ul, std::strtoul(next(), nullptr, 10));
                               else return false;
                               return true;
                             });
  const std::size_t size = mib << 20;

  bench::samples t;
  for (int r = 0; r < o.rounds; ++r) {
    bench::note_round("bench_shared_state", r, o.rounds);
    t.add("value_mproc", mproc_value(increments));
    t.add("value_atomic", raw_atomic(increments));
    t.add("value_pthread", raw_pthread_mutex(increments));
    fill_times m = mproc_fill(size);
    t.add("fill_first_mproc", m.first);
    t.add("fill_warm_mproc", m.warm);
    fill_times th = thread_fill(size);
    t.add("fill_first_threads", th.first);
    t.add("fill_warm_threads", th.warm);
    if (o.python) {
      auto py = bench::run_python("bench_shared_state.py", std::to_string(increments) + " " + std::to_string(size));
      t.add("value_python", bench::get(py, "value_s"));
      t.add("fill_first_python", bench::get(py, "fill_first_s"));
      t.add("fill_warm_python", bench::get(py, "fill_warm_s"));
    }
  }
  auto ms = [&](const char* k) { return t.med(k) * 1e3; };
  bench::report rep("shared_state");
  double m = ms("value_mproc"), py = ms("value_python");
  rep.add({.metric = "Value<int> + its lock, 2 processes incrementing, ms",
           .params = "2 x " + std::to_string(increments) + " locked increments",
           .unit = "ms",
           .dir = bench::better::lower,
           .mproc = m,
           .python = py,
           .raw = ms("value_pthread"),
           .raw_label = "plain pthread mutex, not robust",
           .target = ">= 20x Python",
           .met = bench::judged(py >= 20 * m, {m, py}),
           .issue = "4"});
  for (const char* phase : {"first", "warm"}) {
    const std::string p = phase;
    m = ms(("fill_" + p + "_mproc").c_str()), py = ms(("fill_" + p + "_python").c_str());
    const double th = ms(("fill_" + p + "_threads").c_str());
    rep.add({.metric = "SharedMemory fill by 2 processes, " + std::string(p == "first" ? "first touch" : "warm") +
                       ", ms",
             .params = std::to_string(mib) + " MiB, one half each",
             .unit = "ms",
             .dir = bench::better::lower,
             .mproc = m,
             .python = py,
             .raw = th,
             .raw_label = "2 threads, private memory",
             .target = ">= Python and >= 0.8x two threads",
             .met = bench::judged(m <= py && th / m >= 0.8, {m, py, th}),
             .issue = "4"});
  }
  rep.note("Raw atomic fetch_add (no lock), 2 x " + std::to_string(increments) + ": " + bench::fmt(ms("value_atomic")) +
           " ms; mproc warm fill bandwidth " + bench::fmt(double(size) / (ms("fill_warm_mproc") * 1e-3) / 1e9) +
           " GB/s");
  rep.print(o, o.rounds);
  return 0;
}
