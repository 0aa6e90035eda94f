// Carrying an exception from the process that threw it to the one that waits for the
// result. The thrower captures the in-flight exception as plain data (a kind, the
// demangled dynamic type, the message, and the fields its type carries); the waiter
// rebuilds it.
//
// What comes back:
//  - an object whose dynamic type is exactly one of the <stdexcept> types, std::bad_alloc,
//    std::system_error (generic, system, iostream or future category) or one of the
//    mproc errors listed in exception_kind: the same type, same what(), same fields
//    (system_error's code, worker_died's pid/exitcode/signal, ...);
//  - an object whose dynamic type the *waiting* process registered with
//    MPROC_REGISTER_EXCEPTION: that type, rebuilt from what(). The lookup is by type
//    name on the waiting side only, so it works whatever the thrower's start method
//    and however far its static initialisation got;
//  - a remote_error thrown remotely (a nested pool's task failed): handled as the
//    original type it names (registered: that type; otherwise a remote_error with the
//    same type_name(), what() and pid());
//  - anything else, including unregistered user classes derived from the standard
//    types: a mproc::remote_error(type_name, what, pid). Rebuilding a user type as its
//    nearest standard base would silently slice it (a catch for the user type would
//    never match); remote_error keeps the real type name so the error stays diagnosable.
//  - non-std::exception objects (`throw 42`, `throw "text"`) are described: the value
//    of arithmetic and string objects, otherwise the type alone.
#pragma once

#include <concepts>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <system_error>
#include <tuple>
#include <typeindex>
#include <typeinfo>
#include <vector>

#include <sys/types.h>

#include "../errors.hpp"
#include "../version.hpp"
#include "../serialization.hpp"
#include "posix/fork_hooks.hpp"

namespace mproc::detail {

/// Which type to_exception_ptr() rebuilds. The numbers are part of the wire format.
enum class exception_kind : std::uint8_t {
  remote = 0,  // anything else: a registered type by name, or mproc::remote_error
  logic_error = 1,
  domain_error = 2,
  invalid_argument = 3,
  length_error = 4,
  out_of_range = 5,
  runtime_error = 6,
  range_error = 7,
  overflow_error = 8,
  underflow_error = 9,
  bad_alloc = 10,
  mproc_error = 11,  // mproc::error itself
  timeout_error = 12,
  serialization_error = 13,
  queue_empty = 14,
  queue_full = 15,
  eof_error = 16,
  pool_not_running = 17,
  start_method_error = 18,
  authentication_error = 19,
  state_error = 20,
  system_error = 21,  // fields: code value, category
  worker_died = 22,   // fields: pid, exitcode, signal
  lock_error = 23,
  broken_barrier_error = 24,
  manager_error = 25,
  cancelled_error = 26,
  buffer_too_short = 27,  // fields: message, capacity
  value_error = 28,
  key_error = 29,
  index_error = 30,
  attribute_error = 31,
};
inline constexpr int exception_kind_count = 32;

struct encoded_exception {
  std::uint8_t kind = static_cast<std::uint8_t>(exception_kind::remote);
  std::string type_name;  // demangled dynamic type of the thrown object
  std::string what;       // what(), or a description for non-std::exception objects
  std::vector<std::byte> fields;  // what the kind carries beyond what() (see exception_kind)

