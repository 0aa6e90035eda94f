// Authentication primitives for manager connections: random keys and challenges from
// getrandom(), HMAC-SHA256 from OpenSSL's libcrypto, constant-time comparison.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "../errors.hpp"


#include "posix/posix.hpp"

// The three libcrypto calls used, declared here rather than by including OpenSSL's
// headers, which would reach every file that makes a Pool (the forkserver
// authenticates with HMAC). The declarations are OpenSSL's own (1.1 and 3.x), so a
// program that includes <openssl/hmac.h> as well sees the same functions
// (tests/test_hmac.cpp checks exactly that, and an RFC 4231 vector).
extern "C" {
struct evp_md_st;
const struct evp_md_st* EVP_sha256(void);
unsigned char* HMAC(const struct evp_md_st* evp_md, const void* key, int key_len, const unsigned char* d,
                    std::size_t n, unsigned char* md, unsigned int* md_len);
int CRYPTO_memcmp(const void* in_a, const void* in_b, std::size_t len);
}

namespace mproc::detail {

/// HMAC-SHA256(key, msg): 32 raw bytes.
inline std::string hmac_sha256(std::string_view key, std::string_view msg) {
  unsigned char out[64];  // EVP_MAX_MD_SIZE
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
