/// \file
/// Reading the wire format: bytes to values, treating the bytes as untrusted.
/// Part of <mproc/serialization.hpp>; needs no Boost header.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "../errors.hpp"
#include "traits.hpp"
#include "type_name.hpp"

namespace mproc {
namespace detail {

// ---------------------------------------------------------------- reading

// Error paths live out of line so the decoders' hot paths stay a compare and a copy.
[[noreturn, gnu::cold, gnu::noinline]] inline void throw_truncated(const char* what,
                                                                  std::size_t needed,
                                                                  std::size_t left) {
  throw serialization_error(std::string("truncated message: ") + what + " needs " +
                            std::to_string(needed) + " bytes, " + std::to_string(left) +
                            " left");
}
[[noreturn, gnu::cold, gnu::noinline]] inline void throw_bad_count(const char* what,
                                                                  std::uint64_t claimed,
                                                                  std::uint64_t cap) {
  throw serialization_error(std::string("corrupt message: ") + what + " claims " +
                            std::to_string(claimed) + " elements, at most " +
                            std::to_string(cap) + " fit in what is left");
}
[[noreturn, gnu::cold, gnu::noinline]] inline void throw_corrupt(const char* what) {
  throw serialization_error(std::string("corrupt message: ") + what);
}
template <class T>
[[noreturn, gnu::cold, gnu::noinline]] void throw_trailing(std::size_t left) {
  throw serialization_error("corrupt message: " + std::to_string(left) +
                            " trailing bytes after " + type_name<T>());
}

/// Bounds-checked cursor over untrusted bytes.
struct reader {
  const std::byte* p;
  const std::byte* end;

