// expect: include <mproc/serialization/boost.hpp> to send it
// A type sent through its Boost serialize() needs the Boost bridge header, which the
// other mproc headers do not include (Boost's archives are slow to compile); the
// message names the header to add.
#include <mproc/pool.hpp>

#include <string>
#include <vector>

struct point {
  int x = 0;
  std::string label;
  template <class Archive>
  void serialize(Archive& ar, unsigned) {
    ar & x & label;
  }
};
point make(int x) { return {x, "p"}; }

int main() {
  mproc::Pool pool(1);
  return int(pool.map(make, std::vector<int>{1, 2}).size());
}
