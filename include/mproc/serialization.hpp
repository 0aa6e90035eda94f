/// \file
/// The wire format. Values cross process boundaries as bytes:
///  - trivially copyable values, and contiguous ranges of them, are copied with memcpy
///    (a trivially copyable type that also has serialize() is copied too: memcpy wins);
///  - standard containers, strings, pairs, tuples, optionals, variants, durations and
///    paths are encoded element by element (length prefixed); so are bool, optional and
///    variant even where trivially copyable, because not every byte pattern is valid;
///  - a type with `auto mproc_fields() { return std::tie(a, b); }` is encoded as that tuple;
///  - any other type with a Boost.Serialization serialize() goes through a binary archive,
///    in translation units that include <mproc/serialization/boost.hpp> (this header
///    includes no Boost archive: sending such a type without the bridge fails to compile
///    and says which header to include).
/// Decoding treats the bytes as untrusted: every length is checked against what is left
/// before it is used, so corrupt input raises serialization_error and never reads out of
/// bounds or allocates more than a small multiple of the input. Messages (Pipe, Queue)
/// add an 8-byte type tag so that a recv<T> of the wrong type is reported with both type
/// names.
/// Raw bytes of trivially copyable user structs are taken as they come (a bool member
/// may hold 2).
///
/// The pieces: serialization/type_name.hpp (readable names, type tags),
/// serialization/traits.hpp (what can be sent), serialization/encode.hpp and
/// serialization/decode.hpp (the wire format), serialization/boost.hpp (the opt-in
/// Boost.Serialization bridge and its hardened archives).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "errors.hpp"
#include "serialization/decode.hpp"
#include "serialization/encode.hpp"
#include "serialization/traits.hpp"
#include "serialization/type_name.hpp"

namespace mproc {
namespace detail {

inline constexpr std::size_t message_header_size = sizeof(std::uint64_t);

/// Bytes of a tagged message holding v (the value is sent as wire_t<T>).
template <class T>
std::size_t message_size(const T& v) {
  return message_header_size + encoded_size(v);
}

template <class T>
std::byte* write_message(const T& v, std::byte* out) {
  std::uint64_t tag = tag_of<wire_t<T>>();
  std::memcpy(out, &tag, sizeof tag);
  return encode_to(v, out + sizeof tag);
}

template <class T>
[[noreturn, gnu::cold, gnu::noinline]] void throw_type_mismatch(std::uint64_t tag) {
  throw serialization_error("type mismatch: expected " + type_name<T>() + ", message holds " +
                            tag_name(tag));
}

/// Checks the tag and decodes; a message of another type raises serialization_error
/// naming both types. The whole message must be consumed.
template <class T>
T read_message(std::span<const std::byte> bytes) {
  reader r{bytes.data(), bytes.data() + bytes.size()};
  std::uint64_t tag = r.get_u64("type tag");
  if (tag != tag_of<T>()) throw_type_mismatch<T>(tag);
  T v{};
  decode(r, v);
  if (r.remaining()) detail::throw_trailing<T>(r.remaining());
  return v;
}

}  // namespace detail

/// Encodes a value (no type tag) into a new buffer.
template <class T>
std::vector<std::byte> serialize(const T& v) {
  std::vector<std::byte> out(detail::encoded_size(v));
  detail::encode_to(v, out.data());
  return out;
}

/// Decodes a value written by serialize<T>; corrupt or truncated input raises
/// serialization_error.
template <class T>
T deserialize(std::span<const std::byte> bytes) {
  detail::reader r{bytes.data(), bytes.data() + bytes.size()};
  T v{};
  detail::decode(r, v);
  if (r.remaining()) detail::throw_trailing<T>(r.remaining());
  return v;
}

}  // namespace mproc

