// detail/hmac.hpp declares the libcrypto calls it uses instead of including OpenSSL's
// headers (so that the Pool's headers stay free of them): here both are included,
// which fails to compile if the declarations ever differ from OpenSSL's, and the
// digest is checked against RFC 4231.
#include <catch2/catch.hpp>

#include <openssl/hmac.h>

#include <mproc/detail/hmac.hpp>

#include <string>

TEST_CASE("hmac_sha256 gives RFC 4231's digests", "[hmac]") {
  // Test case 2: key "Jefe".
  CHECK(mproc::detail::hex(mproc::detail::hmac_sha256("Jefe", "what do ya want for nothing?")) ==
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  // Test case 1: 20 bytes of 0x0b.
  CHECK(mproc::detail::hex(mproc::detail::hmac_sha256(std::string(20, '\x0b'), "Hi There")) ==
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
  // An empty key and message still give a full 32-byte digest.
  CHECK(mproc::detail::hmac_sha256("", "").size() == 32);
}

TEST_CASE("constant_time_equal compares whole strings", "[hmac]") {
  using mproc::detail::constant_time_equal;
  CHECK(constant_time_equal("abc", "abc"));
  CHECK_FALSE(constant_time_equal("abc", "abd"));
  CHECK_FALSE(constant_time_equal("abc", "ab"));
  CHECK(constant_time_equal("", ""));
}
