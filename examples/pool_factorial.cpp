// Mirrors seed 000, practice question "Use a Pool to parallelise computations".
// A Pool parallelises a map: each task computes a factorial in some worker, says which
// worker it ran in, and returns "N! = value"; the parent prints the results in order.
#include <cstdint>
#include <iostream>
#include <string>
#include <vector>

#include <mproc/pool.hpp>

std::string factorial(int number) {
  std::uint64_t result = 1;
  for (int i = 1; i <= number; ++i) result *= std::uint64_t(i);
  auto me = mproc::current_process();
  // One write per line, flushed now: lines from different workers then never interleave,
  // and none waits in a buffer for the worker to exit.
  std::cout << ("Current process ID: " + std::to_string(me.pid) + ", name: " + me.name + "\n")
            << std::flush;
  return std::to_string(number) + "! = " + std::to_string(result);
}

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  std::vector<int> numbers{1, 2, 3, 4, 5};
  std::vector<std::string> results;
  {
    mproc::Pool pool;  // cpu_count() workers; its destructor closes and joins them
    results = pool.map(factorial, numbers);
  }
  for (const auto& result : results) std::cout << result << '\n';
}
