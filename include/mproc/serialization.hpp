/// \file
/// The wire format. Values cross process boundaries as bytes:
///  - trivially copyable values, and contiguous ranges of them, are copied with memcpy
///    (a trivially copyable type that also has serialize() is copied too: memcpy wins);
///  - standard containers, strings, pairs, tuples, optionals, variants, durations and
///    paths are encoded element by element (length prefixed); so are bool, optional and
///    variant even where trivially copyable, because not every byte pattern is valid;
///  - a type with `auto mproc_fields() { return std::tie(a, b); }` is encoded as that tuple;
///  - any other type with a Boost.Serialization serialize() goes through a binary archive.
/// Decoding treats the bytes as untrusted: every length is checked against what is left
/// before it is used, so corrupt input raises serialization_error and never reads out of
/// bounds or allocates more than a small multiple of the input. Messages (Pipe, Queue)
/// add an 8-byte type tag so that a recv<T> of the wrong type is reported with both type
/// names.
///
/// Boost archives are read by bounded_iarchive, which checks collection counts, string
/// lengths, bools, class ids and pointer back-references before Boost acts on them.
/// What remains trusted there: a user's own serialize()/load_construct_data code (it sees
/// whatever values the bytes hold), raw pointers loaded from an archive (they own
/// nothing here; a user type that deletes them must trust its input), and
/// a collection count within bounds times a large element type (bounded by 64 Ki extra
/// elements; an allocation failure is reported as serialization_error). Raw bytes of
/// trivially copyable user structs are taken as they come (a bool member may hold 2).
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <streambuf>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

#include <cxxabi.h>
#include <pthread.h>

#include <boost/archive/binary_iarchive.hpp>
#include <boost/mpl/bool.hpp>
#include <boost/archive/binary_oarchive.hpp>
#include <boost/archive/detail/register_archive.hpp>
#include <boost/archive/impl/archive_serializer_map.ipp>
#include <boost/archive/impl/basic_binary_iarchive.ipp>
#include <boost/archive/impl/basic_binary_iprimitive.ipp>
#include <boost/archive/impl/basic_binary_oarchive.ipp>
#include <boost/archive/impl/basic_binary_oprimitive.ipp>
#include <boost/serialization/collection_size_type.hpp>
#include <boost/serialization/void_cast.hpp>
#include <boost/serialization/map.hpp>
#include <boost/serialization/set.hpp>
#include <boost/serialization/string.hpp>
#include <boost/serialization/utility.hpp>
#include <boost/serialization/vector.hpp>

#include "detail/posix/fork_hooks.hpp"
#include "errors.hpp"

namespace mproc {

namespace detail {

inline void replace_all(std::string& s, std::string_view from, std::string_view to) {
  for (std::size_t i = s.find(from); i != std::string::npos; i = s.find(from, i + to.size()))
    s.replace(i, from.size(), to);
}

/// Shortens a demangled name the way people write it: std::string, std::vector<int>,
/// std::map<std::string, int>, std::chrono::milliseconds.
inline std::string readable_type_name(std::string s) {
  replace_all(s, "std::__cxx11::", "std::");
  replace_all(s, "std::filesystem::__cxx11::", "std::filesystem::");
  replace_all(s, "std::basic_string<char, std::char_traits<char>, std::allocator<char> >",
              "std::string");
  replace_all(s, "std::basic_string_view<char, std::char_traits<char> >", "std::string_view");
  // Drop default template arguments: allocators, comparators, hashers, traits.
  for (std::string_view arg : {", std::allocator<", ", std::less<", ", std::hash<",
                               ", std::equal_to<", ", std::char_traits<"}) {
    for (std::size_t i = s.find(arg); i != std::string::npos; i = s.find(arg, i)) {
      std::size_t j = i + arg.size();
      int depth = 1;
      while (j < s.size() && depth) depth += s[j] == '<' ? 1 : s[j] == '>' ? -1 : 0, ++j;
      s.erase(i, j - i);
    }
  }
  replace_all(s, " >", ">");
  static constexpr std::pair<std::string_view, std::string_view> durations[] = {
      {"std::chrono::duration<long, std::ratio<1l, 1000000000l>>", "std::chrono::nanoseconds"},
      {"std::chrono::duration<long, std::ratio<1l, 1000000l>>", "std::chrono::microseconds"},
      {"std::chrono::duration<long, std::ratio<1l, 1000l>>", "std::chrono::milliseconds"},
      {"std::chrono::duration<long, std::ratio<1l, 1l>>", "std::chrono::seconds"},
      {"std::chrono::duration<long, std::ratio<60l, 1l>>", "std::chrono::minutes"},
      {"std::chrono::duration<long, std::ratio<3600l, 1l>>", "std::chrono::hours"},
      {"std::ratio<1l, 1l>", "std::ratio<1>"},
  };
  for (auto [from, to] : durations) replace_all(s, from, to);
  return s;
}

inline std::string demangled_name(const std::type_info& ti) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> p(
      abi::__cxa_demangle(ti.name(), nullptr, nullptr, &status), std::free);
  return status == 0 && p ? readable_type_name(p.get()) : std::string(ti.name());
}

}  // namespace detail

