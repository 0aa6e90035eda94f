// Mirrors seed 000, practice question "CPU-bound example: Calculate factorials or primes
// across multiple processes" (the Process version).
// CPU-bound work in two processes: each computes a factorial and reports who it is.
#include <cstdint>
#include <iostream>
#include <sstream>

#include <mproc/process.hpp>

void factorial(int number) {
  std::uint64_t result = 1;
  for (int i = 1; i <= number; ++i) result *= std::uint64_t(i);
  auto me = mproc::current_process();
  // Both lines leave in one write so the two children's reports never interleave;
  // which child finishes first is up to the scheduler (the seed shows Process-2 first).
  std::ostringstream out;
  out << "Current process ID: " << me.pid << ", name: " << me.name << '\n' << result << '\n';
  std::cout << out.str() << std::flush;
}

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  mproc::Process p1(factorial, 5);
  mproc::Process p2(factorial, 7);
  p1.start();
  p2.start();
  p1.join();
  p2.join();
}
