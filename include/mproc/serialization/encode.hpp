/// \file
/// Writing the wire format: values to bytes, in two passes (size, then write in place).
/// Part of <mproc/serialization.hpp>; needs no Boost header.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "../errors.hpp"
#include "traits.hpp"

namespace mproc {
namespace detail {

// ---------------------------------------------------------------- writing

/// Counts bytes (first pass) or writes them (second pass). Encoding is two-pass so
/// that callers can reserve exactly the room a value needs (for example inside a
/// shared-memory ring) and write it there without an intermediate copy.
struct size_counter {
  std::size_t n = 0;
  void put(const void*, std::size_t len) noexcept { n += len; }
};
struct byte_writer {
  std::byte* p;
  void put(const void* src, std::size_t len) noexcept {
    if (len) std::memcpy(p, src, len);
    p += len;
  }
};
/// Appends to a growable buffer (used by the Boost archive path).
struct vector_writer {
  std::vector<std::byte>* out;
  void put(const void* src, std::size_t len) {
    auto old = out->size();
    out->resize(old + len);
    if (len) std::memcpy(out->data() + old, src, len);
  }
};


/// Boost archives (see <mproc/serialization/boost.hpp>) cannot be sized without running them. The sizing pass keeps each
/// archived value's bytes (per thread, in visiting order) so the write pass that follows
/// copies them instead of archiving again; a value the write pass finds out of step
/// (another address) is simply archived again.
struct boost_scratch {
  struct entry {
    const void* value;
    std::vector<std::byte> bytes;
  };
  std::vector<entry> entries;  // the first `used` hold this sizing pass's archives
  std::size_t used = 0;
  std::size_t next = 0;  // write pass cursor

  std::vector<std::byte>& add(const void* value) {
    if (used == entries.size()) entries.push_back({});
    entry& e = entries[used++];
    e.value = value;
    e.bytes.clear();
    return e.bytes;
  }
  void reset() noexcept {
    // Buffers are reused by the next message (no allocation per call); big ones go back.
    if (entries.size() > 64 || (!entries.empty() && entries.front().bytes.capacity() > (1u << 20)))
      std::vector<entry>().swap(entries);
    used = 0;
    next = 0;
  }
};
inline boost_scratch& scratch() {
  thread_local boost_scratch s;
  return s;
}

template <class W>
void put_u64(W& w, std::uint64_t v) {
  w.put(&v, sizeof v);
}

template <class W, class T>
void encode(W& w, const T& v);

template <class W, class T>
void encode_elements(W& w, const T& range) {
  for (const auto& e : range) encode(w, e);
}

template <class W, class T>
void encode(W& w, const T& v) {
  using U = std::remove_cvref_t<T>;
  require_encodable<U>();
  if constexpr (c_string<U>) {
    std::string_view s(v);
    put_u64(w, s.size());
    w.put(s.data(), s.size());
  } else if constexpr (std::is_empty_v<U>) {
    // nothing to send
  } else if constexpr (trivially_copyable_value<U>) {
    w.put(std::addressof(v), sizeof(U));
  } else if constexpr (std::is_same_v<U, bool>) {
    std::uint8_t x = v ? 1 : 0;
    w.put(&x, 1);
  } else if constexpr (std::is_same_v<U, std::string>) {
    put_u64(w, v.size());
    w.put(v.data(), v.size());
  } else if constexpr (std::is_same_v<U, std::filesystem::path>) {
    encode(w, v.native());
  } else if constexpr (is_specialization_v<U, std::vector>) {
    using E = typename U::value_type;
    put_u64(w, v.size());
    if constexpr (std::is_same_v<E, bool>) {
      for (bool b : v) {
        std::uint8_t x = b;
        w.put(&x, 1);
      }
    } else if constexpr (trivially_copyable_value<E>) {
      w.put(v.data(), v.size() * sizeof(E));
    } else {
      encode_elements(w, v);
    }
  } else if constexpr (is_std_array_v<U>) {
    encode_elements(w, v);
  } else if constexpr (is_specialization_v<U, std::optional>) {
    std::uint8_t has = v.has_value();
    w.put(&has, 1);
    if (has) encode(w, *v);
  } else if constexpr (map_like<U> || set_like<U>) {
    put_u64(w, v.size());
    encode_elements(w, v);
  } else if constexpr (is_specialization_v<U, std::pair>) {
    encode(w, v.first);
    encode(w, v.second);
  } else if constexpr (is_specialization_v<U, std::tuple>) {
    std::apply([&](const auto&... e) { (encode(w, e), ...); }, v);
  } else if constexpr (is_specialization_v<U, std::variant>) {
    if (v.valueless_by_exception()) throw serialization_error("cannot send a valueless variant");
    std::uint32_t idx = static_cast<std::uint32_t>(v.index());
    w.put(&idx, sizeof idx);
    std::visit([&](const auto& e) { encode(w, e); }, v);
  } else if constexpr (is_duration_v<U>) {
    auto c = v.count();
    encode(w, c);
  } else if constexpr (has_mproc_fields<U>) {
    // mproc_fields() returns references; encoding only reads through them.
    std::apply([&](const auto&... e) { (encode(w, e), ...); },
               const_cast<U&>(v).mproc_fields());
  } else if constexpr (boost_serializable<U>) {
    boost_codec<U>::save(w, v);  // defined by <mproc/serialization/boost.hpp>
  }
}

/// Exact number of bytes encode() will write for v.
template <class T>
std::size_t encoded_size(const T& v) {
  size_counter c;
  if constexpr (!trivially_copyable_value<std::remove_cvref_t<T>>) scratch().reset();
  encode(c, v);
  return c.n;
}

/// Writes v at out (which has room for encoded_size(v) bytes); returns the end.
/// Values holding Boost-archived types are archived once when encoded_size(v) was the
/// last sizing on this thread, twice otherwise; the bytes are the same either way.
template <class T>
std::byte* encode_to(const T& v, std::byte* out) {
  byte_writer w{out};
  if constexpr (trivially_copyable_value<std::remove_cvref_t<T>>) {
    encode(w, v);
  } else {
    auto& s = scratch();
    s.next = 0;
    try {
      encode(w, v);
    } catch (...) {
      s.reset();
      throw;
    }
    s.reset();
  }
  return w.p;
}

}  // namespace detail
}  // namespace mproc
