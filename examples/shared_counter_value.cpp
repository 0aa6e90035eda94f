// Mirrors seed 000, practice question "Using Both" (its shared Value counter).
// A shared counter (Value) incremented under its own lock by 5 processes, 1000 times
// each. This is the Value half of the "Using Both" exercise; the Manager dict half
// lives with the Manager examples.
#include <iostream>
#include <mutex>
#include <vector>

#include <mproc/process.hpp>
#include <mproc/sharedctypes.hpp>

void worker(mproc::Value<int> shared_counter) {
  for (int i = 0; i < 1000; ++i) {
    std::scoped_lock g(shared_counter.get_lock());
    shared_counter.value() += 1;
  }
}

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  mproc::Value<int> shared_counter(0);
  std::vector<mproc::Process> processes;
  for (int i = 0; i < 5; ++i) processes.emplace_back(worker, shared_counter);
  for (auto& p : processes) p.start();
  for (auto& p : processes) p.join();
  std::cout << "Final counter value: " << shared_counter.value() << std::endl;  // should be 5000
}