/// Readable name of a type, for messages (computed once per type).
template <class T>
std::string type_name() {
  static const std::string name = detail::demangled_name(typeid(T));
  return name;
}

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

template <class T>
concept boost_member_serializable = requires(T& t, boost::archive::binary_oarchive& ar) {
  t.serialize(ar, 0u);
};
template <class T>
concept boost_free_serializable = requires(T& t, boost::archive::binary_oarchive& ar) {
  serialize(ar, t, 0u);  // found by ADL in the user's namespace
};
template <class T>
concept boost_serializable = boost_member_serializable<T> || boost_free_serializable<T>;

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
                "ar, unsigned) { ar & field1 & field2; }`.");
}

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

// streambuf adapters for Boost archives
class vector_streambuf : public std::streambuf {
 public:
  explicit vector_streambuf(std::vector<std::byte>& v) : v_(v) {}

 protected:
  std::streamsize xsputn(const char* s, std::streamsize n) override {
    auto old = v_.size();
    v_.resize(old + std::size_t(n));
    std::memcpy(v_.data() + old, s, std::size_t(n));
    return n;
  }
  int_type overflow(int_type c) override {
    if (c != traits_type::eof()) v_.push_back(std::byte(traits_type::to_char_type(c)));
    return traits_type::not_eof(c);
  }

 private:
  std::vector<std::byte>& v_;
};
class span_streambuf : public std::streambuf {
 public:
  span_streambuf(const std::byte* p, std::size_t n) {
    char* b = const_cast<char*>(reinterpret_cast<const char*>(p));
    setg(b, b, b + n);
  }
};

inline constexpr unsigned boost_archive_flags =
    boost::archive::no_header | boost::archive::no_codecvt | boost::archive::no_tracking;

/// The lowest stack address an archive may nest down to on this thread: the stack's
/// end plus a reserve for one more level, the user's own serialize() and unwinding.
/// 0 when the stack is unknown (then no limit applies).
inline std::uintptr_t compute_archive_stack_floor() noexcept {
  pthread_attr_t attr;
  if (::pthread_getattr_np(::pthread_self(), &attr) != 0) return 0;
  void* low = nullptr;
  std::size_t size = 0;
  const int rc = ::pthread_attr_getstack(&attr, &low, &size);
  ::pthread_attr_destroy(&attr);
  if (rc != 0 || low == nullptr) return 0;
  const std::size_t reserve =
      std::clamp<std::size_t>(size / 8, std::size_t(32) << 10, std::size_t(256) << 10);
  return reinterpret_cast<std::uintptr_t>(low) + std::min(reserve, size / 2);
}
inline constexpr std::uintptr_t archive_stack_floor_unknown = UINTPTR_MAX;
/// Per thread, computed on first use (for the main thread pthread_getattr_np reads
/// /proc/self/maps). Forgotten in a forked child, whose main stack may be allowed to
/// grow further than its parent's thread was (forked while RLIMIT_STACK was raised).
inline std::uintptr_t& archive_stack_floor_slot() noexcept {
  static thread_local std::uintptr_t floor = archive_stack_floor_unknown;
  return floor;
}
inline void forget_archive_stack_floor() noexcept {
  archive_stack_floor_slot() = archive_stack_floor_unknown;
}
inline const int archive_stack_floor_fork_hook =
    set_fork_hook(fork_hook_slot::archive_stack, {.child = &forget_archive_stack_floor});
