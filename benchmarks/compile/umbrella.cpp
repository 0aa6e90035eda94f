// Compile-time row: the whole library (<mproc/mproc.hpp>) for one Pool.map.
#include <mproc/mproc.hpp>
#include <cstdio>
int sq(int x) { return x * x; }
int main() {
  mproc::Pool p(2);
  auto r = p.map(sq, std::vector<int>{1, 2, 3});
  std::printf("%d\n", r[2]);
}
