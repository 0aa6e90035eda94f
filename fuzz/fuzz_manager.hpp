// Shared by fuzz_manager.cpp and make_corpus.cpp: how a fuzz input is cut into the
// request frames a client sends the Manager server.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace fuzz::manager {

/// Input: frames, each a 2-byte little-endian length and that many bytes (the real
/// 4-byte header is checked against the size cap before anything is read, which
/// needs no fuzzing; two bytes keep the inputs short).
inline std::vector<std::string_view> frames(const std::uint8_t* data, std::size_t size) {
  std::vector<std::string_view> out;
  std::size_t at = 0;
  while (size - at >= 2 && out.size() < 64) {
    std::uint16_t n;
    std::memcpy(&n, data + at, 2);
    at += 2;
    std::size_t len = std::min<std::size_t>(n, size - at);
    out.emplace_back(reinterpret_cast<const char*>(data + at), len);
    at += len;
  }
  return out;
}

inline void append_frame(std::string& input, std::string_view frame) {
  std::uint16_t n = static_cast<std::uint16_t>(frame.size());
  input.append(reinterpret_cast<const char*>(&n), 2);
  input.append(frame);
}

}  // namespace fuzz::manager
