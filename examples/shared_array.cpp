// Mirrors seed 001, Practice Exercise 4: a shared array in shared_memory, one slice per worker.
// Exercise 4: a shared array of doubles in a SharedMemory block; 4 worker processes
// attach to it by name and each fills its own slice; the parent then verifies the
// whole array in place, through the same mapping, without copying or serializing it.
#include <cmath>
#include <cstddef>
#include <iostream>
#include <span>
#include <string>
#include <vector>

#include <mproc/process.hpp>
#include <mproc/shared_memory.hpp>

constexpr std::size_t kElements = 4'000'000;
constexpr int kWorkers = 4;

double value_at(std::size_t i) { return std::sqrt(double(i)) * 0.5 + double(i % 7); }

void fill_slice(std::string name, std::size_t begin, std::size_t end) {
  mproc::SharedMemory shm(name);  // attach by name: no data crosses the process boundary
  std::span<double> arr = shm.as<double>();
  for (std::size_t i = begin; i < end; ++i) arr[i] = value_at(i);
}

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  mproc::SharedMemory shm(mproc::create, kElements * sizeof(double));
  std::cout << "Shared array: " << kElements << " doubles (" << shm.size() << " bytes) in '" << shm.name()
            << "'" << std::endl;

  std::vector<mproc::Process> workers;
  std::vector<std::pair<std::size_t, std::size_t>> slices;
  for (int w = 0; w < kWorkers; ++w) {
    std::size_t begin = kElements * std::size_t(w) / kWorkers, end = kElements * std::size_t(w + 1) / kWorkers;
    slices.emplace_back(begin, end);
    workers.emplace_back(fill_slice, shm.name(), begin, end);
  }
  for (auto& p : workers) p.start();
  for (std::size_t w = 0; w < workers.size(); ++w) {
    workers[w].join();
    std::cout << "Worker " << w << " filled [" << slices[w].first << ", " << slices[w].second
              << ") with exit code " << workers[w].exitcode().value_or(-999) << std::endl;
  }

  // Verify in place: arr views the shared pages directly.
  std::span<const double> arr = shm.as<double>();
  std::size_t correct = 0;
  for (std::size_t i = 0; i < arr.size(); ++i) {
    correct += arr[i] == value_at(i);
  }
  std::cout << "Verified in the parent without copying: " << correct << " of " << arr.size()
            << " elements correct" << std::endl;
  std::cout << "All slices combined: " << (correct == kElements ? "True" : "False") << std::endl;
  shm.close();
  shm.unlink();
  return correct == kElements ? 0 : 1;
}
