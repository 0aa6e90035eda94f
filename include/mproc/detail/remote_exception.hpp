// Carrying an exception from the process that threw it to the one that waits for the
// result. The thrower captures the in-flight exception as plain data (a kind, the
// demangled dynamic type, the message); the waiter rebuilds it.
//
// What comes back:
//  - an object whose dynamic type is exactly one of the <stdexcept> types, std::bad_alloc
//    or one of the mproc errors listed in exception_kind: the same type, same what();
//  - a remote_error thrown remotely (a nested pool's task failed): a remote_error with
//    the original type_name() and what(), and the pid of the process that rethrew it;
//  - anything else, including user classes derived from the standard types: a
//    mproc::remote_error(type_name, what, pid). Rebuilding a user type as its nearest
//    standard base would silently slice it (a catch for the user type would never
//    match); remote_error keeps the real type name so the error stays diagnosable.
//  - non-std::exception objects (`throw 42`, `throw "text"`) are described: the value
//    of arithmetic and string objects, otherwise the type alone.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <exception>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <tuple>
#include <typeinfo>

#include <cxxabi.h>
#include <sys/types.h>

#include "../errors.hpp"
#include "../serialization.hpp"

namespace mproc::detail {

/// Which type to_exception_ptr() rebuilds. The numbers are part of the wire format.
enum class exception_kind : std::uint8_t {
  remote = 0,  // anything else: rebuilt as mproc::remote_error
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
};

struct encoded_exception {
  std::uint8_t kind = static_cast<std::uint8_t>(exception_kind::remote);
  std::string type_name;  // demangled dynamic type of the thrown object
  std::string what;       // what(), or a description for non-std::exception objects

