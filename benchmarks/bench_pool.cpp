// Pool benchmarks, side by side in one run: mproc vs the raw limit (bare fork /
// futex / socketpair / std::thread doing the same) vs Python's multiprocessing
// (benchmarks/python/bench_pool.py, run between rounds). Rounds are interleaved and
// the medians reported, so a noisy machine skews every column alike.
//
//   bench_pool [--rounds N] [--quick] [--no-python]
#include <mproc/mproc.hpp>

#include <boost/multiprecision/cpp_int.hpp>
#include <boost/multiprecision/cpp_int/serialize.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <numeric>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

// The build defines where the Python twin lives and which interpreter runs it.
#ifndef MPROC_BENCHMARK_PYTHON_DIR
#define MPROC_BENCHMARK_PYTHON_DIR "benchmarks/python"
#endif
#ifndef MPROC_BENCHMARK_PYTHON
#define MPROC_BENCHMARK_PYTHON "python3"
#endif

using clk = std::chrono::steady_clock;
using boost::multiprecision::cpp_int;
using boost::multiprecision::msb;

namespace {

volatile long sink = 0;

int identity(int x) { return x; }

bool is_prime(long n) {
  if (n < 2) return false;
  if (n % 2 == 0) return n == 2;
  for (long i = 3; i * i <= n; i += 2)
    if (n % i == 0) return false;
  return true;
}
long count_primes(std::pair<long, long> b) {
  long c = 0;
  for (long n = b.first; n < b.second; ++n) c += is_prime(n);
  return c;
}
std::vector<std::pair<long, long>> prime_chunks(long limit, int chunks) {
  std::vector<std::pair<long, long>> v;
  long step = limit / chunks;
  for (int i = 0; i < chunks; ++i) v.emplace_back(i * step, i == chunks - 1 ? limit : (i + 1) * step);
  return v;
}

cpp_int factorial(int n) {
  cpp_int r = 1;
  for (int i = 2; i <= n; ++i) r *= i;
  return r;
}

double secs_since(clk::time_point t) { return std::chrono::duration<double>(clk::now() - t).count(); }

double median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

// ---------------------------------------------------------------- raw baselines

/// Blocking round trip between two processes over a socketpair, microseconds.
double raw_socketpair_rt(int iters) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) return NAN;
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(sv[0]);
    int x;
    while (::read(sv[1], &x, sizeof x) == sizeof x) {
      if (::write(sv[1], &x, sizeof x) != sizeof x) break;
    }
    ::_exit(0);
  }
  ::close(sv[1]);
  int x = 0;
  auto t = clk::now();
  for (int i = 0; i < iters; ++i) {
    if (::write(sv[0], &i, sizeof i) != sizeof i || ::read(sv[0], &x, sizeof x) != sizeof x) break;
  }
  double us = secs_since(t) / iters * 1e6;
  ::close(sv[0]);
  ::waitpid(pid, nullptr, 0);
  return us;
}

