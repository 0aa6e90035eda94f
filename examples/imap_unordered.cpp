// Mirrors seed 004, problem 8: "Use imap_unordered to stream results from a process pool
// as each task completes, not waiting for all."
// imap_unordered streams results as each task completes, not in input order.
#include <chrono>
#include <cstdio>
#include <iostream>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include <unistd.h>

#include <mproc/pool.hpp>

std::pair<int, double> slow_process(int item) {
  // Each worker draws from its own stream (as Python reseeds random in a forked child).
  thread_local std::mt19937 rng(99u ^ static_cast<unsigned>(::getpid()));
  double delay = std::uniform_real_distribution<double>(0.05, 0.2)(rng);
  std::this_thread::sleep_for(std::chrono::duration<double>(delay));
  return {item * item, delay};
}

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  std::vector<int> items{1, 2, 3, 4, 5, 6, 7, 8};
  std::vector<int> received;
  {
    mproc::Pool pool(4);
    for (auto [square, delay] : pool.imap_unordered(slow_process, items)) {
      received.push_back(square);
      // Arrival order varies run to run, so the stream goes to stderr.
      std::fprintf(stderr, "received %d (slept %.3fs)\n", square, delay);
    }
  }
  std::cout << "All 8 results received: " << (received.size() == 8 ? "True" : "False") << '\n';
}
