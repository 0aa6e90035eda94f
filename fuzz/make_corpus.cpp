// Writes the seed corpus for fuzz_deserialize: one file per fuzzed type holding a valid
// encoding of its sample value (selector byte + payload), plus the same as a message.
// Usage: make_corpus <output directory>
#include "fuzz_types.hpp"

#include <cstdio>
#include <fstream>
#include <string>

namespace {

void write_file(const std::string& path, std::uint8_t selector,
                const std::vector<std::byte>& payload) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.put(static_cast<char>(selector));
  out.write(reinterpret_cast<const char*>(payload.data()),
            static_cast<std::streamsize>(payload.size()));
  if (!out) {
    std::fprintf(stderr, "make_corpus: cannot write %s\n", path.c_str());
    std::exit(1);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <output directory>\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  auto samples = fuzz::samples();
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    (write_file(dir + "/seed_" + std::to_string(I), std::uint8_t(I),
                mproc::serialize(std::get<I>(samples))),
     ...);
    // the message path takes the payload without its tag (the fuzzer adds the tag)
    (write_file(dir + "/seed_msg_" + std::to_string(I), std::uint8_t(I | fuzz::message_bit),
                mproc::serialize(std::get<I>(samples))),
     ...);
  }(std::make_index_sequence<fuzz::type_count>{});
  return 0;
}