  auto mproc_fields() { return std::tie(kind, type_name, what, fields); }
};

/// Readable demangled name for a type_info (the mangled name when demangling fails).
inline std::string demangle(const std::type_info& ti) { return demangled_name(ti); }

// ------------------------------------------------------------ the program's own types

/// A type registered with MPROC_REGISTER_EXCEPTION, found by its demangled name.
struct registered_exception {
  std::type_index type;
  std::exception_ptr (*rebuild)(const std::string& what);
  bool ambiguous = false;  // two registered types print the same name: neither is rebuilt
};

// Registered types are looked up by the pool's service thread while other threads may
// fork: the lock is constant-initialised (no first-use guard a fork can catch half
// taken) and held across fork by the fork hook below, so a child never inherits it
// locked; the table is made during static initialisation, when nothing forks yet.
inline constinit std::mutex exception_registry_lock;  // trivially destroyed: usable during exit

inline std::map<std::string, registered_exception, std::less<>>& exception_registry() {
  static auto* r = new std::map<std::string, registered_exception, std::less<>>;  // leaked: used during exit
  return *r;
}
inline const int exception_registry_ready =
    (exception_registry(),
     set_fork_hook(fork_hook_slot::exception_registry, {.prepare = [] { exception_registry_lock.lock(); },
                                                        .parent = [] { exception_registry_lock.unlock(); },
                                                        .child = [] { exception_registry_lock.unlock(); }}));

template <class T>
std::exception_ptr rebuild_registered(const std::string& what) {
  if constexpr (std::constructible_from<T, const std::string&>)
    return std::make_exception_ptr(T(what));
  else if constexpr (std::constructible_from<T, const char*>)
    return std::make_exception_ptr(T(what.c_str()));
  else
    return std::make_exception_ptr(T{});
}

/// register_exception under a given name (two types printing the same name, as from
/// anonymous namespaces in two files, make that name ambiguous).
template <class T>
bool register_exception_as(const std::string& name) {
  std::lock_guard l(exception_registry_lock);
  auto& reg = exception_registry();
  auto it = reg.find(name);
  if (it == reg.end())
    reg.emplace(name, registered_exception{std::type_index(typeid(T)), &rebuild_registered<T>});
  else if (it->second.type != std::type_index(typeid(T)))
    it->second.ambiguous = true;
  return true;
}

template <class T>
bool register_exception() {
  static_assert(std::is_class_v<T> && std::is_base_of_v<std::exception, T>,
                "MPROC_REGISTER_EXCEPTION: the type must derive from std::exception");
  static_assert(std::constructible_from<T, const std::string&> ||
                    std::constructible_from<T, const char*> || std::default_initializable<T>,
                "MPROC_REGISTER_EXCEPTION: the type is rebuilt from its what(): it needs a "
                "constructor taking a std::string or a const char*, or a default constructor");
  static_assert(std::copy_constructible<T>,
                "MPROC_REGISTER_EXCEPTION: an exception type must be copy constructible");
  return register_exception_as<T>(demangle(typeid(T)));
}

/// The rebuild function of a registered type (null: not registered, or ambiguous).
inline auto find_registered(std::string_view name) -> std::exception_ptr (*)(const std::string&) {
  std::lock_guard l(exception_registry_lock);
  auto& reg = exception_registry();
  auto it = reg.find(name);
  if (it == reg.end() || it->second.ambiguous) return nullptr;
  return it->second.rebuild;
}

namespace remote_exception_impl {

template <class T>
void put_fields(std::vector<std::byte>& out, const T& v) {
  vector_writer w{&out};
  encode(w, v);
}
template <class T>
T get_fields(reader& r) {
  T v{};
  decode(r, v);
  return v;
}

MPROC_FUNC exception_kind kind_of(const std::type_info& ti) noexcept;

}  // namespace remote_exception_impl

/// Captures e as plain data. Never throws: if even that fails (out of memory), the
/// result says bad_alloc.
MPROC_FUNC encoded_exception capture_exception(std::exception_ptr e) noexcept;

/// Rebuilds the exception captured in another process (remote_pid) as an exception_ptr.
/// Corrupt fields raise serialization_error.
MPROC_FUNC std::exception_ptr to_exception_ptr(const encoded_exception& e, pid_t remote_pid);

[[noreturn]] MPROC_FUNC void rethrow(const encoded_exception& e, pid_t remote_pid);

}  // namespace mproc::detail

#define MPROC_DETAIL_CONCAT2(a, b) a##b
#define MPROC_DETAIL_CONCAT(a, b) MPROC_DETAIL_CONCAT2(a, b)

/// At namespace scope: exceptions of type T (exactly; derive from std::exception)
/// thrown by a task or a child arrive as T, rebuilt from what(), instead of as
/// remote_error. The process that *receives* the exception must have registered T;
/// the thrower need not (any start method, any static initialisation order).
#define MPROC_REGISTER_EXCEPTION(...)                                                  \
  [[maybe_unused]] static const bool MPROC_DETAIL_CONCAT(mproc_registered_exception_, \
                                                         __COUNTER__) =               \
      ::mproc::detail::register_exception<__VA_ARGS__>()

#if MPROC_HEADER_ONLY
#include "remote_exception_impl.hpp"
#endif
