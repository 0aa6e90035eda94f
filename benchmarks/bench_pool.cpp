// Pool benchmarks, side by side in one run: mproc vs the raw limit (bare fork /
// futex / socketpair / std::thread doing the same) vs Python's multiprocessing
// (benchmarks/python/bench_pool.py, run between rounds) vs the peers a user would
// pick instead: the Python executors (concurrent.futures, loky, pebble:
// benchmarks/python/bench_executors.py) and, for CPU work, TBB's parallel_for on
// threads. Rounds are interleaved and the medians reported, so a noisy machine skews
// every column alike.
//
//   bench_pool [--rounds N] [--quick] [--json] [--no-python]
#include <mproc/mproc.hpp>
#include <mproc/serialization/boost.hpp>  // types with a Boost serialize()

#include "bench_common.hpp"

#include <boost/multiprecision/cpp_int.hpp>
#include <boost/multiprecision/cpp_int/serialize.hpp>

#include <atomic>
#include <cstring>
#include <fstream>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#ifdef MPROC_BENCH_HAVE_TBB
#include <oneapi/tbb/blocked_range.h>
#include <oneapi/tbb/global_control.h>
#include <oneapi/tbb/parallel_for.h>
#endif

#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

using bench::clk;
using bench::secs_since;
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

/// The factorials on std::threads pulling one item at a time from a shared counter,
/// results written in place: CPU work with nothing to transfer.
double threads_factorials(const std::vector<int>& in, int nthreads, std::vector<cpp_int>& out) {
  out.assign(in.size(), cpp_int{});
  std::atomic<std::size_t> next{0};
  auto t = clk::now();
  std::vector<std::thread> ts;
  for (int i = 0; i < nthreads; ++i)
    ts.emplace_back([&] {
      for (std::size_t k; (k = next++) < in.size();) out[k] = factorial(in[k]);
    });
  for (auto& th : ts) th.join();
  return secs_since(t);
}

#ifdef MPROC_BENCH_HAVE_TBB
/// TBB's parallel_for with its default (auto) partitioner over 2 threads.
double tbb_primes(const std::vector<std::pair<long, long>>& chunks) {
  std::atomic<long> total{0};
  auto t = clk::now();
  tbb::parallel_for(tbb::blocked_range<std::size_t>(0, chunks.size()), [&](const tbb::blocked_range<std::size_t>& r) {
    long c = 0;
    for (std::size_t k = r.begin(); k != r.end(); ++k) c += count_primes(chunks[k]);
    total += c;
  });
  const double s = secs_since(t);
  sink = total.load();
  return s;
}
double tbb_factorials(const std::vector<int>& in, std::vector<cpp_int>& out) {
  out.assign(in.size(), cpp_int{});
  auto t = clk::now();
  tbb::parallel_for(tbb::blocked_range<std::size_t>(0, in.size()), [&](const tbb::blocked_range<std::size_t>& r) {
    for (std::size_t k = r.begin(); k != r.end(); ++k) out[k] = factorial(in[k]);
  });
  return secs_since(t);
}
#endif

/// Bare fork + waitpid of two children (what Pool(2) creation costs at the least).
void raw_fork2() {
  pid_t a = ::fork();
  if (a == 0) ::_exit(0);
  pid_t b = ::fork();
  if (b == 0) ::_exit(0);
  ::waitpid(a, nullptr, 0);
  ::waitpid(b, nullptr, 0);
}

// Pool start-ups take one to a few milliseconds, and on a shared machine one of them
// can take several times that: each round keeps the median of a few.
constexpr int create_samples = 5;