/// Blocking round trip between two processes through futexes in shared memory.
double raw_futex_rt(int iters) {
  auto* w = static_cast<std::atomic<std::uint32_t>*>(
      ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  auto* ping = &w[0];
  auto* pong = &w[16];
  ping->store(0);
  pong->store(0);
  auto wait = [](std::atomic<std::uint32_t>* a, std::uint32_t old) {
    while (a->load(std::memory_order_acquire) == old)
      ::syscall(SYS_futex, a, FUTEX_WAIT, old, nullptr, nullptr, 0);
  };
  auto wake = [](std::atomic<std::uint32_t>* a) {
    a->fetch_add(1, std::memory_order_release);
    ::syscall(SYS_futex, a, FUTEX_WAKE, 1, nullptr, nullptr, 0);
  };
  pid_t pid = ::fork();
  if (pid == 0) {
    for (int i = 0; i < iters; ++i) {
      wait(ping, std::uint32_t(i));
      wake(pong);
    }
    ::_exit(0);
  }
  auto t = clk::now();
  for (int i = 0; i < iters; ++i) {
    wake(ping);
    wait(pong, std::uint32_t(i));
  }
  double us = secs_since(t) / iters * 1e6;
  ::waitpid(pid, nullptr, 0);
  ::munmap(w, 4096);
  return us;
}

/// The same prime count on std::threads pulling chunks from a shared counter.
double threads_primes(const std::vector<std::pair<long, long>>& chunks, int nthreads) {
  std::atomic<std::size_t> next{0};
  std::atomic<long> total{0};
  auto t = clk::now();
  struct guard {
    std::atomic<long>& t;
    ~guard() { sink = t.load(); }
  } g{total};
  std::vector<std::thread> ts;
  for (int i = 0; i < nthreads; ++i)
    ts.emplace_back([&] {
      for (std::size_t k; (k = next++) < chunks.size();) total += count_primes(chunks[k]);
    });
  for (auto& th : ts) th.join();
  return secs_since(t);
}

/// Bare fork + waitpid of two children, in milliseconds (what Pool(2) creation costs
/// at the least).
double raw_fork2_ms() {
  auto t = clk::now();
  pid_t a = ::fork();
  if (a == 0) ::_exit(0);
  pid_t b = ::fork();
  if (b == 0) ::_exit(0);
  ::waitpid(a, nullptr, 0);
  ::waitpid(b, nullptr, 0);
  return secs_since(t) * 1e3;
}

long rss_kib(pid_t pid, const char* field) {
  std::ifstream f(field[0] == 'P' ? "/proc/" + std::to_string(pid) + "/smaps_rollup"
                                  : "/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(field, 0) == 0) return std::atol(line.c_str() + std::strlen(field));
  return -1;
}

int worker_pid(int) { return static_cast<int>(::getpid()); }

std::map<std::string, double> run_python(const std::string& which) {
  std::map<std::string, double> out;
  std::string cmd = std::string(MPROC_BENCHMARK_PYTHON) + " " MPROC_BENCHMARK_PYTHON_DIR "/bench_pool.py " +
                    which + " 2>/dev/null";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return out;
  char buf[4096];
  std::string s;
  while (std::fgets(buf, sizeof buf, p)) s += buf;
  ::pclose(p);
  // tiny parser for {"k": v, ...}
  for (std::size_t i = 0; (i = s.find('"', i)) != std::string::npos;) {
    std::size_t j = s.find('"', i + 1);
    std::string key = s.substr(i + 1, j - i - 1);
    std::size_t c = s.find(':', j);
    out[key] = std::strtod(s.c_str() + c + 1, nullptr);
    i = s.find_first_of(",}", c);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  int rounds = 5;
  bool python = true, quick = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--rounds" && i + 1 < argc) rounds = std::atoi(argv[++i]);
    if (a == "--quick") quick = true;
    if (a == "--no-python") python = false;
  }
  if (quick) rounds = 3;
  std::map<std::string, std::vector<double>> m;  // metric -> samples
  // An idle worker, as a program that starts a pool early sees it: forked before the
  // benchmark's own large allocations, which a fork would otherwise map into it.
  for (int r = 0; r < rounds; ++r) {
    mproc::Pool pool(2);
    const pid_t w = pool.apply(worker_pid, 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    m["idle_rss"].push_back(rss_kib(w, "VmRSS:") / 1024.0);
    m["idle_pss"].push_back(rss_kib(w, "Pss:") / 1024.0);
  }
  const std::vector<int> ints(100'000);
  const auto chunks = prime_chunks(2'000'000, 64);
  std::vector<int> fact_in(2000);
  for (int i = 0; i < 2000; ++i) fact_in[i] = i + 1;

  for (int r = 0; r < rounds; ++r) {
    std::fprintf(stderr, "round %d/%d\n", r + 1, rounds);
    {
      mproc::Pool pool(2);
      (void)pool.map(identity, std::vector<int>(100));  // warm
      auto t = clk::now();
      auto v = pool.map(identity, ints, 1);
      m["map_cs1"].push_back(ints.size() / secs_since(t));
      t = clk::now();
      v = pool.map(identity, ints);
      m["map_default"].push_back(ints.size() / secs_since(t));
      t = clk::now();
      for (int i = 0; i < 1000; ++i) (void)pool.apply_async(identity, i).get();
      m["apply_rt"].push_back(secs_since(t) / 1000 * 1e6);
      t = clk::now();
      auto counts = pool.map(count_primes, chunks, 1);
      m["primes"].push_back(secs_since(t));
      sink = std::accumulate(counts.begin(), counts.end(), 0L);
      t = clk::now();
      auto facts = pool.map(factorial, fact_in);
      m["factorials"].push_back(secs_since(t));
      if (facts.back() != factorial(2000)) std::fprintf(stderr, "factorial mismatch!\n");
      // idle worker memory
      auto pids = pool.map(worker_pid, std::vector<int>(8), 1);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      m["worker_rss"].push_back(rss_kib(pids[0], "VmRSS:") / 1024.0);
    }
    {
      auto t = clk::now();
      mproc::Pool p(2);
      p.close();
      p.join();
      m["create"].push_back(secs_since(t) * 1e3);
    }
    for (auto method : {mproc::start_method::spawn, mproc::start_method::forkserver}) {
      auto t = clk::now();
      mproc::Pool p({.processes = 2, .method = method});
      p.close();
      p.join();
      m[std::string("create_") + mproc::to_string(method)].push_back(secs_since(t) * 1e3);
    }
    m["raw_socketpair_rt"].push_back(raw_socketpair_rt(1000));
    m["raw_futex_rt"].push_back(raw_futex_rt(1000));
    m["threads_primes"].push_back(threads_primes(chunks, 2));
    {
      auto t = clk::now();
      long c = 0;
      for (auto& b : chunks) c += count_primes(b);
      sink = c;  // keeps the work from being optimized away
      m["serial_primes"].push_back(secs_since(t));
      t = clk::now();
      std::size_t bits = 0;
      for (int n : fact_in) bits += msb(factorial(n));
      sink = long(bits);
      m["serial_factorials"].push_back(secs_since(t));
    }
    m["raw_fork2"].push_back(raw_fork2_ms());
    if (python) {
      for (auto& [k, v] : run_python("map_cs1,map_default,apply_rt,factorials,create"))
        m["py_" + k].push_back(v);
    }
  }

  auto med = [&](const std::string& k) { return median(m[k]); };
  const double raw_rt = std::min(med("raw_futex_rt"), med("raw_socketpair_rt"));
  std::printf("\n| metric | mproc | raw limit | Python | mproc/Python | mproc/limit | target | met |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  auto row = [](const char* name, double v, double lim, double py, double vs_py, double vs_lim,
                const char* target, bool met) {
    std::printf("| %s | %.4g | %.4g | %.4g | %.3gx | %.3gx | %s | %s |\n", name, v, lim, py, vs_py,
                vs_lim, target, met ? "yes" : "no");
  };
  double v = med("map_cs1"), py = med("py_map_cs1");
  row("map(identity, 100k ints, chunksize=1), tasks/s", v, NAN, py, v / py, NAN,
      ">= 1,000,000/s and >= 50x Python", v >= 1e6 && v / py >= 50);
  v = med("map_default"), py = med("py_map_default");
  row("map(identity, 100k ints, default chunksize), tasks/s", v, NAN, py, v / py, NAN,
      ">= 10x Python", v / py >= 10);
  v = med("apply_rt"), py = med("py_apply_rt");
  row("apply_async().get() round trip, us", v, raw_rt, py, py / v, v / raw_rt,
      "<= 1.2x raw, >= 4x faster than Python", v <= 1.2 * raw_rt && py / v >= 4);
  v = med("primes");
  double ser = med("serial_primes"), thr = med("threads_primes");
  row("primes < 2M, 64 chunks, Pool(2) speedup over serial", ser / v, ser / thr, NAN, NAN,
      (ser / v) / (ser / thr), ">= 1.9x serial, >= 0.95x std::thread", ser / v >= 1.9 && thr / v >= 0.95);
  v = med("factorials"), py = med("py_factorials");
  ser = med("serial_factorials");
  row("factorials 1..2000 (cpp_int), Pool(2) speedup over serial", ser / v, NAN, NAN, NAN, NAN,
      "report", true);
  row("factorials 1..2000, seconds (Python: big ints)", v, NAN, py, py / v, NAN, "report", true);
  v = med("create");
  row("Pool(2) create+close+join, ms", v, med("raw_fork2"), med("py_create"), med("py_create") / v,
      v / med("raw_fork2"), "<= 1 ms", v <= 1.0);
  v = med("create_spawn");
  row("Pool(2) create+close+join with spawn, ms", v, NAN, NAN, NAN, NAN, "<= 5 ms", v <= 5.0);
  v = med("create_forkserver");
  row("Pool(2) create+close+join with forkserver, ms", v, NAN, NAN, NAN, NAN, "report", true);
  v = med("idle_rss");
  row("idle worker resident memory, MiB (RSS; PSS in limit column)", v, med("idle_pss"), NAN, NAN,
      NAN, "<= 3 MiB", v <= 3.0);
  row("worker RSS after the runs above, MiB (includes the parent's heap it shares)",
      med("worker_rss"), NAN, NAN, NAN, NAN, "report", true);
  std::printf("\nraw round trips: futex %.2f us, socketpair %.2f us; %d rounds, medians\n",
              med("raw_futex_rt"), med("raw_socketpair_rt"), rounds);
}
