// Mirrors seed 004, problem 2: "Use Pool.map to apply a CPU-intensive function to a list of
// inputs in parallel."
// Pool.map over a CPU-bound function; the results come back in input order.
//
// The exercise's printed list is wrong: sum(range(100 * 10000)) is 499999500000, not
// 49999500000 (each of its values is off). This prints what the code computes, as
// python3 confirms:
//   [499999500000, 1999999000000, 1124999250000, 4499998500000, 3124998750000]
#include <cstdint>
#include <iostream>
#include <vector>

#include <mproc/pool.hpp>

std::int64_t cpu_intensive(int n) {
  std::int64_t total = 0;
  for (std::int64_t i = 0; i < std::int64_t(n) * 10000; ++i) total += i;
  return total;
}

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  std::vector<int> numbers{100, 200, 150, 300, 250};
  mproc::Pool pool;
  std::vector<std::int64_t> results = pool.map(cpu_intensive, numbers);
  std::cout << '[';
  for (std::size_t i = 0; i < results.size(); ++i) std::cout << (i ? ", " : "") << results[i];
  std::cout << "]\n";
}