inline std::uintptr_t archive_stack_floor() noexcept {
  std::uintptr_t& floor = archive_stack_floor_slot();
  if (floor == archive_stack_floor_unknown) floor = compute_archive_stack_floor();
  return floor;
}

/// True when the caller's frame is below archive_stack_floor(): one more nesting level
/// could run this thread out of stack.
inline bool archive_stack_exhausted() noexcept {
  return reinterpret_cast<std::uintptr_t>(__builtin_frame_address(0)) < archive_stack_floor();
}

/// Reads Boost binary archives written by binary_oarchive (same layout), treating them as
/// untrusted: collection counts and string lengths are checked against the bytes left
/// before any container is sized (Boost's own loaders reserve/resize to the count they
/// read), a bool that is neither 0 nor 1 raises instead of asserting, class ids must be
/// ones Boost can index, and pointer back-references must be ones the loading pointer
/// can share. Nesting is bounded by the stack of the thread that decodes: an archive
/// that would nest deeper than this thread's stack allows (a long chain of nested
/// objects or pointers, which a sender with a larger stack could write) is refused
/// before the stack runs out. Everything it refuses is a serialization_error.
class bounded_iarchive
    : public boost::archive::binary_iarchive_impl<bounded_iarchive, char, std::char_traits<char>> {
  using base = boost::archive::binary_iarchive_impl<bounded_iarchive, char, std::char_traits<char>>;
  using primitive = boost::archive::basic_binary_iprimitive<bounded_iarchive, char,
                                                            std::char_traits<char>>;
  friend class boost::archive::detail::interface_iarchive<bounded_iarchive>;
  friend class boost::archive::basic_binary_iarchive<bounded_iarchive>;
  friend class boost::archive::load_access;

  enum class owner : std::uint8_t { raw, unique, shared };
  struct pointer_frame {
    bool new_class;      // the class id read is a new one, registered by load_pointer
    bool loaded_object;  // the pointee was read (a fresh object, not a back-reference)
    owner who;           // the kind of pointer being loaded
    std::size_t object_depth;
    const boost::archive::detail::basic_pointer_iserializer* bpis;  // what the caller expects
    const boost::archive::detail::basic_pointer_iserializer* (*finder)(
        const boost::serialization::extended_type_info&);
  };
  struct pointee {
    owner who;     // which kind of pointer owns it
    bool aliased;  // a back-reference to it was handed out
    const boost::archive::detail::basic_iserializer* serializer;  // destroys it
  };

 public:
  bounded_iarchive(std::streambuf& sb, unsigned flags) : base(sb, flags) { init(flags); }

  // Public because Boost's own templates call these through the most derived type.
  // Elements that archive to nothing (empty classes) are legitimate, so a count may
  // exceed the bytes left by this much; the waste a lying count can cause stays small.
  static constexpr std::uint64_t slack = 1u << 16;

  std::uint64_t bytes_left() const {
    auto n = this->m_sb.in_avail();
    return n > 0 ? std::uint64_t(n) : 0;
  }
  void check_count(std::uint64_t n, std::uint64_t per_element_min, const char* what) const {
    std::uint64_t left = bytes_left();
    std::uint64_t cap = per_element_min ? left / per_element_min : left + slack;
    if (n > cap)
      throw serialization_error(std::string("corrupt archive: ") + what + " claims " +
                                std::to_string(n) + " elements, " + std::to_string(left) +
                                " bytes left");
  }

  template <class T>
  void load_override(T& t) {
    base::load_override(t);
  }
  void load_override(boost::serialization::collection_size_type& t) {
    base::load_override(t);
    check_count(std::uint64_t(std::size_t(t)), 0, "collection");
  }

  // Class ids. Boost indexes its class table with the id read from the stream and only
  // asserts (debug builds) that a new id is the next one, so a corrupt id reads and
  // writes out of bounds. The table is mirrored here: every class registration reaches
  // the archive through load_object, register_basic_serializer or load_pointer.
  void load_override(boost::archive::class_id_type& t) {
    base::load_override(t);
    const int id = static_cast<int_least16_t>(t);
    if (id == -1) return;  // null pointer
    const std::size_t known = classes_.size() + pending_new_classes_;
    if (id < 0 || std::size_t(id) > known)
      throw serialization_error("corrupt archive: class id " + std::to_string(id) + ", " +
                                std::to_string(known) + " classes known");
    if (std::size_t(id) == known) {
      // Only a pointer to a polymorphic class can introduce a class, and only one not yet
      // registered (checked once its name is read): Boost would otherwise register an
      // existing class under the new id and index past the end of its table.
      const bool may_be_new = !pointer_frames_.empty() && !pointer_frames_.back().new_class &&
                              (pointer_frames_.back().bpis == nullptr ||
                               pointer_frames_.back().bpis->get_basic_serializer().is_polymorphic());
      if (!may_be_new)
        throw serialization_error("corrupt archive: unexpected new class id " +
                                  std::to_string(id));
      pointer_frames_.back().new_class = true;  // load_pointer will register it
      ++pending_new_classes_;
    }
  }
  void load_override(boost::archive::class_name_type& t) {
    base::load_override(t);
    if (pointer_frames_.empty() || !pointer_frames_.back().new_class) return;
    const auto* eti = boost::serialization::extended_type_info::find(static_cast<char*>(t));
    if (eti == nullptr) return;  // Boost reports the unregistered class itself
    const auto* found = pointer_frames_.back().finder(*eti);
    if (found && known_class(&found->get_basic_serializer()))
      throw serialization_error("corrupt archive: new class id for a known class");
  }
  /// Every nesting level goes through load_object or load_pointer, so checking the
  /// stack there bounds the recursion, whatever the user's types look like.
  static void check_stack() {
    if (archive_stack_exhausted())
      throw serialization_error(
          "corrupt or hostile archive: nested deeper than this thread's stack allows "
          "(decode it on a thread with a larger stack if it is legitimate)");
  }
  void load_object(void* t, const boost::archive::detail::basic_iserializer& bis) {
    add_class(&bis);
    if (!pointer_frames_.empty() && !pointer_frames_.back().loaded_object &&
        pointer_frames_.back().object_depth == objects_.size()) {
      // The pointee is being read: a fresh object. Known from now on, so pointers inside
      // it may refer back to it (a child's raw pointer to its parent).
      pointer_frames_.back().loaded_object = true;
      loaded_by_pointer_[t] = {pointer_frames_.back().who, false, &bis};
    }
    // Only now: Boost has already constructed a pointee, and a refusal must find it
    // recorded above for discard_partial_pointee to free it.
    check_stack();
    objects_.push_back(&bis);
    boost::archive::detail::basic_iarchive::load_object(t, bis);
    objects_.pop_back();
  }
  void register_basic_serializer(const boost::archive::detail::basic_iserializer& bis) {
    add_class(&bis);
    boost::archive::detail::basic_iarchive::register_basic_serializer(bis);
  }

  // Pointers. Boost reads "same object as before" back-references from the stream and
  // hands the earlier address to whatever smart pointer is loading, so a corrupt stream
  // could make a unique_ptr and a shared_ptr (or two unique_ptrs) own one object.
  owner enclosing_owner() const {
    if (objects_.empty()) return owner::raw;
    std::string_view name = objects_.back()->get_debug_info();
    if (name.starts_with("St10unique_ptr")) return owner::unique;
    if (name.starts_with("St10shared_ptr") || name.starts_with("N5boost10shared_ptr"))
      return owner::shared;
    return owner::raw;
  }
  const boost::archive::detail::basic_pointer_iserializer* load_pointer(
      void*& t, const boost::archive::detail::basic_pointer_iserializer* bpis,
      const boost::archive::detail::basic_pointer_iserializer* (*finder)(
          const boost::serialization::extended_type_info&)) {
    check_stack();
    pointer_frames_.push_back({false, false, enclosing_owner(), objects_.size(), bpis, finder});
    const boost::archive::detail::basic_pointer_iserializer* result = nullptr;
    try {
      result = boost::archive::detail::basic_iarchive::load_pointer(t, bpis, finder);
    } catch (...) {
      discard_partial_pointee(t);
      throw;
    }
    const pointer_frame frame = pointer_frames_.back();
    pointer_frames_.pop_back();
    if (frame.new_class) {
      add_class(&result->get_basic_serializer());
      --pending_new_classes_;
    }
    if (t == nullptr) return result;
    if (frame.loaded_object) {
      // A fresh object of the class the stream names. Boost converts it to the pointer's
      // type next and throws when the classes are unrelated, leaking the object: refuse
      // it here instead, and free it.
      if (bpis != nullptr && result != bpis &&
          boost::serialization::void_upcast(result->get_eti(), bpis->get_eti(), t) == nullptr) {
        auto it = loaded_by_pointer_.find(t);
        const bool aliased = it != loaded_by_pointer_.end() && it->second.aliased;
        if (it != loaded_by_pointer_.end()) loaded_by_pointer_.erase(it);
        if (!aliased) result->get_basic_serializer().destroy(t);  // else a pointer in it owns it
        t = nullptr;
        throw serialization_error("corrupt archive: a pointer names an unrelated class");
      }
      return result;
    }
    // A back-reference to an object read earlier through a pointer, which must be of the
    // class the stream claims (else a pointer of one type would point at another).
    // Raw pointers own nothing and may refer to any such object (a child's pointer to
    // its parent). A unique_ptr never shares. A shared_ptr may join other shared_ptrs or
    // adopt an object only raw pointers refer to, never one a unique_ptr owns. Objects
    // read as members (not through a pointer) cannot be pointed to: their addresses are
    // not tracked here.
    const owner who = frame.who;
    auto it = loaded_by_pointer_.find(t);
    const bool ok = it != loaded_by_pointer_.end() &&
                    it->second.serializer == &result->get_basic_serializer() &&
                    (who == owner::raw || (who == owner::shared && it->second.who != owner::unique));
    if (!ok) {
      t = nullptr;  // never hand the alias to the pointer being loaded
      throw serialization_error(
          "corrupt archive: a pointer refers back to an object it cannot share");
    }
    if (who == owner::raw) return result;
    it->second.who = owner::shared;
    it->second.aliased = true;
    return result;
  }

  // Boost leaks a pointee whose own load fails (it is already constructed but owned by
  // nobody). Destroy it, unless a pointer inside it already refers back to it.
  void discard_partial_pointee(void*& t) noexcept {
    const pointer_frame frame = pointer_frames_.back();
    pointer_frames_.pop_back();
    if (!frame.loaded_object || t == nullptr) return;
    auto it = loaded_by_pointer_.find(t);
    if (it == loaded_by_pointer_.end() || it->second.aliased) return;
    const auto* serializer = it->second.serializer;
    loaded_by_pointer_.erase(it);
    serializer->destroy(t);
    t = nullptr;
  }

  using primitive::load;
  void load(bool& t) {
    unsigned char raw = 0;
    this->load_binary(&raw, 1);
    if (raw > 1) throw serialization_error("corrupt archive: invalid bool");
    t = raw != 0;
  }
  void load(std::string& s) {
    std::uint64_t n = 0;
    this->load_binary(&n, sizeof n);  // binary_oarchive writes string lengths as size_t
    check_count(n, 1, "string");
    s.resize(std::size_t(n));
    if (n) this->load_binary(s.data(), std::size_t(n));
  }
  void load(std::wstring& s) {
    std::uint64_t n = 0;
    this->load_binary(&n, sizeof n);
    check_count(n, sizeof(wchar_t), "wstring");
    s.resize(std::size_t(n));
    if (n) this->load_binary(s.data(), std::size_t(n) * sizeof(wchar_t));
  }
  // Raw char*/wchar_t* targets have no size: a hostile length would overrun them.
  [[noreturn]] void load(char*) {
    throw serialization_error("mproc does not load raw char* strings from archives");
  }
  [[noreturn]] void load(wchar_t*) {
    throw serialization_error("mproc does not load raw wchar_t* strings from archives");
  }

 private:
  // Registered classes: a handful per archive, so a vector beats a set.
  std::vector<const boost::archive::detail::basic_iserializer*> classes_;
  bool known_class(const boost::archive::detail::basic_iserializer* c) const {
    return std::find(classes_.begin(), classes_.end(), c) != classes_.end();
  }
  void add_class(const boost::archive::detail::basic_iserializer* c) {
    if (!known_class(c)) classes_.push_back(c);
  }
  std::vector<pointer_frame> pointer_frames_;  // one per nested load_pointer
  std::size_t pending_new_classes_ = 0;
  std::vector<const boost::archive::detail::basic_iserializer*> objects_;  // being loaded
  std::map<const void*, pointee> loaded_by_pointer_;

};