  [[nodiscard]] std::size_t remaining() const noexcept { return std::size_t(end - p); }
  void need(std::size_t n, const char* what) const {
    if (n > remaining()) throw_truncated(what, n, remaining());
  }
  void get(void* dst, std::size_t n, const char* what) {
    need(n, what);
    if (n) std::memcpy(dst, p, n);
    p += n;
  }
  std::uint64_t get_u64(const char* what) {
    std::uint64_t v;
    get(&v, sizeof v, what);
    return v;
  }
  /// A length prefix for `count` elements each taking at least `min_bytes`.
  std::size_t get_count(std::size_t min_bytes, const char* what) {
    std::uint64_t n = get_u64(what);
    // Elements that encode to nothing could make a tiny message claim a huge count.
    const std::uint64_t cap = min_bytes ? remaining() / min_bytes : (std::uint64_t(1) << 20);
    if (n > cap) throw_bad_count(what, n, cap);
    return static_cast<std::size_t>(n);
  }
};

/// Smallest number of bytes a value of T encodes to (bounds element counts).
template <class T>
constexpr std::size_t min_encoded_size() {
  using U = std::remove_cvref_t<T>;
  if constexpr (std::is_empty_v<U>) return 0;
  else if constexpr (trivially_copyable_value<U>) return sizeof(U);
  else if constexpr (std::is_same_v<U, bool>) return 1;
  else if constexpr (is_specialization_v<U, std::pair>)
    return min_encoded_size<typename U::first_type>() + min_encoded_size<typename U::second_type>();
  else if constexpr (is_specialization_v<U, std::tuple>)
    return []<class... A>(std::type_identity<std::tuple<A...>>) {
      return (std::size_t(0) + ... + min_encoded_size<A>());
    }(std::type_identity<U>{});
  else if constexpr (is_std_array_v<U>)
    return std::tuple_size_v<U> * min_encoded_size<typename U::value_type>();
  else if constexpr (is_specialization_v<U, std::optional>) return 1;
  else if constexpr (is_specialization_v<U, std::variant>) return 4;
  else if constexpr (is_duration_v<U>) return sizeof(typename U::rep);
  else if constexpr (has_mproc_fields<U>) return min_encoded_size<mproc_fields_t<U>>();
  else return 8;  // strings, containers and archives start with a 64-bit length
}

template <class T>
void decode(reader& r, T& v);

template <class T, std::size_t... I>
void decode_tuple(reader& r, T& t, std::index_sequence<I...>) {
  (decode(r, std::get<I>(t)), ...);
}

template <class V, std::size_t I = 0>
void decode_variant(reader& r, V& v, std::uint32_t idx) {
  if constexpr (I < std::variant_size_v<V>) {
    if (idx == I) {
      std::variant_alternative_t<I, V> alt{};
      decode(r, alt);
      v.template emplace<I>(std::move(alt));
    } else {
      decode_variant<V, I + 1>(r, v, idx);
    }
  }
}

template <class T>
void decode(reader& r, T& v) {
  using U = T;
  static_assert(!c_string<U>, "mproc: C strings and string_views are sent as std::string; "
                              "receive them as std::string");
  require_encodable<U>();
  if constexpr (std::is_empty_v<U>) {
  } else if constexpr (trivially_copyable_value<U>) {
    r.get(std::addressof(v), sizeof(U), "value");
  } else if constexpr (std::is_same_v<U, bool>) {
    // only 0 and 1 are valid object representations of bool
    std::uint8_t raw;
    r.get(&raw, 1, "bool");
    if (raw > 1) throw_corrupt("invalid bool");
    v = raw != 0;
  } else if constexpr (std::is_same_v<U, std::string>) {
    auto n = r.get_count(1, "string");
    v.assign(reinterpret_cast<const char*>(r.p), n);
    r.p += n;
  } else if constexpr (std::is_same_v<U, std::filesystem::path>) {
    std::string s;
    decode(r, s);
    v = std::move(s);
  } else if constexpr (is_specialization_v<U, std::vector>) {
    using E = typename U::value_type;
    if constexpr (std::is_same_v<E, bool>) {
      auto n = r.get_count(1, "vector<bool>");
      v.resize(n);
      for (std::size_t i = 0; i < n; ++i) {
        bool b;
        decode(r, b);
        v[i] = b;
      }
    } else if constexpr (trivially_copyable_value<E>) {
      auto n = r.get_count(sizeof(E), "vector");
      v.resize(n);
      r.get(v.data(), n * sizeof(E), "vector");
    } else {
      auto n = r.get_count(min_encoded_size<E>(), "vector");
      v.clear();
      // Reserve only what the bytes left could plausibly fill: an element may be far
      // larger in memory than its smallest encoding, and a lying count must not turn a
      // small message into a huge allocation. Past that, the vector grows as it fills.
      const std::size_t plausible = (r.remaining() + (std::size_t(1) << 20)) / sizeof(E);
      v.reserve(std::min(n, plausible));
      for (std::size_t i = 0; i < n; ++i) {
        E e{};
        decode(r, e);
        v.push_back(std::move(e));
      }
    }
  } else if constexpr (is_std_array_v<U>) {
    for (auto& e : v) decode(r, e);
  } else if constexpr (is_specialization_v<U, std::optional>) {
    std::uint8_t has;
    r.get(&has, 1, "optional");
    if (has > 1) throw_corrupt("invalid optional flag");
    if (has) {
      typename U::value_type e{};
      decode(r, e);
      v = std::move(e);
    } else {
      v.reset();
    }
  } else if constexpr (map_like<U>) {
    using K = typename U::key_type;
    using M = typename U::mapped_type;
    auto n = r.get_count(min_encoded_size<K>() + min_encoded_size<M>(), "map");
    v.clear();
    for (std::size_t i = 0; i < n; ++i) {
      K k{};
      M m{};
      decode(r, k);
      decode(r, m);
      v.emplace(std::move(k), std::move(m));
    }
  } else if constexpr (set_like<U>) {
    using K = typename U::key_type;
    auto n = r.get_count(min_encoded_size<K>(), "set");
    v.clear();
    for (std::size_t i = 0; i < n; ++i) {
      K k{};
      decode(r, k);
      v.emplace(std::move(k));
    }
  } else if constexpr (is_specialization_v<U, std::pair>) {
    decode(r, v.first);
    decode(r, v.second);
  } else if constexpr (is_specialization_v<U, std::tuple>) {
    decode_tuple(r, v, std::make_index_sequence<std::tuple_size_v<U>>{});
  } else if constexpr (is_specialization_v<U, std::variant>) {
    std::uint32_t idx;
    r.get(&idx, sizeof idx, "variant");
    if (idx >= std::variant_size_v<U>)
      throw serialization_error("corrupt message: variant index " + std::to_string(idx) +
                                " out of range");
    decode_variant(r, v, idx);
  } else if constexpr (is_duration_v<U>) {
    typename U::rep c;
    decode(r, c);
    v = U(c);
  } else if constexpr (has_mproc_fields<U>) {
    std::apply([&](auto&... e) { (decode(r, e), ...); }, v.mproc_fields());
  } else if constexpr (boost_serializable<U>) {
    boost_codec<U>::load(r, v);  // defined by <mproc/serialization/boost.hpp>
  }
}

}  // namespace detail
}  // namespace mproc
