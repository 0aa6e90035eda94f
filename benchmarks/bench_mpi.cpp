// mpi::Pool against mproc::Pool on one machine: per-task overhead (map identity over
// 100k ints), per-byte cost (identity over 1 MiB payloads, against memcpy), and
// scaling of a CPU-bound workload from 1 to 2 workers. Medians of repeated runs.
// Run: mpirun -np 3 --oversubscribe ./bench_mpi   (the root plus two worker ranks)
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <numeric>
#include <vector>

#include <mproc/mpi.hpp>
#include <mproc/pool.hpp>

#include "bench_common.hpp"

namespace {

using clock_type = bench::clk;

double median_seconds(int reps, const std::function<void()>& body) {
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    auto t0 = clock_type::now();
    body();
    t.push_back(bench::secs_since(t0));
  }
  return bench::median(t);
}

int identity(int x) { return x; }
std::vector<char> echo(const std::vector<char>& v) { return v; }

/// CPU-bound and the same everywhere: primes below n by trial division.
std::uint64_t count_primes(std::uint64_t lo, std::uint64_t hi) {
  std::uint64_t n = 0;
  for (std::uint64_t x = std::max<std::uint64_t>(lo, 2); x < hi; ++x) {
    bool prime = true;
    for (std::uint64_t d = 2; d * d <= x; ++d)
      if (x % d == 0) {
        prime = false;
        break;
      }
    n += prime;
  }
  return n;
}

volatile std::size_t g_sink = 0;

}  // namespace