/// Writes exactly what binary_oarchive writes (bounded_iarchive reads it), with two
/// checks Boost does not make:
///  - Nesting is bounded by the writing thread's stack, as bounded_iarchive bounds
///    reading: a value too deep to encode raises serialization_error instead of
///    overflowing the stack (in a pool worker, the task fails; the worker lives).
///  - Tracking stays what the stream announced. Boost tracks a class (writes object
///    ids for it) once the class is serialized through a pointer anywhere in the
///    program, which it learns from whether that class's pointer serializer singleton
///    exists yet. The singletons are built during static initialisation, so an
///    archive written before that finishes (a spawned child entered through
///    mproc::init from a static initializer runs its tasks there) can announce a class
///    as untracked, build its pointer serializer at the first pointer to it, and go
///    on writing object ids the reader does not expect: the stream is corrupt (an
///    "unregistered class" or worse, in a reader that knows nothing of this).
///    tracking_changed() tells; boost_save then archives the value again, now
///    consistently. A class only ever turns tracked, so this happens at most once per
///    class and process. (A class without class information,
///    BOOST_CLASS_IMPLEMENTATION(T, object_serializable), has no preamble: its reader
///    goes by its own singletons, which can still disagree if one side ran early.)
class bounded_oarchive
    : public boost::archive::binary_oarchive_impl<bounded_oarchive, char, std::char_traits<char>> {
  using base = boost::archive::binary_oarchive_impl<bounded_oarchive, char, std::char_traits<char>>;
  friend class boost::archive::detail::interface_oarchive<bounded_oarchive>;
  friend class boost::archive::basic_binary_oarchive<bounded_oarchive>;
  friend class boost::archive::save_access;

 public:
  bounded_oarchive(std::streambuf& sb, unsigned flags) : base(sb, flags) { init(flags); }

  // Public because Boost's own templates call these through the most derived type.
  void save_object(const void* x, const boost::archive::detail::basic_oserializer& bos) {
    check_stack();
    note_class(bos);
    boost::archive::detail::basic_oarchive::save_object(x, bos);
  }
  void save_pointer(const void* t, const boost::archive::detail::basic_pointer_oserializer* bpos) {
    check_stack();
    // Boost's code path for an abstract class passes null where it can never run.
    if (bpos) note_class(bpos->get_basic_serializer());
    boost::archive::detail::basic_oarchive::save_pointer(t, bpos);
  }

  /// A class this archive wrote turned tracked while it was written (its bytes cannot
  /// be read back). Valid after the archive finished or threw.
  bool tracking_changed() const {
    for (const auto& [c, tracked] : first_tracking_)
      if (!tracked && c->tracking(this->get_flags())) return true;
    return false;
  }

 private:
  static void check_stack() {
    if (archive_stack_exhausted())
      throw serialization_error(
          "cannot encode: the value is nested deeper than this thread's stack allows "
          "(encode it on a thread with a larger stack if it is legitimate)");
  }
  // Every object and pointer passes here: the first answer for a class is the one its
  // preamble went by. Runs of one class (a vector's elements) skip the lookup.
  void note_class(const boost::archive::detail::basic_oserializer& bos) {
    if (&bos == last_) return;
    last_ = &bos;
    for (const auto& e : first_tracking_)
      if (e.first == &bos) return;
    first_tracking_.emplace_back(&bos, bos.tracking(this->get_flags()));
  }
  const boost::archive::detail::basic_oserializer* last_ = nullptr;
  // A handful of classes per archive: a vector beats a map.
  std::vector<std::pair<const boost::archive::detail::basic_oserializer*, bool>> first_tracking_;
};

}  // namespace detail
}  // namespace mproc

