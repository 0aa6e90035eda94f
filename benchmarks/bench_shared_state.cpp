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
//   bench_shared_state [--rounds N] [--increments N] [--mib N] [--no-python]
#include <mproc/process.hpp>
#include <mproc/shared_memory.hpp>
#include <mproc/sharedctypes.hpp>
#include <mproc/synchronize.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <pthread.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef MPROC_BENCHMARK_PYTHON_DIR
#define MPROC_BENCHMARK_PYTHON_DIR "benchmarks/python"
#endif
#ifndef MPROC_BENCHMARK_PYTHON
#define MPROC_BENCHMARK_PYTHON "python3"
#endif

using clk = std::chrono::steady_clock;

namespace {

double secs_since(clk::time_point t) { return std::chrono::duration<double>(clk::now() - t).count(); }

double median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

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

// ----------------------------------------------------------------------- python

std::map<std::string, double> python_round(int increments, std::size_t size) {
  std::string cmd = std::string(MPROC_BENCHMARK_PYTHON) + " " + MPROC_BENCHMARK_PYTHON_DIR +
                    "/bench_shared_state.py " + std::to_string(increments) + " " + std::to_string(size);
  std::fflush(nullptr);
  FILE* f = ::popen(cmd.c_str(), "r");
  std::map<std::string, double> out;
  if (!f) return out;
  char line[4096];
  std::string text;
  while (std::fgets(line, sizeof line, f)) text += line;
  if (::pclose(f) != 0) return out;
  // A flat JSON object of numbers: "key": value pairs.
  std::size_t pos = 0;
  while ((pos = text.find('"', pos)) != std::string::npos) {
    std::size_t end = text.find('"', pos + 1);
    if (end == std::string::npos) break;
    std::string key = text.substr(pos + 1, end - pos - 1);
    std::size_t colon = text.find(':', end);
    if (colon == std::string::npos) break;
    out[key] = std::strtod(text.c_str() + colon + 1, nullptr);
    pos = colon;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  int rounds = 5, increments = 200'000;
  std::size_t mib = 256;
  bool python = true;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--rounds" && i + 1 < argc) rounds = std::atoi(argv[++i]);
    else if (a == "--increments" && i + 1 < argc) increments = std::atoi(argv[++i]);
    else if (a == "--mib" && i + 1 < argc) mib = std::strtoul(argv[++i], nullptr, 10);
    else if (a == "--no-python") python = false;
    else {
      std::fprintf(stderr, "usage: %s [--rounds N] [--increments N] [--mib N] [--no-python]\n", argv[0]);
      return 2;
    }
  }
  const std::size_t size = mib << 20;

  std::map<std::string, std::vector<double>> t;
  for (int r = 0; r < rounds; ++r) {
    t["value_mproc"].push_back(mproc_value(increments));
    t["value_atomic"].push_back(raw_atomic(increments));
    t["value_pthread"].push_back(raw_pthread_mutex(increments));
    fill_times m = mproc_fill(size);
    t["fill_first_mproc"].push_back(m.first);
    t["fill_warm_mproc"].push_back(m.warm);
    fill_times th = thread_fill(size);
    t["fill_first_threads"].push_back(th.first);
    t["fill_warm_threads"].push_back(th.warm);
    if (python) {
      auto py = python_round(increments, size);
      if (py.empty()) {
        std::fprintf(stderr, "python twin failed; continuing without it\n");
        python = false;
      } else {
        t["value_python"].push_back(py["value_s"]);
        t["fill_first_python"].push_back(py["fill_first_s"]);
        t["fill_warm_python"].push_back(py["fill_warm_s"]);
      }
    }
  }
  auto ms = [&](const char* k) { return median(t[k]) * 1e3; };

  std::printf("bench_shared_state: medians of %d rounds (2 processes each)\n\n", rounds);
  std::printf("Counter, 2 x %d locked increments            time (ms)   vs mproc\n", increments);
  double vm = ms("value_mproc");
  std::printf("  mproc::Value<int> + its RLock (robust)     %9.2f   1.00x\n", vm);
  std::printf("  raw pthread mutex (not robust)             %9.2f   %.2fx faster\n", ms("value_pthread"),
              vm / ms("value_pthread"));
  std::printf("  raw atomic fetch_add (no lock)             %9.2f   %.2fx faster\n", ms("value_atomic"),
              vm / ms("value_atomic"));
  if (!t["value_python"].empty())
    std::printf("  Python multiprocessing.Value               %9.2f   mproc %.1fx faster\n", ms("value_python"),
                ms("value_python") / vm);

  std::printf("\nFill %zu MiB, one half per process          first touch (ms)   warm (ms)\n", mib);
  double ff = ms("fill_first_mproc"), fw = ms("fill_warm_mproc");
  std::printf("  mproc SharedMemory, 2 processes            %9.2f         %9.2f\n", ff, fw);
  std::printf("  2 threads, private memory                  %9.2f         %9.2f\n", ms("fill_first_threads"),
              ms("fill_warm_threads"));
  if (!t["fill_first_python"].empty())
    std::printf("  Python shared_memory, 2 processes          %9.2f         %9.2f\n", ms("fill_first_python"),
                ms("fill_warm_python"));
  std::printf("\n  mproc vs threads (throughput ratio)        %9.2fx        %9.2fx\n",
              ms("fill_first_threads") / ff, ms("fill_warm_threads") / fw);
  if (!t["fill_first_python"].empty())
    std::printf("  mproc vs Python (throughput ratio)         %9.2fx        %9.2fx\n",
                ms("fill_first_python") / ff, ms("fill_warm_python") / fw);
  std::printf("  mproc warm fill bandwidth                  %9.2f GB/s\n", double(size) / (fw * 1e-3) / 1e9);
  return 0;
}
