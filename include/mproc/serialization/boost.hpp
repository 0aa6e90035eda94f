/// \file
/// The Boost.Serialization bridge: include this header in every translation unit that
/// sends a type through its Boost serialize() (member or free), or a library type that
/// is sent that way (a Manager proxy, boost::multiprecision::cpp_int). It includes
/// Boost's binary archives; <mproc/serialization.hpp> does not, so programs that send
/// only standard types, trivially copyable types and mproc_fields() types never compile
/// them. Sending a Boost-serializable type without this header fails to compile with a
/// static_assert naming it.
///
/// Boost archives are read by bounded_iarchive, which checks collection counts, string
/// lengths, bools, class ids and pointer back-references before Boost acts on them.
/// What remains trusted there: a user's own serialize()/load_construct_data code (it sees
/// whatever values the bytes hold), raw pointers loaded from an archive (they own
/// nothing here; a user type that deletes them must trust its input), and
/// a collection count within bounds times a large element type (bounded by 64 Ki extra
/// elements; an allocation failure is reported as serialization_error).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <streambuf>
#include <string>
#include <string_view>
#include <utility>
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

#include "../detail/posix/fork_hooks.hpp"
#include "../detail/posix/posix.hpp"
#include "../errors.hpp"
#include "../serialization.hpp"

namespace mproc {
namespace detail {

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
  void* low = nullptr;
  std::size_t size = 0;
  if (!thread_stack(&low, &size)) return 0;
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

/// What boost_codec is once this header is included: the value goes through a binary
/// archive, length prefixed.
template <class T>
  requires boost_serializable<T>
struct boost_codec<T> {
  template <class W>
  static void save(W& w, const T& v) {
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
  template <class R>
  static void load(R& r, T& v) {
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
      throw serialization_error("corrupt archive for " + type_name<T>() +
                                ": allocation failed (implausible size)");
    } catch (const std::exception& e) {
      throw serialization_error(std::string("corrupt archive for ") + type_name<T>() + ": " +
                                e.what());
    }
    r.p += n;
  }
};

}  // namespace detail
}  // namespace mproc
