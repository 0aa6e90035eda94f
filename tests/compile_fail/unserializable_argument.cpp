// expect: this type cannot cross a process boundary
// A task argument with no serialize() must not compile, and the message says what to add.
#include <mproc/pool.hpp>

struct opaque {
  int* p = nullptr;
  opaque() = default;
  opaque(const opaque&) {}  // not trivially copyable, no serialize()
};
int use(const opaque&) { return 0; }

int main() {
  mproc::Pool pool(1);
  return pool.map(use, std::vector<opaque>(2)).size();
}
