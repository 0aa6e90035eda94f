// The headline demo (what `bash scripts/demo.sh` runs): the seeds' CPU-bound workloads
//   - the sum of the primes below 10,000,000 (a segmented sieve, in 40 chunks)
//   - the factorials of 1..2000 as boost::multiprecision::cpp_int, returned to the parent
// done serially, with std::threads in one process (the ceiling for CPU work: nothing
// to transfer), with mproc::Pool under each start method (fork, spawn, forkserver),
// and with Python (serially, with multiprocessing.Pool and with the fastest of the
// other Python executors, ProcessPoolExecutor, loky and pebble: benchmarks/python/
// headline.py, the same algorithms on Python ints). mproc's progress bar shows each
// map; then a table of times and speedups. Every variant's results are checked
// against the serial ones: any difference is an error (exit status 1).
//
//   headline [--rounds N] [--processes N] [--no-python]
#include <mproc/pool.hpp>
#include <mproc/serialization/boost.hpp>  // types with a Boost serialize()

#include "bench_common.hpp"

#include <boost/multiprecision/cpp_int.hpp>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

using bench::clk;
using bench::secs_since;
using boost::multiprecision::cpp_int;

namespace {

constexpr std::uint64_t kLimit = 10'000'000;
constexpr int kChunks = 40;
constexpr int kFactorials = 2000;
// Factorials are compared with Python's through this checksum: the sum of n! mod P.
constexpr std::uint64_t kP = 1'000'000'007;

/// Sum of the primes in [lo, hi): a segmented sieve, crossing off multiples of every
/// prime up to sqrt(hi) inside the segment only (as examples/sum_primes.cpp).
std::uint64_t sum_primes_in(std::pair<std::uint64_t, std::uint64_t> range) {
  auto [lo, hi] = range;
  if (hi <= 2 || lo >= hi) return 0;
  lo = std::max<std::uint64_t>(lo, 2);
  std::uint64_t root = 1;
  while ((root + 1) * (root + 1) < hi) ++root;
  std::vector<char> small(root + 1, 1);
  std::vector<char> seg(hi - lo, 1);
  for (std::uint64_t p = 2; p <= root; ++p) {
    if (!small[p]) continue;
    for (std::uint64_t m = p * p; m <= root; m += p) small[m] = 0;
    const std::uint64_t first = std::max(p * p, (lo + p - 1) / p * p);
    for (std::uint64_t m = first; m < hi; m += p) seg[m - lo] = 0;
  }
  std::uint64_t sum = 0;
  for (std::uint64_t i = 0; i < seg.size(); ++i)
    if (seg[i]) sum += lo + i;
  return sum;
}

cpp_int factorial(int n) {
  cpp_int r = 1;
  for (int i = 2; i <= n; ++i) r *= i;
  return r;
}

std::vector<std::pair<std::uint64_t, std::uint64_t>> prime_chunks() {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> v;
  for (int k = 0; k < kChunks; ++k) v.emplace_back(kLimit * k / kChunks, kLimit * (k + 1) / kChunks);
  return v;
}

std::uint64_t checksum(const std::vector<cpp_int>& facts) {
  std::uint64_t s = 0;
  for (const cpp_int& f : facts) s = (s + static_cast<std::uint64_t>(f % kP)) % kP;
  return s;
}

struct outcome {
  std::string name;
  double start = 0, primes = NAN, factorials = NAN;  // seconds
  std::uint64_t prime_sum = 0, fact_checksum = 0;
  bool ok = true;
  double total() const { return start + primes + factorials; }
};

outcome run_serial(const std::vector<std::pair<std::uint64_t, std::uint64_t>>& chunks,
                   const std::vector<int>& ns, std::vector<cpp_int>& facts) {
  outcome o{.name = "C++, one process"};
  auto t = clk::now();
  for (const auto& c : chunks) o.prime_sum += sum_primes_in(c);
  o.primes = secs_since(t);
  t = clk::now();
  facts.clear();
  for (int n : ns) facts.push_back(factorial(n));
  o.factorials = secs_since(t);
  o.fact_checksum = checksum(facts);
  return o;
}

/// The same work on std::threads pulling items from a shared counter, results written
/// in place: what the machine can do with nothing to transfer.
outcome run_threads(std::size_t nthreads, const std::vector<std::pair<std::uint64_t, std::uint64_t>>& chunks,
                    const std::vector<int>& ns, const outcome& serial, const std::vector<cpp_int>& serial_facts) {
  outcome o{.name = "C++ std::threads(" + std::to_string(nthreads) + "), the ceiling"};
  auto parallel = [&](std::size_t n, auto&& body) {
    std::atomic<std::size_t> next{0};
    std::vector<std::thread> ts;
    for (std::size_t i = 0; i < nthreads; ++i)
      ts.emplace_back([&] {
        for (std::size_t k; (k = next++) < n;) body(k);
      });
    for (auto& t : ts) t.join();
  };
  std::vector<std::uint64_t> sums(chunks.size());
  auto t = clk::now();
  parallel(chunks.size(), [&](std::size_t k) { sums[k] = sum_primes_in(chunks[k]); });
  o.primes = secs_since(t);
  o.prime_sum = std::accumulate(sums.begin(), sums.end(), std::uint64_t(0));
  std::vector<cpp_int> facts(ns.size());
  t = clk::now();
  parallel(ns.size(), [&](std::size_t k) { facts[k] = factorial(ns[k]); });
  o.factorials = secs_since(t);
  o.fact_checksum = checksum(facts);
  o.ok = o.prime_sum == serial.prime_sum && facts == serial_facts;
  return o;
}

outcome run_pool(mproc::start_method method, std::size_t processes,
                 const std::vector<std::pair<std::uint64_t, std::uint64_t>>& chunks, const std::vector<int>& ns,
                 const outcome& serial, const std::vector<cpp_int>& serial_facts, bool show_progress) {
  const std::string m = mproc::to_string(method);
  auto bar = [&](const std::string& what) {
    return show_progress ? mproc::progress_bar(m + " " + what) : mproc::progress_fn{};
  };
  outcome o{.name = "mproc::Pool(" + std::to_string(processes) + "), " + m};
  auto t = clk::now();
  mproc::Pool pool({.processes = processes, .method = method});
  o.start = secs_since(t);
  t = clk::now();
  auto sums = pool.map(sum_primes_in, chunks,
                       mproc::map_options{.chunksize = 1, .on_progress = bar("primes    ")});
  o.primes = secs_since(t);
  o.prime_sum = std::accumulate(sums.begin(), sums.end(), std::uint64_t(0));
  t = clk::now();
  auto facts = pool.map(factorial, ns, mproc::map_options{.on_progress = bar("factorials")});
  o.factorials = secs_since(t);
  t = clk::now();
  pool.close();
  pool.join();
  o.start += secs_since(t);  // start and shutdown: what a one-off computation pays
  o.fact_checksum = checksum(facts);
  o.ok = o.prime_sum == serial.prime_sum && facts == serial_facts;
  return o;
}

/// The run with the median total of `runs` (all of which must have matched).
outcome median_run(std::vector<outcome> runs) {
  bool ok = true;
  for (const auto& r : runs) ok &= r.ok;
  std::sort(runs.begin(), runs.end(), [](const outcome& a, const outcome& b) { return a.total() < b.total(); });
  outcome m = runs[runs.size() / 2];
  m.ok = ok;
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  std::size_t processes = mproc::cpu_count();
  // --rounds: each variant runs this many times and the run with the median total is
  // shown (the progress bars show the first).
  auto opts = bench::parse_args(argc, argv, 3, 1, "[--rounds N] [--processes N] [--no-python]",
                                [&](std::string_view a, auto& next) {
                                  if (a != "--processes") return false;
                                  processes = std::max(1, std::atoi(next()));
                                  return true;
                                });
  const auto chunks = prime_chunks();
  std::vector<int> ns(kFactorials);
  std::iota(ns.begin(), ns.end(), 1);

  std::printf("mproc headline: sum of the primes below 10,000,000 (%d chunks) and the factorials of\n"
              "1..2000 as big integers, on %zu processes of a %d-core machine\n\n",
              kChunks, processes, mproc::cpu_count());
  std::fflush(stdout);
  std::vector<cpp_int> serial_facts;
  std::vector<outcome> rows;
  {
    std::vector<outcome> runs;
    for (int r = 0; r < opts.rounds; ++r) runs.push_back(run_serial(chunks, ns, serial_facts));
    rows.push_back(median_run(runs));
  }
  const outcome serial = rows.front();  // a copy: rows grows below
  {
    std::vector<outcome> runs;
    for (int r = 0; r < opts.rounds; ++r) runs.push_back(run_threads(processes, chunks, ns, serial, serial_facts));
    rows.push_back(median_run(runs));
  }
  for (auto method : {mproc::start_method::fork, mproc::start_method::spawn, mproc::start_method::forkserver}) {
    std::vector<outcome> runs;
    for (int r = 0; r < opts.rounds; ++r)
      runs.push_back(run_pool(method, processes, chunks, ns, serial, serial_facts, r == 0));
    rows.push_back(median_run(runs));
  }

  if (opts.python) {
    std::fprintf(stderr,
                 "Python: the same work, serially, with multiprocessing.Pool(%zu) and the other executors ...\n",
                 processes);
    auto py = bench::run_python("headline.py", std::to_string(processes) + " " + std::to_string(opts.rounds));
    if (py.empty()) {
      std::fprintf(stderr, "the Python side failed to run\n");
      return 1;
    }
    static const char* const executor_names[] = {"multiprocessing.Pool", "ProcessPoolExecutor", "loky", "pebble"};
    const double best_id = bench::get(py, "best_executor");
    for (const char* which : {"serial", "pool", "best"}) {
      const std::string w = which;
      if (w == "best" && (std::isnan(best_id) || best_id == 0)) continue;  // Pool is the best: shown already
      const std::string n = std::to_string(processes);
      outcome o{.name = w == "serial" ? "Python, one process"
                        : w == "pool" ? "Python multiprocessing.Pool(" + n + "), fork"
                                      : "Python " + std::string(executor_names[int(best_id) & 3]) + "(" + n +
                                            "), best other"};
      o.start = bench::get(py, w + "_start");
      o.primes = bench::get(py, w + "_primes");
      o.factorials = bench::get(py, w + "_factorials");
      // Below 2^53: exact as a double.
      o.prime_sum = static_cast<std::uint64_t>(bench::get(py, w + "_prime_sum"));
      o.fact_checksum = static_cast<std::uint64_t>(bench::get(py, w + "_fact_checksum"));
      o.ok = o.prime_sum == serial.prime_sum && o.fact_checksum == serial.fact_checksum;
      rows.push_back(o);
    }
  }

  const double base = serial.total();
  // The fastest Python pool of the run (multiprocessing.Pool or another executor).
  const outcome* py_best = nullptr;
  for (const auto& r : rows)
    if (r.name.rfind("Python ", 0) == 0 && r.name != "Python, one process" &&
        (!py_best || r.total() < py_best->total()))
      py_best = &r;
  std::printf("\n%-44s %10s %8s %10s %8s %9s %9s %s\n", "seconds", "start+stop", "primes", "factorials",
              "total", "speedup", "vs best", "results");
  std::printf("%-44s %10s %8s %10s %8s %9s %9s\n", "", "", "", "", "", "", "Python");
  bool all_ok = true;
  for (const auto& r : rows) {
    char vs_py[32] = "";
    if (py_best) std::snprintf(vs_py, sizeof vs_py, "%.1fx", py_best->total() / r.total());
    char speedup[32];
    std::snprintf(speedup, sizeof speedup, "%.2fx", base / r.total());
    std::printf("%-44s %10.3f %8.3f %10.3f %8.3f %9s %9s %s\n", r.name.c_str(), r.start, r.primes, r.factorials,
                r.total(), speedup, vs_py, r.ok ? "match" : "DIFFER");
    all_ok &= r.ok;
  }
  std::printf("\nSum of primes below 10,000,000: %llu; checksum of the factorials (sum of n! mod %llu): %llu\n",
              static_cast<unsigned long long>(serial.prime_sum), static_cast<unsigned long long>(kP),
              static_cast<unsigned long long>(serial.fact_checksum));
  std::printf("speedup: over one C++ process (at most %dx on %d cores; std::threads are the ceiling for\n"
              "CPU work: nothing crosses a process boundary); vs best Python: how many times less time\n"
              "than the fastest Python pool took for the same work. Pool rows include starting and\n"
              "stopping the pool. Each row: the median of %d runs.\n",
              mproc::cpu_count(), mproc::cpu_count(), opts.rounds);
  if (!all_ok) {
    std::printf("\nERROR: some results differ from the serial ones\n");
    return 1;
  }
  std::printf("All results match the serial ones.\n");
  return 0;
}
