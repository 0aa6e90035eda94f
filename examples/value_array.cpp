// Mirrors seed 004, problem 5: "Use multiprocessing.Value and Array to share state between
// a parent and child process."
// Share state with children through a Value and an Array: one process fills the
// array with multiples of 3, another increments the counter 100 times.
#include <iostream>
#include <mutex>

#include <mproc/process.hpp>
#include <mproc/sharedctypes.hpp>

void fill_array(mproc::Array<int> arr, int val) {
  for (std::size_t i = 0; i < arr.size(); ++i) arr[i] = val * int(i + 1);
}

void increment_counter(mproc::Value<int> counter, int n) {
  for (int i = 0; i < n; ++i) {
    std::scoped_lock g(counter.get_lock());
    counter.value() += 1;
  }
}

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  mproc::Array<int> shared_arr(5);
  mproc::Value<int> counter(0);
  mproc::Process p1(fill_array, shared_arr, 3);
  mproc::Process p2(increment_counter, counter, 100);
  p1.start();
  p2.start();
  p1.join();
  p2.join();
  std::cout << "Array: [";
  for (std::size_t i = 0; i < shared_arr.size(); ++i) std::cout << (i ? ", " : "") << shared_arr[i];
  std::cout << "]" << std::endl;
  std::cout << "Counter: " << counter.value() << std::endl;
}
