// Mirrors seed 001, Practice Exercise 1: the sum of the primes up to 10,000,000 (over MPI).
// Exercise 1 over MPI: the primes below 10,000,000, the range cut into 40 chunks that
// the worker ranks sieve as they become free; checked against one process doing the
// whole range with the same function. Run: mpirun -np 3 ./mpi_primes
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <utility>
#include <vector>

#include <mproc/mpi.hpp>

namespace {

struct prime_tally {
  std::uint64_t count = 0;
  std::uint64_t sum = 0;
  auto mproc_fields() { return std::tie(count, sum); }
};

/// The primes in [lo, hi): a segmented sieve, crossing off multiples of every prime up
/// to sqrt(hi) inside the segment only.
prime_tally primes_in(std::uint64_t lo, std::uint64_t hi) {
  prime_tally t;
  if (hi <= 2 || lo >= hi) return t;
  lo = std::max<std::uint64_t>(lo, 2);
  std::uint64_t root = 1;
  while ((root + 1) * (root + 1) < hi) ++root;
  std::vector<char> small(root + 1, 1);
  std::vector<char> seg(hi - lo, 1);
  for (std::uint64_t p = 2; p <= root; ++p) {
    if (!small[p]) continue;
    for (std::uint64_t m = p * p; m <= root; m += p) small[m] = 0;
    for (std::uint64_t m = std::max(p * p, (lo + p - 1) / p * p); m < hi; m += p) seg[m - lo] = 0;
  }
  for (std::uint64_t i = 0; i < seg.size(); ++i)
    if (seg[i]) {
      ++t.count;
      t.sum += lo + i;
    }
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  mproc::mpi::environment env(argc, argv);  // worker ranks serve tasks here and exit
  constexpr std::uint64_t limit = 10'000'000;
  constexpr std::uint64_t chunks = 40;
  using clock = std::chrono::steady_clock;
  auto seconds = [](clock::duration d) { return std::chrono::duration<double>(d).count(); };

  std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
  for (std::uint64_t k = 0; k < chunks; ++k)
    ranges.emplace_back(limit * k / chunks, limit * (k + 1) / chunks);

  auto t0 = clock::now();
  prime_tally total;
  {
    mproc::mpi::Pool pool;
    // One range per task; the progress bar goes to stderr.
    auto parts = pool.starmap(primes_in, ranges,
                              mproc::map_options{.chunksize = 1, .on_progress = mproc::progress_bar("sieving")});
    for (const auto& p : parts) {
      total.count += p.count;
      total.sum += p.sum;
    }
  }
  const double mpi_s = seconds(clock::now() - t0);

  t0 = clock::now();
  const prime_tally serial = primes_in(0, limit);
  const double serial_s = seconds(clock::now() - t0);

  std::printf("Sum of primes below 10,000,000: %llu\n", static_cast<unsigned long long>(total.sum));
  std::printf("Number of primes below 10,000,000: %llu\n", static_cast<unsigned long long>(total.count));
  std::printf("Single process result matches: %s\n",
              serial.sum == total.sum && serial.count == total.count ? "True" : "False");
  std::printf("Single process: %.3fs\n", serial_s);
  std::printf("MPI pool of %d worker ranks, %llu chunks: %.3fs\n", env.workers(),
              static_cast<unsigned long long>(chunks), mpi_s);
  return serial.sum == total.sum ? 0 : 1;
}