// Same wire layout as binary_[io]archive: arrays of bitwise types go in one block.
BOOST_SERIALIZATION_USE_ARRAY_OPTIMIZATION(mproc::detail::bounded_iarchive)
BOOST_SERIALIZATION_USE_ARRAY_OPTIMIZATION(mproc::detail::bounded_oarchive)
// Lets serialize() code that registers or exports polymorphic types see the archives.
BOOST_SERIALIZATION_REGISTER_ARCHIVE(mproc::detail::bounded_iarchive)
BOOST_SERIALIZATION_REGISTER_ARCHIVE(mproc::detail::bounded_oarchive)

// Boost.Multiprecision's cpp_int chooses its layout by archive type: raw limbs for
// boost::archive::binary_[io]archive, a byte-by-byte layout for any other. Values are
// written with bounded_oarchive and read with bounded_iarchive (binary_[io]archive's
// layout), so cpp_int must know that both are binary too. Declaring the
// trait here (its definition, if the program uses cpp_int, comes later) keeps cpp_int
// values intact without every program including Boost.Multiprecision.
namespace boost::serialization::cpp_int_detail {
template <class T>
struct is_binary_archive;
template <>
struct is_binary_archive<mproc::detail::bounded_iarchive> : public boost::mpl::true_ {};
template <>
struct is_binary_archive<mproc::detail::bounded_oarchive> : public boost::mpl::true_ {};
}  // namespace boost::serialization::cpp_int_detail

