// libFuzzer target: untrusted bytes into deserialize<T> and read_message<T> for
// several nested types (see fuzz_types.hpp and fuzz_one.hpp).
#include "fuzz_one.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::deserialize_one(data, size);
  return 0;
}
