// libFuzzer target: untrusted bytes into deserialize<T> and read_message<T> for
// several nested types (see fuzz_types.hpp and fuzz_one.hpp), on the caller's stack
// and on a small one (deep nesting must be refused before it overflows).
#include "fuzz_one.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::deserialize_one(data, size);
  fuzz::deserialize_one_on_small_stack(data, size);
  return 0;
}
