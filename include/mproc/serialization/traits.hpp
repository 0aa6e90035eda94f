/// \file
/// What can cross a process boundary: the compile-time classification the wire format
/// goes by (memcpy fast path, standard types, mproc_fields(), Boost serialize()).
/// Part of <mproc/serialization.hpp>; needs no Boost header.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

namespace mproc {
namespace detail {

template <class T, template <class...> class Tmpl>
inline constexpr bool is_specialization_v = false;
template <template <class...> class Tmpl, class... A>
inline constexpr bool is_specialization_v<Tmpl<A...>, Tmpl> = true;

template <class T>
inline constexpr bool is_std_array_v = false;
template <class T, std::size_t N>
inline constexpr bool is_std_array_v<std::array<T, N>> = true;

template <class T>
inline constexpr bool is_duration_v = false;
template <class R, class P>
inline constexpr bool is_duration_v<std::chrono::duration<R, P>> = true;

template <class T>
concept map_like = is_specialization_v<T, std::map> || is_specialization_v<T, std::unordered_map> ||
                   is_specialization_v<T, std::multimap> ||
                   is_specialization_v<T, std::unordered_multimap>;
template <class T>
concept set_like = is_specialization_v<T, std::set> || is_specialization_v<T, std::unordered_set> ||
                   is_specialization_v<T, std::multiset> ||
                   is_specialization_v<T, std::unordered_multiset>;

/// Stands in for a Boost archive when asking whether a type has a Boost.Serialization
/// serialize(), so that asking needs none of Boost's archive headers: a serialize()
/// template accepts it as it accepts any archive. Never defined, never run.
struct serialize_probe_archive {
  using is_saving = std::true_type;
  using is_loading = std::false_type;
  template <class T>
  serialize_probe_archive& operator&(const T&);
  template <class T>
  serialize_probe_archive& operator<<(const T&);
  template <class T>
  serialize_probe_archive& operator>>(T&);
  template <class T>
  void register_type(const T* = nullptr);
  unsigned get_library_version() const;
};

/// A type with a Boost.Serialization serialize() member.
template <class T>
concept boost_member_serializable = requires(T& t, serialize_probe_archive& ar) {
  t.serialize(ar, 0u);
};
/// A type with a free Boost.Serialization serialize(Archive&, T&, unsigned).
template <class T>
concept boost_free_serializable = requires(T& t, serialize_probe_archive& ar) {
  serialize(ar, t, 0u);  // found by ADL in the user's namespace
};
/// Sent through a Boost binary archive (see <mproc/serialization/boost.hpp>).
template <class T>
concept boost_serializable = boost_member_serializable<T> || boost_free_serializable<T>;

template <class T>
inline constexpr bool dependent_false_v = false;

/// Encodes and decodes a type with a Boost serialize(). Only declared here: the Boost
/// bridge, <mproc/serialization/boost.hpp>, defines it (and includes Boost's archives),
/// so that a program pays for the archives only where it sends such a type. Without
/// the bridge, sending one stops at this static_assert.
template <class T>
struct boost_codec {
  static_assert(dependent_false_v<T>,
                "mproc: this type is sent through its Boost.Serialization serialize(); "
                "#include <mproc/serialization/boost.hpp> to send it (Boost's archives are "
                "compiled only in translation units that include that header)");
  template <class W>
  static void save(W&, const T&) {}
  template <class R>
  static void load(R&, T&) {}
};

// A type can list its members for the wire format without Boost:
//   auto mproc_fields() { return std::tie(a, b, c); }
// It is then encoded as that tuple (no archive, no allocation beyond its members).
template <class T>
concept has_mproc_fields = requires(T& t) {
  { t.mproc_fields() };
};
template <class T>
using mproc_fields_t = decltype(std::declval<T&>().mproc_fields());

// What a value is sent as: C strings become std::string, recursively inside tuples,
// pairs and vectors, so send(std::tuple{"add", 1, 2}) arrives as tuple<string, int, int>.
template <class T>
struct wire {
  using type = T;
};
template <class T>
using wire_t = typename wire<std::remove_cvref_t<T>>::type;
template <>
struct wire<const char*> {
  using type = std::string;
};
template <>
struct wire<char*> {
  using type = std::string;
};
template <std::size_t N>
struct wire<char[N]> {
  using type = std::string;
};
template <>
struct wire<std::string_view> {
  using type = std::string;
};
template <class... A>
struct wire<std::tuple<A...>> {
  using type = std::tuple<wire_t<A>...>;
};
template <class A, class B>
struct wire<std::pair<A, B>> {
  using type = std::pair<wire_t<A>, wire_t<B>>;
};
template <class T, class Al>
struct wire<std::vector<T, Al>> {
  using type = std::vector<wire_t<T>>;
};
template <class T, std::size_t N>
struct wire<std::array<T, N>> {
  using type = std::array<wire_t<T>, N>;
};
template <class T>
struct wire<std::optional<T>> {
  using type = std::optional<wire_t<T>>;
};

template <class T>
concept c_string = std::is_same_v<std::remove_cvref_t<T>, const char*> ||
                   std::is_same_v<std::remove_cvref_t<T>, char*> ||
                   std::is_same_v<std::remove_cvref_t<T>, std::string_view> ||
                   (std::is_array_v<std::remove_cvref_t<T>> &&
                    std::is_same_v<std::remove_extent_t<std::remove_cvref_t<T>>, char>);

// Standard types that are trivially copyable but whose object representation has
// invariants (bool is 0 or 1; optional's flag; variant's index): copying untrusted bytes
// into them would be undefined behaviour, so they are encoded field by field instead.
template <class T>
inline constexpr bool has_invalid_representations_v =
    std::is_same_v<T, bool> || is_specialization_v<T, std::optional> ||
    is_specialization_v<T, std::variant>;
template <class T, std::size_t N>
inline constexpr bool has_invalid_representations_v<std::array<T, N>> =
    has_invalid_representations_v<std::remove_cv_t<T>> || std::is_pointer_v<T>;  // C strings
template <class A, class B>
inline constexpr bool has_invalid_representations_v<std::pair<A, B>> =
    has_invalid_representations_v<std::remove_cv_t<A>> ||
    has_invalid_representations_v<std::remove_cv_t<B>>;
template <class... A>
inline constexpr bool has_invalid_representations_v<std::tuple<A...>> =
    (has_invalid_representations_v<std::remove_cv_t<A>> || ...);

/// Copied byte for byte (the fast path). A user type that is trivially copyable and also
/// has a serialize() member is copied too: its bytes are its value, and memcpy is what
/// makes it cheap. User structs are trusted to accept any bytes their sender produced
/// (a bool member of a corrupted message may hold a value other than 0 or 1).
template <class T>
concept trivially_copyable_value = std::is_trivially_copyable_v<T> && !std::is_pointer_v<T> &&
                                   !std::is_member_pointer_v<T> && !std::is_array_v<T> &&
                                   !std::is_empty_v<T> && !has_invalid_representations_v<T>;

template <class T>
struct encodable_impl;

template <class T>
concept encodable = encodable_impl<std::remove_cvref_t<T>>::value;

template <class T>
struct encodable_impl {
  static constexpr bool compute() {
    if constexpr (c_string<T>) return true;
    else if constexpr (std::is_empty_v<T> && std::is_default_constructible_v<T>) return true;
    else if constexpr (trivially_copyable_value<T> || std::is_same_v<T, bool>) return true;
    else if constexpr (std::is_same_v<T, std::string> || std::is_same_v<T, std::filesystem::path>)
      return true;
    else if constexpr (is_specialization_v<T, std::vector> || is_specialization_v<T, std::optional>)
      return encodable<typename T::value_type>;
    else if constexpr (is_std_array_v<T>) return encodable<typename T::value_type>;
    else if constexpr (map_like<T>)
      return encodable<typename T::key_type> && encodable<typename T::mapped_type>;
    else if constexpr (set_like<T>) return encodable<typename T::key_type>;
    else if constexpr (is_specialization_v<T, std::pair>)
      return encodable<typename T::first_type> && encodable<typename T::second_type>;
    else if constexpr (is_specialization_v<T, std::tuple> || is_specialization_v<T, std::variant>)
      return []<class... A>(std::type_identity<std::tuple<A...>>) {
        return (encodable<A> && ...);
      }(std::type_identity<decltype(as_tuple_types(static_cast<T*>(nullptr)))>{});
    else if constexpr (is_duration_v<T>) return true;
    else if constexpr (has_mproc_fields<T>) return encodable<mproc_fields_t<T>>;
    else if constexpr (boost_serializable<T>) return true;
    else return false;
  }
  template <template <class...> class Tm, class... A>
  static std::tuple<A...> as_tuple_types(Tm<A...>*);
  static constexpr bool value = compute();
};

/// Helpful compile-time failure for a type that cannot cross a process boundary.
template <class T>
constexpr void require_encodable() {
  static_assert(encodable<T>,
                "mproc: this type cannot cross a process boundary. Make it trivially copyable, "
                "use standard containers of serializable types, list its members with "
                "`auto mproc_fields() { return std::tie(field1, field2); }`, or give it a "
                "Boost.Serialization member `template <class Archive> void serialize(Archive& "
                "ar, unsigned) { ar & field1 & field2; }` (and #include "
                "<mproc/serialization/boost.hpp>).");
}

}  // namespace detail
}  // namespace mproc