namespace mproc {
namespace detail {

template <class T>
void boost_save(const T& v, std::vector<std::byte>& out) {
  const std::size_t start = out.size();
  // Again while a class turned tracked mid-archive (see bounded_oarchive): each time
  // settles a class for good, so this ends.
  while (true) {
    bool again;
    {
      vector_streambuf sb(out);
      bounded_oarchive ar(sb, boost_archive_flags);
      try {
        ar << v;
      } catch (const abi::__forced_unwind&) {
        throw;
      } catch (...) {
        if (!ar.tracking_changed()) throw;  // else an error of the inconsistent stream
      }
      again = ar.tracking_changed();
    }
    if (!again) return;
    out.resize(start);
  }
}

/// Boost archives cannot be sized without running them. The sizing pass keeps each
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
    auto& s = scratch();
    if constexpr (std::is_same_v<W, size_counter>) {
      auto& bytes = s.add(std::addressof(v));
      boost_save(v, bytes);
      put_u64(w, bytes.size());
      w.put(nullptr, bytes.size());
    } else {
      // Only the write pass of encode_to follows its own sizing pass; other writers
      // (growable buffers) always archive afresh.
      if (std::is_same_v<W, byte_writer> && s.next < s.used &&
          s.entries[s.next].value == std::addressof(v)) {
        const auto& bytes = s.entries[s.next++].bytes;
        put_u64(w, bytes.size());
        w.put(bytes.data(), bytes.size());
      } else {
        std::vector<std::byte> bytes;
        boost_save(v, bytes);
        put_u64(w, bytes.size());
        w.put(bytes.data(), bytes.size());
      }
    }
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
    auto n = r.get_count(1, "archive");
    span_streambuf sb(r.p, n);
    try {
      bounded_iarchive ar(sb, boost_archive_flags);
      ar >> v;
    } catch (const serialization_error&) {
      throw;
    } catch (const std::bad_alloc&) {
      // Residual risk: a count within the bounds above can still multiply into a large
      // allocation for big element types; it fails here instead of escaping.
      throw serialization_error("corrupt archive for " + type_name<U>() +
                                ": allocation failed (implausible size)");
    } catch (const std::exception& e) {
      throw serialization_error(std::string("corrupt archive for ") + type_name<U>() + ": " +
                                e.what());
    }
    r.p += n;
  }
}

