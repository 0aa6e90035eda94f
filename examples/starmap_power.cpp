// Mirrors seed 004, problem 4: "Use Pool.starmap to apply a function with multiple
// arguments to a list of argument tuples."
// Pool.starmap: each (base, exp) pair is unpacked into the function's two arguments.
#include <cstdint>
#include <iostream>
#include <utility>
#include <vector>

#include <mproc/pool.hpp>

std::int64_t power(std::int64_t base, int exp) {
  std::int64_t r = 1;
  for (int i = 0; i < exp; ++i) r *= base;
  return r;
}

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  std::vector<std::pair<std::int64_t, int>> pairs{{2, 10}, {3, 5}, {5, 4}, {10, 3}, {7, 2}};
  mproc::Pool pool;
  std::vector<std::int64_t> results = pool.starmap(power, pairs);
  std::cout << '[';
  for (std::size_t i = 0; i < results.size(); ++i) std::cout << (i ? ", " : "") << results[i];
  std::cout << "]\n";
}
