// Mirrors seed 004, problem 3: "Use multiprocessing.Queue to send computed results from a
// child process back to the parent."
// A child process computes the primes below 50 and sends the list back through a
// Queue; the parent takes it and prints it.
#include <iostream>
#include <sstream>
#include <vector>

#include <mproc/process.hpp>
#include <mproc/queue.hpp>

void compute_primes(int limit, mproc::Queue<std::vector<int>> result_queue) {
  std::vector<int> primes;
  for (int n = 2; n < limit; ++n) {
    bool prime = true;
    for (int i = 2; i < n && prime; ++i) prime = n % i != 0;
    if (prime) primes.push_back(n);
  }
  result_queue.put(primes);
}

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  mproc::Queue<std::vector<int>> q;
  mproc::Process p(compute_primes, 50, q);
  p.start();
  std::vector<int> result = q.get();
  p.join();
  std::ostringstream out;
  out << '[';
  for (std::size_t i = 0; i < result.size(); ++i) out << (i ? ", " : "") << result[i];
  out << ']';
  std::cout << out.str() << '\n';
}
