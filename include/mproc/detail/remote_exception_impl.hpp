// The bodies of remote_exception.hpp: included by it in the header-only mode, compiled
// once by src/mproc.cpp otherwise (see MPROC_FUNC).
#pragma once

#include <future>
#include <ios>
#include <optional>
#include <span>
#include <string>
#include <system_error>
#include <tuple>
#include <typeinfo>
#include <vector>

#include <cxxabi.h>

#include "remote_exception.hpp"

namespace mproc::detail {

namespace remote_exception_impl {

// system_error's what() is its argument, ": ", then the code's message; rebuilt from
// the code alone when the message is the same here, and carried verbatim otherwise.
struct system_error_as_sent : std::system_error {
  system_error_as_sent(std::error_code ec, std::string what)
      : std::system_error(ec), what_(std::move(what)) {}
  [[nodiscard]] const char* what() const noexcept override { return what_.c_str(); }
  std::string what_;
};

MPROC_FUNC std::exception_ptr make_system_error(std::error_code ec, const std::string& what) {
  const std::string msg = ec.message();
  std::optional<std::system_error> e;
  if (what == msg)
    e.emplace(ec);
  else if (what.size() >= msg.size() + 2 && what.ends_with(msg) &&
           what.compare(what.size() - msg.size() - 2, 2, ": ") == 0)
    e.emplace(ec, what.substr(0, what.size() - msg.size() - 2));
  if (e && what == e->what()) return std::make_exception_ptr(*e);
  return std::make_exception_ptr(system_error_as_sent(ec, what));
}

enum class category_id : std::uint8_t { generic = 0, system = 1, iostream = 2, future = 3 };

MPROC_FUNC std::optional<category_id> id_of(const std::error_category& c) noexcept {
  if (c == std::generic_category()) return category_id::generic;
  if (c == std::system_category()) return category_id::system;
  if (c == std::iostream_category()) return category_id::iostream;
  if (c == std::future_category()) return category_id::future;
  return std::nullopt;
}
MPROC_FUNC const std::error_category& category_of(std::uint8_t id) {
  switch (static_cast<category_id>(id)) {
    case category_id::generic: return std::generic_category();
    case category_id::system: return std::system_category();
    case category_id::iostream: return std::iostream_category();
    case category_id::future: return std::future_category();
  }
  throw serialization_error("corrupt exception: unknown error category " + std::to_string(id));
}

/// One type the library carries with its type: how to find it, what fields it takes
/// along (false: it cannot be carried after all, send it as a remote type) and how to
/// rebuild it.
struct carried_type {
  exception_kind kind;
  const std::type_info* type;
  bool (*capture)(const std::exception& e, std::vector<std::byte>& fields);  // null: none
  std::exception_ptr (*rebuild)(const std::string& what, reader& fields);
};

template <class E>
std::exception_ptr rebuild_plain(const std::string& what, reader&) {
  if constexpr (std::is_same_v<E, std::bad_alloc>)
    return std::make_exception_ptr(std::bad_alloc());
  else
    return std::make_exception_ptr(E(what));
}

MPROC_FUNC bool capture_system_error(const std::exception& e, std::vector<std::byte>& out) {
  const auto& se = dynamic_cast<const std::system_error&>(e);
  const auto id = id_of(se.code().category());
  if (!id) return false;  // a category of the program's own: not rebuildable here
  put_fields(out, std::tuple<std::int32_t, std::uint8_t>(se.code().value(), std::uint8_t(*id)));
  return true;
}
MPROC_FUNC std::exception_ptr rebuild_system_error(const std::string& what, reader& r) {
  auto [value, cat] = get_fields<std::tuple<std::int32_t, std::uint8_t>>(r);
  return make_system_error(std::error_code(value, category_of(cat)), what);
}

MPROC_FUNC bool capture_worker_died(const std::exception& e, std::vector<std::byte>& out) {
  const auto& d = dynamic_cast<const mproc::worker_died&>(e);
  put_fields(out, std::tuple<std::int32_t, std::int32_t, std::int32_t>(d.pid(), d.exitcode(),
                                                                       d.signal()));
  return true;
}
MPROC_FUNC std::exception_ptr rebuild_worker_died(const std::string& what, reader& r) {
  auto [pid, code, sig] = get_fields<std::tuple<std::int32_t, std::int32_t, std::int32_t>>(r);
  return std::make_exception_ptr(mproc::worker_died(what, pid, code, sig));
}

MPROC_FUNC bool capture_buffer_too_short(const std::exception& e, std::vector<std::byte>& out) {
  const auto& b = dynamic_cast<const mproc::buffer_too_short&>(e);
  put_fields(out, b.message());
  put_fields(out, std::uint64_t(b.capacity()));
  return true;
}
MPROC_FUNC std::exception_ptr rebuild_buffer_too_short(const std::string&, reader& r) {
  auto msg = get_fields<std::vector<std::byte>>(r);
  auto cap = get_fields<std::uint64_t>(r);
  return std::make_exception_ptr(mproc::buffer_too_short(std::move(msg), std::size_t(cap)));
}

template <class E, exception_kind K>
constexpr carried_type plain() {
  return {K, &typeid(E), nullptr, &rebuild_plain<E>};
}

/// Every type carried with its type. Only exact dynamic types match (see the header).
MPROC_FUNC std::span<const carried_type> carried_types() {
  using K = exception_kind;
  static const carried_type table[] = {
      plain<std::logic_error, K::logic_error>(),
      plain<std::domain_error, K::domain_error>(),
      plain<std::invalid_argument, K::invalid_argument>(),
      plain<std::length_error, K::length_error>(),
      plain<std::out_of_range, K::out_of_range>(),
      plain<std::runtime_error, K::runtime_error>(),
      plain<std::range_error, K::range_error>(),
      plain<std::overflow_error, K::overflow_error>(),
      plain<std::underflow_error, K::underflow_error>(),
      plain<std::bad_alloc, K::bad_alloc>(),
      plain<mproc::error, K::mproc_error>(),
      plain<mproc::timeout_error, K::timeout_error>(),
      plain<mproc::serialization_error, K::serialization_error>(),
      plain<mproc::queue_empty, K::queue_empty>(),
      plain<mproc::queue_full, K::queue_full>(),
      plain<mproc::eof_error, K::eof_error>(),
      plain<mproc::pool_not_running, K::pool_not_running>(),
      plain<mproc::start_method_error, K::start_method_error>(),
      plain<mproc::authentication_error, K::authentication_error>(),
      plain<mproc::state_error, K::state_error>(),
      {K::system_error, &typeid(std::system_error), &capture_system_error, &rebuild_system_error},
      {K::system_error, &typeid(system_error_as_sent), &capture_system_error, &rebuild_system_error},
      {K::worker_died, &typeid(mproc::worker_died), &capture_worker_died, &rebuild_worker_died},
      plain<mproc::lock_error, K::lock_error>(),
      plain<mproc::broken_barrier_error, K::broken_barrier_error>(),
      plain<mproc::manager_error, K::manager_error>(),
      plain<mproc::cancelled_error, K::cancelled_error>(),
      {K::buffer_too_short, &typeid(mproc::buffer_too_short), &capture_buffer_too_short,
       &rebuild_buffer_too_short},
      plain<mproc::value_error, K::value_error>(),
      plain<mproc::key_error, K::key_error>(),
      plain<mproc::index_error, K::index_error>(),
      plain<mproc::attribute_error, K::attribute_error>(),
  };
  return table;
}

MPROC_FUNC const carried_type* find_carried(const std::type_info& ti) noexcept {
  for (const auto& e : carried_types())
    if (*e.type == ti) return &e;
  return nullptr;
}

// Exact dynamic type -> kind (remote when the type is not carried).
MPROC_FUNC exception_kind kind_of(const std::type_info& ti) noexcept {
  const carried_type* c = find_carried(ti);
  return c ? c->kind : exception_kind::remote;
}

// Must be called from inside a catch handler: inspects the exception being handled.
MPROC_FUNC encoded_exception describe_current() {
  encoded_exception out;
  const std::type_info* ti = abi::__cxa_current_exception_type();
  out.type_name = ti ? demangle(*ti) : std::string("<unknown>");
  try {
    throw;
  } catch (const mproc::remote_error& e) {
    // Forwarded from a further process: keep the original type and thrower, not
    // "remote_error" and the forwarding process.
    out.kind = static_cast<std::uint8_t>(exception_kind::remote);
    out.type_name = e.type_name();
    out.what = e.what();
    put_fields(out.fields, std::int32_t(e.pid()));
  } catch (const std::exception& e) {
    out.what = e.what();
    const carried_type* c = ti ? find_carried(*ti) : nullptr;
    if (c && (!c->capture || c->capture(e, out.fields)))
      out.kind = static_cast<std::uint8_t>(c->kind);
    else
      out.fields.clear();
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

MPROC_FUNC encoded_exception capture_exception(std::exception_ptr e) noexcept {
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

MPROC_FUNC std::exception_ptr to_exception_ptr(const encoded_exception& e, pid_t remote_pid) {
  using namespace remote_exception_impl;
  reader fields{e.fields.data(), e.fields.data() + e.fields.size()};
  auto done_with_fields = [&] {
    if (fields.remaining())
      throw serialization_error("corrupt exception: " + std::to_string(fields.remaining()) +
                                " unexpected bytes after the fields of " + e.type_name);
  };
  if (e.kind != static_cast<std::uint8_t>(exception_kind::remote)) {
    for (const auto& c : carried_types())
      if (static_cast<std::uint8_t>(c.kind) == e.kind) {
        auto p = c.rebuild(e.what, fields);
        done_with_fields();
        return p;
      }
    // A kind this build does not know (a newer or corrupt sender): kept as remote_error.
    return std::make_exception_ptr(mproc::remote_error(e.type_name, e.what, remote_pid));
  }
  pid_t pid = remote_pid;
  if (fields.remaining()) pid = get_fields<std::int32_t>(fields);  // a forwarded remote_error
  done_with_fields();
  if (auto rebuild = find_registered(e.type_name)) return rebuild(e.what);
  return std::make_exception_ptr(mproc::remote_error(e.type_name, e.what, pid));
}

[[noreturn]] MPROC_FUNC void rethrow(const encoded_exception& e, pid_t remote_pid) {
  std::rethrow_exception(to_exception_ptr(e, remote_pid));
}

}  // namespace mproc::detail
