// Mirrors seed 001, code example "Shared memory with Value and Array".
// Four processes increment a shared Value 100,000 times each, guarded by a separate
// Lock (as the exercise does; the Value's own get_lock() would serve as well).
#include <iostream>
#include <mutex>
#include <vector>

#include <mproc/process.hpp>
#include <mproc/sharedctypes.hpp>
#include <mproc/synchronize.hpp>

void counter_worker(mproc::Value<int> shared_counter, mproc::Lock lock, int increments) {
  for (int i = 0; i < increments; ++i) {
    std::scoped_lock g(lock);
    shared_counter.value() += 1;
  }
}

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  mproc::Value<int> counter(0);
  mproc::Lock lock;
  std::vector<mproc::Process> procs;
  for (int i = 0; i < 4; ++i) procs.emplace_back(counter_worker, counter, lock, 100'000);
  for (auto& p : procs) p.start();
  for (auto& p : procs) p.join();
  std::cout << "Shared counter: " << counter.value() << std::endl;  // Always 400000
}