  auto mproc_fields() { return std::tie(kind, type_name, what); }
};

/// Readable demangled name for a type_info (the mangled name when demangling fails).
inline std::string demangle(const std::type_info& ti) { return demangled_name(ti); }

namespace remote_exception_impl {

// Exact dynamic type -> kind. Only exact matches count (see the header comment).
inline exception_kind kind_of(const std::type_info& ti) noexcept {
  struct entry {
    const std::type_info* type;
    exception_kind kind;
  };
  static const entry table[] = {
      {&typeid(std::logic_error), exception_kind::logic_error},
      {&typeid(std::domain_error), exception_kind::domain_error},
      {&typeid(std::invalid_argument), exception_kind::invalid_argument},
      {&typeid(std::length_error), exception_kind::length_error},
      {&typeid(std::out_of_range), exception_kind::out_of_range},
      {&typeid(std::runtime_error), exception_kind::runtime_error},
      {&typeid(std::range_error), exception_kind::range_error},
      {&typeid(std::overflow_error), exception_kind::overflow_error},
      {&typeid(std::underflow_error), exception_kind::underflow_error},
      {&typeid(std::bad_alloc), exception_kind::bad_alloc},
      {&typeid(mproc::error), exception_kind::mproc_error},
      {&typeid(mproc::timeout_error), exception_kind::timeout_error},
      {&typeid(mproc::serialization_error), exception_kind::serialization_error},
      {&typeid(mproc::queue_empty), exception_kind::queue_empty},
      {&typeid(mproc::queue_full), exception_kind::queue_full},
      {&typeid(mproc::eof_error), exception_kind::eof_error},
      {&typeid(mproc::pool_not_running), exception_kind::pool_not_running},
      {&typeid(mproc::start_method_error), exception_kind::start_method_error},
      {&typeid(mproc::authentication_error), exception_kind::authentication_error},
      {&typeid(mproc::state_error), exception_kind::state_error},
  };
  for (const auto& e : table)
    if (*e.type == ti) return e.kind;
  return exception_kind::remote;
}

// Must be called from inside a catch handler: inspects the exception being handled.
inline encoded_exception describe_current() {
  encoded_exception out;
  const std::type_info* ti = abi::__cxa_current_exception_type();
  out.type_name = ti ? demangle(*ti) : std::string("<unknown>");
  try {
    throw;
  } catch (const mproc::remote_error& e) {
    // Forwarded from a further process: keep the original type, not "remote_error".
    out.kind = static_cast<std::uint8_t>(exception_kind::remote);
    out.type_name = e.type_name();
    out.what = e.what();
  } catch (const std::exception& e) {
    out.kind = static_cast<std::uint8_t>(ti ? kind_of(*ti) : exception_kind::remote);
    out.what = e.what();
  } catch (const std::string& s) {
    out.what = s;
  } catch (const char* s) {
    out.what = s ? s : "(null)";
  } catch (bool v) {
    out.what = v ? "true" : "false";
  } catch (char v) {
    out.what = std::string(1, v);
  } catch (int v) {
    out.what = std::to_string(v);
  } catch (unsigned v) {
    out.what = std::to_string(v);
  } catch (long v) {
    out.what = std::to_string(v);
  } catch (unsigned long v) {
    out.what = std::to_string(v);
  } catch (long long v) {
    out.what = std::to_string(v);
  } catch (unsigned long long v) {
    out.what = std::to_string(v);
  } catch (double v) {
    out.what = std::to_string(v);
  } catch (float v) {
    out.what = std::to_string(v);
  } catch (...) {
    out.what = "an object of type " + out.type_name + " (not derived from std::exception)";
  }
  return out;
}

}  // namespace remote_exception_impl

/// Captures e as plain data. Never throws: if even that fails (out of memory), the
/// result says bad_alloc.
inline encoded_exception capture_exception(std::exception_ptr e) noexcept {
  if (!e) {
    encoded_exception out;
    try {
      out.type_name = "<none>";
      out.what = "no exception";
    } catch (...) {
    }
    return out;
  }
  try {
    std::rethrow_exception(e);
  } catch (...) {
    try {
      return remote_exception_impl::describe_current();
    } catch (...) {
      // Strings could not be allocated; empty strings never allocate.
      encoded_exception out;
      out.kind = static_cast<std::uint8_t>(exception_kind::bad_alloc);
      return out;
    }
  }
}

/// Rebuilds the exception captured in another process (remote_pid) as an exception_ptr.
inline std::exception_ptr to_exception_ptr(const encoded_exception& e, pid_t remote_pid) {
  const std::string& w = e.what;
  switch (static_cast<exception_kind>(e.kind)) {
    case exception_kind::logic_error: return std::make_exception_ptr(std::logic_error(w));
    case exception_kind::domain_error: return std::make_exception_ptr(std::domain_error(w));
    case exception_kind::invalid_argument:
      return std::make_exception_ptr(std::invalid_argument(w));
    case exception_kind::length_error: return std::make_exception_ptr(std::length_error(w));
    case exception_kind::out_of_range: return std::make_exception_ptr(std::out_of_range(w));
    case exception_kind::runtime_error: return std::make_exception_ptr(std::runtime_error(w));
    case exception_kind::range_error: return std::make_exception_ptr(std::range_error(w));
    case exception_kind::overflow_error: return std::make_exception_ptr(std::overflow_error(w));
    case exception_kind::underflow_error:
      return std::make_exception_ptr(std::underflow_error(w));
    case exception_kind::bad_alloc: return std::make_exception_ptr(std::bad_alloc());
    case exception_kind::mproc_error: return std::make_exception_ptr(mproc::error(w));
    case exception_kind::timeout_error: return std::make_exception_ptr(mproc::timeout_error(w));
    case exception_kind::serialization_error:
      return std::make_exception_ptr(mproc::serialization_error(w));
    case exception_kind::queue_empty: return std::make_exception_ptr(mproc::queue_empty(w));
    case exception_kind::queue_full: return std::make_exception_ptr(mproc::queue_full(w));
    case exception_kind::eof_error: return std::make_exception_ptr(mproc::eof_error(w));
    case exception_kind::pool_not_running:
      return std::make_exception_ptr(mproc::pool_not_running(w));
    case exception_kind::start_method_error:
      return std::make_exception_ptr(mproc::start_method_error(w));
    case exception_kind::authentication_error:
      return std::make_exception_ptr(mproc::authentication_error(w));
    case exception_kind::state_error: return std::make_exception_ptr(mproc::state_error(w));
    case exception_kind::remote: break;
  }
  // Also reached for a kind this build does not know (a newer or corrupt sender).
  return std::make_exception_ptr(mproc::remote_error(e.type_name, w, remote_pid));
}

[[noreturn]] inline void rethrow(const encoded_exception& e, pid_t remote_pid) {
  std::rethrow_exception(to_exception_ptr(e, remote_pid));
}

}  // namespace mproc::detail
