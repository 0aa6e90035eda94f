// expect: capturing lambda holds state that cannot cross a process boundary
// A Pool task that captures state must not compile: its state cannot be named in a
// worker process.
#include <mproc/pool.hpp>

int main() {
  mproc::Pool pool(1);
  int offset = 3;
  auto v = pool.map([offset](int x) { return x + offset; }, std::vector<int>{1, 2});
  return v.empty();
}