double median_ms_of(int n, const std::function<void()>& once) {
  return bench::median_seconds(n, once) * 1e3;
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

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  auto o = bench::parse_args(argc, argv, 5, 3, "[--rounds N] [--quick] [--json] [--no-python]");
  const int rounds = o.rounds;
  bench::samples m;  // metric -> samples
  // An idle worker, as a program that starts a pool early sees it: forked before the
  // benchmark's own large allocations, which a fork would otherwise map into it.
  for (int r = 0; r < rounds; ++r) {
    mproc::Pool pool(2);
    const pid_t w = pool.apply(worker_pid, 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    m.add("idle_rss", rss_kib(w, "VmRSS:") / 1024.0);
    m.add("idle_pss", rss_kib(w, "Pss:") / 1024.0);
  }
  const std::vector<int> ints(100'000);
  const auto chunks = prime_chunks(2'000'000, 64);
  std::vector<int> fact_in(2000);
  for (int i = 0; i < 2000; ++i) fact_in[i] = i + 1;

#ifdef MPROC_BENCH_HAVE_TBB
  tbb::global_control tbb_threads(tbb::global_control::max_allowed_parallelism, 2);
#endif
  const cpp_int fact_2000 = factorial(2000);
  // The Python peers: names as the twin knows them, and as the table shows them.
  const std::vector<std::pair<std::string, std::string>> executors = {
      {"mp_pool", "multiprocessing.Pool"},
      {"ppe", "concurrent.futures.ProcessPoolExecutor"},
      {"loky", "loky"},
      {"pebble", "pebble.ProcessPool"}};
  std::string executor_names;
  for (const auto& e : executors) executor_names += (executor_names.empty() ? "" : ",") + e.first;

  auto cpu_ceilings_primes = [&] {
    m.add("threads_primes", threads_primes(chunks, 2));
#ifdef MPROC_BENCH_HAVE_TBB
    m.add("tbb_primes", tbb_primes(chunks));
#endif
    auto t = clk::now();
    long c = 0;
    for (auto& b : chunks) c += count_primes(b);
    sink = c;  // keeps the work from being optimized away
    m.add("serial_primes", secs_since(t));
  };
  auto cpu_ceilings_factorials = [&] {
    std::vector<cpp_int> out;
    m.add("threads_factorials", threads_factorials(fact_in, 2, out));
    if (out.back() != fact_2000) std::fprintf(stderr, "factorial mismatch (threads)!\n");
#ifdef MPROC_BENCH_HAVE_TBB
    m.add("tbb_factorials", tbb_factorials(fact_in, out));
    if (out.back() != fact_2000) std::fprintf(stderr, "factorial mismatch (TBB)!\n");
#endif
    auto t = clk::now();
    std::size_t bits = 0;
    for (int n : fact_in) bits += msb(factorial(n));
    sink = long(bits);
    m.add("serial_factorials", secs_since(t));
  };

  for (int r = 0; r < rounds; ++r) {
    bench::note_round("bench_pool", r, rounds);
    {
      mproc::Pool pool(2);
      (void)pool.map(identity, std::vector<int>(100));  // warm
      auto t = clk::now();
      auto v = pool.map(identity, ints, 1);
      m.add("map_cs1", ints.size() / secs_since(t));
      t = clk::now();
      v = pool.map(identity, ints, 1000);
      m.add("map_cs1000", ints.size() / secs_since(t));
      t = clk::now();
      v = pool.map(identity, ints);
      m.add("map_default", ints.size() / secs_since(t));
      t = clk::now();
      for (int i = 0; i < 1000; ++i) (void)pool.apply_async(identity, i).get();
      m.add("apply_rt", secs_since(t) / 1000 * 1e6);
      // The CPU work, each right beside its ceilings (threads, TBB, serial): the
      // machine's speed drifts within a round, and a ratio of runs taken apart in
      // time measures the drift as much as the code.
      t = clk::now();
      auto counts = pool.map(count_primes, chunks, 1);
      m.add("primes", secs_since(t));
      sink = std::accumulate(counts.begin(), counts.end(), 0L);
      cpu_ceilings_primes();
      t = clk::now();
      auto facts = pool.map(factorial, fact_in);
      m.add("factorials", secs_since(t));
      if (facts.back() != fact_2000) std::fprintf(stderr, "factorial mismatch!\n");
      cpu_ceilings_factorials();
      // Python's fixed chunks (2000 / (4 x 2) = 250 items): the last holds a third of
      // the work and runs on one worker while the other idles.
      t = clk::now();
      facts = pool.map(factorial, fact_in, 250);
      m.add("factorials_fixed", secs_since(t));
      // idle worker memory
      auto pids = pool.map(worker_pid, std::vector<int>(8), 1);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      m.add("worker_rss", rss_kib(pids[0], "VmRSS:") / 1024.0);
    }
    m.add("create", median_ms_of(create_samples, [] {
      mproc::Pool p(2);
      p.close();
      p.join();
    }));
    // As the Python executors are measured: start, one task, shut down.
    m.add("create_task", median_ms_of(create_samples, [] {
      mproc::Pool p(2);
      sink = p.apply(identity, 1);
      p.close();
      p.join();
    }));
    for (auto method : {mproc::start_method::spawn, mproc::start_method::forkserver})
      m.add(std::string("create_") + mproc::to_string(method), median_ms_of(create_samples, [method] {
              mproc::Pool p({.processes = 2, .method = method});
              p.close();
              p.join();
            }));
    m.add("raw_socketpair_rt", raw_socketpair_rt(1000));
    m.add("raw_futex_rt", raw_futex_rt(1000));
    m.add("raw_fork2", median_ms_of(create_samples, raw_fork2));
    if (o.python) {
      auto py = bench::run_python("bench_pool.py",
                                  "map_cs1,map_default,apply_rt,factorials,create,create_spawn,create_forkserver");
      for (const char* k : {"map_cs1", "map_default", "apply_rt", "factorials", "create", "create_spawn",
                            "create_forkserver"})
        m.add(std::string("py_") + k, bench::get(py, k));
      // Python's primes take about a minute a round (serial and four pools): three
      // rounds give their median.
      const bool py_primes = r < 3;
      auto ex = bench::run_python("bench_executors.py",
                                  executor_names + " map_cs1,map_cs1000,apply_rt,create" +
                                      (py_primes ? ",primes,serial_primes" : "") + (o.quick ? " --quick" : ""));
      const double py_serial = bench::get(ex, "serial_primes");
      for (const auto& [e, label] : executors) {
        if (bench::get(ex, e + "_missing") == 1)
          std::fprintf(stderr, "python peer missing: %s (bash scripts/setup.sh installs it)\n", label.c_str());
        for (const char* k : {"map_cs1", "map_cs1000", "apply_rt", "create"})
          m.add(e + "_" + k, bench::get(ex, e + "_" + k));
        if (!py_primes) continue;
        m.add(e + "_primes_speedup", py_serial / bench::get(ex, e + "_primes"));
        if (bench::get(ex, e + "_prime_count") != bench::get(ex, "serial_prime_count"))
          std::fprintf(stderr, "%s: prime count differs from the serial one\n", e.c_str());
      }
    }
  }

  auto med = [&](const std::string& k) { return m.med(k); };
  // The Python executors' medians of one metric, as peers of a row.
  auto py_peers = [&](const std::string& metric) {
    std::vector<std::pair<std::string, double>> p;
    for (const auto& [e, label] : executors) p.emplace_back(label, med(e + "_" + metric));
    return p;
  };
  const double raw_rt = std::min(med("raw_futex_rt"), med("raw_socketpair_rt"));
  bench::report rep("pool");
  using bench::better;
  double v = med("map_cs1"), py = med("py_map_cs1");
  rep.add({.metric = "Pool.map(identity), chunksize=1, tasks/s",
           .params = "Pool(2), 100,000 ints (peers but multiprocessing.Pool: 20,000)",
           .unit = "tasks/s",
           .mproc = v,
           .python = py,
           .target = ">= 1,000,000/s and >= 50x Python",
           .met = bench::judged(v >= 1e6 && v >= 50 * py, {v, py}),
           .issue = "3",
           .peers = py_peers("map_cs1")});
  v = med("map_cs1000");
  {
    auto peers = py_peers("map_cs1000");
    auto bp = bench::best_peer({.peers = peers});
    rep.add({.metric = "Pool.map(identity), chunksize=1000, tasks/s",
             .params = "Pool(2), 100,000 ints",
             .unit = "tasks/s",
             .mproc = v,
             .python = med("mp_pool_map_cs1000"),
             .target = "ahead of the best peer",
             .met = bench::judged(bp && v > bp->second, {v}),
             .issue = "18",
             .peers = peers});
  }
  v = med("map_default"), py = med("py_map_default");
  rep.add({.metric = "Pool.map(identity), default chunksize, tasks/s",
           .params = "Pool(2), 100,000 ints",
           .unit = "tasks/s",
           .mproc = v,
           .python = py,
           .target = ">= 10x Python",
           .met = bench::judged(v >= 10 * py, {v, py}),
           .issue = "3"});
  v = med("apply_rt"), py = med("py_apply_rt");
  rep.add({.metric = "apply_async().get() round trip, us",
           .params = "1,000 sequential calls",
           .unit = "us",
           .dir = better::lower,
           .mproc = v,
           .python = py,
           .raw = raw_rt,
           .raw_label = "blocking futex/socketpair round trip",
           .target = "<= 1.2x raw, >= 4x faster than Python",
           .met = bench::judged(v <= 1.2 * raw_rt && py >= 4 * v, {v, raw_rt, py}),
           .issue = "3",
           .peers = py_peers("apply_rt")});
  const double ser = med("serial_primes"), thr = med("threads_primes");
  v = med("primes");
  {
    // Python executors: their speedup over serial Python (the same trial division);
    // TBB: over serial C++.
    auto peers = py_peers("primes_speedup");
    peers.emplace_back("TBB parallel_for (threads)", ser / med("tbb_primes"));
    rep.add({.metric = "primes by trial division, speedup over serial",
             .params = std::string("below 2,000,000, 64 chunks, Pool(2); Python executors: over serial Python") +
                       (o.quick ? " (below 200,000 with --quick)" : ""),
             .unit = "x",
             .mproc = ser / v,
             .raw = ser / thr,
             .raw_label = "2 std::threads",
             .target = ">= 1.9x serial, >= 0.97x std::thread",
             .met = bench::judged(ser / v >= 1.9 && thr / v >= 0.97, {ser, v, thr}),
             .issue = "3",
             .peers = peers});
  }
  v = med("factorials"), py = med("py_factorials");
  {
    const double fser = med("serial_factorials"), fthr = med("threads_factorials");
    rep.add({.metric = "factorials as cpp_int, speedup over serial C++",
             .params = "1..2000, results returned, Pool(2), default chunksize",
             .unit = "x",
             .mproc = fser / v,
             .raw = fser / fthr,
             .raw_label = "2 std::threads, results in place",
             .target = ">= 0.97x std::thread",
             .met = bench::judged(fthr / v >= 0.97, {fser, v, fthr}),
             .issue = "18",
             .peers = {{"TBB parallel_for (threads)", fser / med("tbb_factorials")}}});
    rep.add({.metric = "factorials with Python's fixed chunks, speedup over serial C++",
             .params = "1..2000, chunksize 250 = 2000 / (4 x 2): the last chunk is a third of the work",
             .unit = "x",
             .mproc = fser / med("factorials_fixed"),
             .raw = fser / fthr,
             .raw_label = "2 std::threads, results in place",
             .target = "report (why the default chunks by cost)",
             .met = std::nullopt,
             .issue = "18"});
  }
  rep.add({.metric = "factorials, seconds (Python: its big ints)",
           .params = "1..2000, results returned, Pool(2)",
           .unit = "s",
           .dir = better::lower,
           .mproc = v,
           .python = py,
           .target = "report",
           .met = std::nullopt,
           .issue = "3"});
  v = med("create");
  rep.add({.metric = "Pool(2) create+close+join, ms",
           .params = "fork",
           .unit = "ms",
           .dir = better::lower,
           .mproc = v,
           .python = med("py_create"),
           .raw = med("raw_fork2"),
           .raw_label = "2 x fork+waitpid",
           .target = "<= 1 ms",
           .met = bench::judged(v <= 1.0, {v}),
           .issue = "3"});
  v = med("create_task");
  {
    auto peers = py_peers("create");
    auto bp = bench::best_peer({.dir = better::lower, .peers = peers});
    rep.add({.metric = "Pool(2) start, one task, shut down, ms",
             .params = "fork (loky: its fresh interpreters)",
             .unit = "ms",
             .dir = better::lower,
             .mproc = v,
             .python = med("mp_pool_create"),
             .target = "ahead of the best peer",
             .met = bench::judged(bp && v < bp->second, {v}),
             .issue = "18",
             .peers = peers});
  }
  v = med("create_spawn");
  rep.add({.metric = "Pool(2) create+close+join with spawn, ms",
           .params = "spawn",
           .unit = "ms",
           .dir = better::lower,
           .mproc = v,
           .python = med("py_create_spawn"),
           .target = "<= 5 ms",
           .met = bench::judged(v <= 5.0, {v}),
           .issue = "5"});
  v = med("create_forkserver");
  rep.add({.metric = "Pool(2) create+close+join with forkserver, ms",
           .params = "forkserver (already running)",
           .unit = "ms",
           .dir = better::lower,
           .mproc = v,
           .python = med("py_create_forkserver"),
           .target = "report",
           .met = std::nullopt,
           .issue = "5"});
  v = med("idle_rss");
  rep.add({.metric = "idle worker resident memory (RSS), MiB",
           .params = "worker of a pool started early (PSS " + bench::fmt(med("idle_pss")) + " MiB)",
           .unit = "MiB",
           .dir = better::lower,
           .mproc = v,
           .target = "<= 3 MiB",
           .met = bench::judged(v <= 3.0, {v}),
           .issue = "3"});
  rep.add({.metric = "worker RSS after the runs above, MiB",
           .params = "includes the parent's heap it shares",
           .unit = "MiB",
           .dir = better::lower,
           .mproc = med("worker_rss"),
           .target = "report",
           .met = std::nullopt,
           .issue = "3"});
  rep.note("raw round trips: futex " + bench::fmt(med("raw_futex_rt")) + " us, socketpair " +
           bench::fmt(med("raw_socketpair_rt")) +
           " us. The apply round trip can beat the raw blocking one: a waiting caller drives the pool "
           "itself and yields instead of sleeping in the kernel.");
  rep.print(o, rounds);
}
