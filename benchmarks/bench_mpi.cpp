// mpi::Pool against mproc::Pool on one machine: per-task overhead (map identity over
// 100k ints), per-byte cost (identity over 1 MiB payloads, against memcpy), and
// scaling of a CPU-bound workload from 1 to 2 workers. Medians of repeated runs.
// Run: mpirun -np 3 --oversubscribe ./bench_mpi   (the root plus two worker ranks)
//
// benchmarks/run.py runs two other modes, each one round, in the same rounds as
// mpi4py.futures (benchmarks/python/bench_mpi4py.py):
//   bench_mpi --json [--quick]   mpi::Pool(2): identity over 20,000 ints chunksize 1 and
//                                100,000 chunksize 1000, 200 apply round trips, the
//                                primes below 2,000,000 in 64 chunks (and serially)
//   bench_mpi --raw-pingpong     MPI_Send/MPI_Recv of an int between ranks 0 and 1:
//                                the floor under a round trip between the same ranks
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <numeric>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include <mpi.h>

#include <mproc/mpi.hpp>
#include <mproc/pool.hpp>

#include "bench_common.hpp"

namespace {

using clock_type = bench::clk;

using bench::median_seconds;

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

bool is_prime_td(long n) {
  if (n < 2) return false;
  if (n % 2 == 0) return n == 2;
  for (long i = 3; i * i <= n; i += 2)
    if (n % i == 0) return false;
  return true;
}
/// The same trial division as bench_pool and the Python peers.
long count_primes_td(std::pair<long, long> b) {
  long c = 0;
  for (long n = b.first; n < b.second; ++n) c += is_prime_td(n);
  return c;
}

/// One round of the rows run.py puts beside mpi4py.futures, as "key value" lines.
int json_round(bool quick) {
  // One rank per core here (2 worker ranks on 2 cores): one local process each.
  std::optional<mproc::mpi::Pool> holder(std::in_place, mproc::mpi::pool_options{.processes = 2, .local_processes = 1});
  auto& pool = *holder;
  (void)pool.map(identity, std::vector<int>(100));  // warm
  std::vector<int> in(100'000);
  std::iota(in.begin(), in.end(), 0);
  std::vector<int> small(in.begin(), in.begin() + (quick ? 4'000 : 20'000));
  auto t = clock_type::now();
  auto r = pool.map(identity, small, 1);
  std::printf("map_cs1 %.6g\n", double(small.size()) / bench::secs_since(t));
  t = clock_type::now();
  r = pool.map(identity, in, 1000);
  std::printf("map_cs1000 %.6g\n", double(in.size()) / bench::secs_since(t));
  if (r.back() != in.back()) return 1;
  t = clock_type::now();
  for (int i = 0; i < 200; ++i) g_sink = g_sink + static_cast<std::size_t>(pool.apply(identity, i));
  std::printf("apply_rt %.6g\n", bench::secs_since(t) / 200 * 1e6);
  std::vector<std::pair<long, long>> chunks;
  const long limit = 2'000'000, step = limit / 64;
  for (long k = 0; k < 64; ++k) chunks.emplace_back(k * step, k == 63 ? limit : (k + 1) * step);
  t = clock_type::now();
  auto counts = pool.map(count_primes_td, chunks, 1);
  std::printf("primes %.6g\n", bench::secs_since(t));
  t = clock_type::now();
  long serial = 0;
  for (auto& c : chunks) serial += count_primes_td(c);
  std::printf("serial_primes %.6g\n", bench::secs_since(t));
  if (std::accumulate(counts.begin(), counts.end(), 0L) != serial) return 1;
  holder.reset();  // one mpi::Pool at a time
  {
    // The same work with tasks run in the ranks themselves (local_processes = -1): the
    // cost of the local processes' containment is the difference.
    mproc::mpi::Pool in_rank({.processes = 2, .local_processes = -1});
    (void)in_rank.map(identity, std::vector<int>(100));  // warm
    t = clock_type::now();
    for (int i = 0; i < 200; ++i) g_sink = g_sink + static_cast<std::size_t>(in_rank.apply(identity, i));
    std::printf("apply_rt_in_rank %.6g\n", bench::secs_since(t) / 200 * 1e6);
    t = clock_type::now();
    auto c2 = in_rank.map(count_primes_td, chunks, 1);
    std::printf("primes_in_rank %.6g\n", bench::secs_since(t));
    if (std::accumulate(c2.begin(), c2.end(), 0L) != serial) return 1;
  }
  std::fflush(stdout);
  return 0;
}

/// Plain MPI (no mproc) between ranks 0 and 1; the other ranks wait at the end.
int raw_pingpong(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  constexpr int trips = 20'000;
  int v = 0;
  if (rank == 0) {
    MPI_Send(&v, 1, MPI_INT, 1, 0, MPI_COMM_WORLD);
    MPI_Recv(&v, 1, MPI_INT, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    auto t = clock_type::now();
    for (int i = 0; i < trips; ++i) {
      MPI_Send(&v, 1, MPI_INT, 1, 0, MPI_COMM_WORLD);
      MPI_Recv(&v, 1, MPI_INT, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    }
    std::printf("raw_pingpong_us %.6g\n", bench::secs_since(t) / trips * 1e6);
    std::fflush(stdout);
  } else if (rank == 1) {
    for (int i = 0; i < trips + 1; ++i) {
      MPI_Recv(&v, 1, MPI_INT, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      ++v;
      MPI_Send(&v, 1, MPI_INT, 0, 0, MPI_COMM_WORLD);
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);
  MPI_Finalize();
  return 0;
}

int main(int argc, char** argv) {
  bool json = false, quick = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a == "--raw-pingpong") return raw_pingpong(argc, argv);
    json |= a == "--json";
    quick |= a == "--quick";
  }
  mproc::mpi::environment env(argc, argv);
  if (json) return json_round(quick);
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
