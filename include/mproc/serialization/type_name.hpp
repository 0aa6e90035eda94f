/// \file
/// Type names for messages, and the 8-byte type tags that let a receiver name the type a
/// message holds (part of the wire format; <mproc/serialization.hpp> includes it).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <typeinfo>

#include "../version.hpp"

namespace mproc {

namespace detail {

/// Shortens a demangled name the way people write it: std::string, std::vector<int>,
/// std::map<std::string, int>, std::chrono::milliseconds.
MPROC_FUNC std::string readable_type_name(std::string s);

/// The readable name of a dynamic type (the mangled name when demangling fails).
MPROC_FUNC std::string demangled_name(const std::type_info& ti);

}  // namespace detail

/// Readable name of a type, for messages (computed once per type).
template <class T>
std::string type_name() {
  static const std::string name = detail::demangled_name(typeid(T));
  return name;
}

namespace detail {

/// 64-bit FNV-1a of the type's mangled name: stable for one program image, whichever
/// process (fork, spawn, another host running the same binary) computes it.
constexpr std::uint64_t fnv1a(std::string_view s) noexcept {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (char c : s) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ull;
  }
  return h;
}

/// Records the name of a type tag, so a mismatched message is reported by name even
/// when the receiver never asked for that type.
MPROC_FUNC void register_tag_name(std::uint64_t tag, std::string name);

template <class T>
struct type_tag {
  static std::uint64_t compute() {
    std::uint64_t h = fnv1a(typeid(T).name());
    register_tag_name(h, type_name<T>());
    return h;
  }
  // Dynamic initialisation registers the name at program start in every process, so a
  // receiver can name a type it never asked for. Reads are a plain load, no lock.
  static inline const std::uint64_t value = compute();
};

/// type_tag<T>::value, also correct when used during static initialisation (before
/// value's own initialiser has run, when it still reads zero).
template <class T>
std::uint64_t tag_of() {
  std::uint64_t v = type_tag<T>::value;
  return v ? v : type_tag<T>::compute();
}

/// The name registered for a tag, else the tag as a number.
MPROC_FUNC std::string tag_name(std::uint64_t tag);
}  // namespace detail
}  // namespace mproc

#if MPROC_HEADER_ONLY
#include "type_name_impl.hpp"
#endif
