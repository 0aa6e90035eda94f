// expect: capturing lambda holds state that cannot cross a process boundary
#include <mproc/pool.hpp>

int main() {
  mproc::Pool pool(1);
  int offset = 3;
  return pool.apply([&offset](int x) { return x + offset; }, 1);
}
