// Mirrors seed 001, Practice Exercise 1: the sum of the primes up to 10,000,000 with a Pool.
// Exercise 1: the sum of the primes below 10,000,000, the range split into one chunk
// per core and each chunk sieved in a pool worker; compared with one process doing the
// whole range with the same function.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <utility>
#include <vector>

#include <mproc/pool.hpp>

/// Sum of the primes in [lo, hi): a segmented sieve, crossing off multiples of every
/// prime up to sqrt(hi) inside the segment only.
std::uint64_t sum_primes_in(std::uint64_t lo, std::uint64_t hi) {
  if (hi <= 2 || lo >= hi) return 0;
  lo = std::max<std::uint64_t>(lo, 2);
  std::uint64_t root = 1;
  while ((root + 1) * (root + 1) < hi) ++root;
  std::vector<char> small(root + 1, 1);
  std::vector<char> seg(hi - lo, 1);
  for (std::uint64_t p = 2; p <= root; ++p) {
    if (!small[p]) continue;
    for (std::uint64_t m = p * p; m <= root; m += p) small[m] = 0;
    std::uint64_t first = std::max(p * p, (lo + p - 1) / p * p);
    for (std::uint64_t m = first; m < hi; m += p) seg[m - lo] = 0;
  }
  std::uint64_t sum = 0;
  for (std::uint64_t i = 0; i < seg.size(); ++i)
    if (seg[i]) sum += lo + i;
  return sum;
}

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  constexpr std::uint64_t limit = 10'000'000;
  const auto cores = static_cast<std::uint64_t>(mproc::cpu_count());
  using clock = std::chrono::steady_clock;
  auto seconds = [](clock::duration d) { return std::chrono::duration<double>(d).count(); };

  auto t0 = clock::now();
  const std::uint64_t serial = sum_primes_in(0, limit);
  const double serial_s = seconds(clock::now() - t0);

  std::vector<std::pair<std::uint64_t, std::uint64_t>> chunks;
  for (std::uint64_t k = 0; k < cores; ++k)
    chunks.emplace_back(limit * k / cores, limit * (k + 1) / cores);
  // Timed twice: the map alone on a running pool, and with the pool's start and
  // shutdown, which is what a caller pays for a one-off computation.
  t0 = clock::now();
  std::uint64_t parallel = 0;
  double map_s = 0;
  {
    mproc::Pool pool(static_cast<std::size_t>(cores));
    auto t1 = clock::now();
    auto partial = pool.starmap(sum_primes_in, chunks);
    map_s = seconds(clock::now() - t1);
    parallel = std::accumulate(partial.begin(), partial.end(), std::uint64_t(0));
  }
  const double parallel_s = seconds(clock::now() - t0);

  std::printf("Sum of primes below 10,000,000: %llu\n", static_cast<unsigned long long>(parallel));
  std::printf("Single process sum matches: %s\n", parallel == serial ? "True" : "False");
  std::printf("Single process: %.3fs\n", serial_s);
  std::printf("Pool of %llu processes, %zu chunks: %.3fs (map alone: %.3fs)\n",
              static_cast<unsigned long long>(cores), chunks.size(), parallel_s, map_s);
  std::printf("Speedup: %.2fx (map alone: %.2fx)\n", serial_s / parallel_s, serial_s / map_s);
}