int main(int argc, char** argv) {
  mproc::mpi::environment env(argc, argv);
  const int workers = env.workers();
  if (workers < 2)
    std::printf("note: %d worker ranks; run with mpirun -np 3 for the 1 -> 2 scaling rows\n", workers);
  const std::size_t nw = static_cast<std::size_t>(std::max(1, std::min(workers, 2)));
  constexpr int reps = 5;

  std::printf("%-44s %12s %12s %8s\n", "case (median of 5)", "mpi::Pool", "mproc::Pool", "ratio");

  // ---- per-task overhead
  {
    std::vector<int> in(100'000);
    std::iota(in.begin(), in.end(), 0);
    double mpi_s, local_s;
    {
      mproc::mpi::Pool pool(nw);
      mpi_s = median_seconds(reps, [&] { g_sink = g_sink + pool.map(identity, in).size(); });
    }
    {
      mproc::Pool pool(nw);
      local_s = median_seconds(reps, [&] { g_sink = g_sink + pool.map(identity, in).size(); });
    }
    std::printf("%-44s %10.3f us %10.3f us %7.2fx\n", "map identity, 100k ints, per item",
                mpi_s / 1e5 * 1e6, local_s / 1e5 * 1e6, mpi_s / local_s);
    double mpi1;
    {
      mproc::mpi::Pool pool(nw);
      mpi1 = median_seconds(reps, [&] { g_sink = g_sink + pool.map(identity, in, 1).size(); });
    }
    double local1;
    {
      mproc::Pool pool(nw);
      local1 = median_seconds(reps, [&] { g_sink = g_sink + pool.map(identity, in, 1).size(); });
    }
    std::printf("%-44s %10.3f us %10.3f us %7.2fx\n", "  same with chunksize 1, per item",
                mpi1 / 1e5 * 1e6, local1 / 1e5 * 1e6, mpi1 / local1);
    double apply_mpi, apply_local;
    {
      mproc::mpi::Pool pool(nw);
      apply_mpi = median_seconds(reps, [&] {
        for (int i = 0; i < 1000; ++i) g_sink = g_sink + static_cast<std::size_t>(pool.apply(identity, i));
      });
    }
    {
      mproc::Pool pool(nw);
      apply_local = median_seconds(reps, [&] {
        for (int i = 0; i < 1000; ++i) g_sink = g_sink + static_cast<std::size_t>(pool.apply(identity, i));
      });
    }
    std::printf("%-44s %10.3f us %10.3f us %7.2fx\n", "apply round trip", apply_mpi / 1000 * 1e6,
                apply_local / 1000 * 1e6, apply_mpi / apply_local);
  }

  // ---- per-byte cost: 32 payloads of 1 MiB there and back
  {
    constexpr std::size_t mib = 1 << 20, count = 32;
    std::vector<std::vector<char>> in(count, std::vector<char>(mib, 'x'));
    double mpi_s, local_s;
    {
      mproc::mpi::Pool pool(nw);
      mpi_s = median_seconds(reps, [&] { g_sink = g_sink + pool.map(echo, in, 1).size(); });
    }
    {
      mproc::Pool pool(nw);
      local_s = median_seconds(reps, [&] { g_sink = g_sink + pool.map(echo, in, 1).size(); });
    }
    std::vector<char> dst(mib);
    const double copy_s = median_seconds(reps, [&] {
      for (std::size_t i = 0; i < count; ++i) {
        std::memcpy(dst.data(), in[i].data(), mib);
        g_sink = g_sink + static_cast<std::size_t>(dst[i]);
      }
    });
    // Each payload crosses twice (there and back).
    const double per = 2.0 * count;
    std::printf("%-44s %9.1f us %10.1f us %7.2fx\n", "1 MiB payload, one way", mpi_s / per * 1e6,
                local_s / per * 1e6, mpi_s / local_s);
    std::printf("%-44s %9.0f MB/s %9.0f MB/s   (memcpy: %.0f MB/s)\n", "  throughput",
                per * mib / mpi_s / 1e6, per * mib / local_s / 1e6, count * mib / copy_s / 1e6);
  }

  // ---- scaling on a CPU-bound workload: 32 ranges of trial division
  {
    constexpr std::uint64_t limit = 600'000, parts = 32;
    std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
    for (std::uint64_t k = 0; k < parts; ++k) ranges.emplace_back(limit * k / parts, limit * (k + 1) / parts);
    auto work = [&](auto& pool) {
      auto r = pool.starmap(count_primes, ranges, 1);
      g_sink = g_sink + std::accumulate(r.begin(), r.end(), std::uint64_t(0));
    };
    // The cases alternate within each repetition, so a change in the machine's load
    // during the run affects them all alike.
    std::vector<double> serial, m1, l1, m2, l2;
    auto timed = [](std::vector<double>& into, auto&& body) {
      auto t0 = clock_type::now();
      body();
      into.push_back(bench::secs_since(t0));
    };
    {
      mproc::Pool local1(1), local2(nw);
      for (int i = 0; i < reps; ++i) {
        timed(serial, [&] { g_sink = g_sink + count_primes(0, limit); });
        {
          mproc::mpi::Pool p(1);
          timed(m1, [&] { work(p); });
        }
        timed(l1, [&] { work(local1); });
        if (nw >= 2) {
          mproc::mpi::Pool p(2);
          timed(m2, [&] { work(p); });
          timed(l2, [&] { work(local2); });
        }
      }
    }
    auto med = [](std::vector<double> v) {
      std::sort(v.begin(), v.end());
      return v.empty() ? 0.0 : v[v.size() / 2];
    };
    std::printf("%-44s %10.3f s  %10.3f s  %7.2fx   (serial %.3f s)\n", "CPU-bound, 1 worker", med(m1),
                med(l1), med(m1) / med(l1), med(serial));
    if (nw >= 2) {
      std::printf("%-44s %10.3f s  %10.3f s  %7.2fx\n", "CPU-bound, 2 workers", med(m2), med(l2),
                  med(m2) / med(l2));
      std::printf("%-44s %10.2fx  %10.2fx\n", "  speedup 1 -> 2 workers", med(m1) / med(m2),
                  med(l1) / med(l2));
    }
  }
  return 0;
}
