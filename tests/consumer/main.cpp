// Downstream program: the umbrella header must be self-sufficient and link with
// nothing but mproc::mproc.
#include <mproc/mproc.hpp>

#include <cstdio>
#include <map>
#include <string>
#include <vector>

int main() {
  std::map<std::string, std::vector<int>> value{{"squares", {1, 4, 9}}, {"empty", {}}};
  auto bytes = mproc::serialize(value);
  auto back = mproc::deserialize<decltype(value)>(bytes);
  if (back != value) {
    std::puts("consumer FAILED: serialization round trip");
    return 1;
  }
  try {
    bytes.resize(bytes.size() / 2);
    (void)mproc::deserialize<decltype(value)>(bytes);
    std::puts("consumer FAILED: truncated input accepted");
    return 1;
  } catch (const mproc::serialization_error&) {
  }
  std::printf("consumer ok: mproc %s\n", mproc::version_string);
  return 0;
}