// ---------------------------------------------------------------- type tags

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

/// Names of every type tag this program image can send, so a mismatched message is
/// reported by name even when the receiver never asked for that type.
inline std::map<std::uint64_t, std::string>& tag_names() {
  static std::map<std::uint64_t, std::string> m;
  return m;
}
inline std::mutex& tag_names_mutex() {
  static std::mutex m;
  return m;
}

template <class T>
struct type_tag {
  static std::uint64_t compute() {
    std::uint64_t h = fnv1a(typeid(T).name());
    std::lock_guard g(tag_names_mutex());
    tag_names().emplace(h, type_name<T>());
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

inline std::string tag_name(std::uint64_t tag) {
  // Only ever contended at start-up. A child forked while another thread held the lock
  // would wait forever on it, so give up after a while and report the tag by number.
  std::unique_lock g(tag_names_mutex(), std::defer_lock);
  for (int attempt = 0; attempt < 10000 && !g.try_lock(); ++attempt) std::this_thread::yield();
  if (g.owns_lock()) {
    auto it = tag_names().find(tag);
    if (it != tag_names().end()) return it->second;
  }
  char buf[40];
  std::snprintf(buf, sizeof buf, "<unknown type 0x%016llx>", static_cast<unsigned long long>(tag));
  return buf;
}

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

