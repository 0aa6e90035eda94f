// Authentication primitives for manager connections: random keys and challenges from
// getrandom(), HMAC-SHA256 from OpenSSL's libcrypto, constant-time comparison.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "../errors.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sys/random.h>

#include "posix/posix.hpp"

namespace mproc::detail {

/// n bytes from the kernel's CSPRNG.
inline std::string random_bytes(std::size_t n) {
  std::string out(n, '\0');
  std::size_t got = 0;
  while (got < n) {
    ssize_t r = ::getrandom(out.data() + got, n - got, 0);
    if (r == -1) {
      if (errno == EINTR) continue;
      throw_errno("getrandom");
    }
    got += std::size_t(r);
  }
  return out;
}

inline std::string hex(std::string_view bytes) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string s;
  s.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    s.push_back(digits[c >> 4]);
    s.push_back(digits[c & 15]);
  }
  return s;
}

/// HMAC-SHA256(key, msg): 32 raw bytes.
inline std::string hmac_sha256(std::string_view key, std::string_view msg) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!::HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
              reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), out, &len))
    throw error("mproc: HMAC-SHA256 failed in libcrypto");
  return std::string(reinterpret_cast<const char*>(out), len);
}

/// Equality that takes the same time wherever the first difference is, so a peer
/// cannot learn a digest byte by byte from response times.
inline bool constant_time_equal(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  return ::CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace mproc::detail
