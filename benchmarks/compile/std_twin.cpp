// Compile-time twin: one map of sq over three ints with std::async, the standard
// library's own way to run work elsewhere. The yardstick of benchmarks/run.py's
// compile rows (umbrella.cpp and pool_only.cpp do the same with mproc).
#include <cstdio>
#include <future>
#include <thread>
#include <vector>
int sq(int x) { return x * x; }
int main() {
  std::vector<int> in{1, 2, 3};
  std::vector<std::future<int>> fs;
  for (int x : in) fs.push_back(std::async(std::launch::async, sq, x));
  std::vector<int> r;
  for (auto& f : fs) r.push_back(f.get());
  std::printf("%d\n", r[2]);
}
