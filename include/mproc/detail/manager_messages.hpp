// The manager's operations as messages: the kinds of object, the operations and
// their request and response, which a proxy hands to its backend. Kept apart from
// the segment (manager_store.hpp) because the numbers are a wire protocol shared by
// local calls, the TCP client and the server, and none of it needs Boost.Interprocess.
#pragma once

#include <charconv>
#include <cstdint>
#include <exception>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include <unistd.h>

#include "../errors.hpp"
#include "../serialization.hpp"
#include "posix/posix.hpp"
#include "remote_exception.hpp"

namespace mproc::detail::mgr {

enum class kind : std::uint32_t {
  dict = 1, list, ns, queue, lock, value,
  // New kinds go last: the numbers are the wire protocol.
  event, condition, semaphore, bounded_semaphore, rlock, barrier, array, joinable_queue
};
inline constexpr kind last_kind = kind::joinable_queue;

inline const char* kind_name(kind k) {
  switch (k) {
    case kind::dict: return "dict";
    case kind::list: return "list";
    case kind::ns: return "Namespace";
    case kind::queue: return "Queue";
    case kind::lock: return "Lock";
    case kind::value: return "Value";
    case kind::event: return "Event";
    case kind::condition: return "Condition";
    case kind::semaphore: return "Semaphore";
    case kind::bounded_semaphore: return "BoundedSemaphore";
    case kind::rlock: return "RLock";
    case kind::barrier: return "Barrier";
    case kind::array: return "Array";
    case kind::joinable_queue: return "JoinableQueue";
  }
  return "object";
}

// ------------------------------------------------------------------ request / response

enum class op : std::uint8_t {
  create = 1,
  dict_set, dict_get, dict_contains, dict_erase, dict_size, dict_items, dict_clear, dict_update,
  dict_pop,
  list_append, list_get, list_set, list_size, list_items, list_clear, list_extend, list_pop,
  queue_put, queue_get, queue_size,
  lock_acquire, lock_release,
  value_get, value_set,
  attach,  // socket only: send the segment's descriptor
  hello,   // socket only: identify the manager
  destroy,
  // New operations go last: the numbers are the wire protocol.
  list_count, list_index, list_insert, list_remove, list_reverse, list_assign_if,
  dict_popitem, dict_setdefault,
  queue_full,
  event_set, event_clear, event_is_set, event_wait,
  sem_acquire, sem_release, sem_value,
  rlock_acquire, rlock_release,
  cond_wait, cond_notify,
  barrier_wait, barrier_reset, barrier_abort, barrier_info,
  queue_task_done, queue_join,
};

/// Operations that may block for their own timeout (request::m) beyond a round trip.
inline bool blocking_op(op o) noexcept {
  switch (o) {
    case op::queue_get: case op::queue_put: case op::lock_acquire: case op::event_wait:
    case op::sem_acquire: case op::rlock_acquire: case op::cond_wait: case op::barrier_wait:
    case op::queue_join:
      return true;
    default:
      return false;
  }
}

/// A value as the bytes a manager stores or sends (a message's fields: a tuple of
/// references to them).
template <class T>
std::string enc(const T& v) {
  std::string s(encoded_size(v), '\0');
  encode_to(v, reinterpret_cast<std::byte*>(s.data()));
  return s;
}
/// The value `s` holds (as enc wrote it).
template <class T>
T dec(std::string_view s) {
  return deserialize<T>(std::span<const std::byte>(reinterpret_cast<const std::byte*>(s.data()), s.size()));
}
/// Reads a frame into a message's fields; every byte must be used (`trailing` is the
/// error otherwise), so a frame is either one whole message or refused.
template <class Fields>
void decode_fields(std::string_view bytes, Fields t, const char* trailing) {
  reader rd{reinterpret_cast<const std::byte*>(bytes.data()),
            reinterpret_cast<const std::byte*>(bytes.data()) + bytes.size()};
  std::apply([&](auto&... f) { (detail::decode(rd, f), ...); }, t);
  if (rd.remaining()) throw serialization_error(trailing);
}

/// One operation. Fields are used per op (see execute()); n/m are indexes, flags or
/// timeouts in ns (-1: none).
struct request {
  op o{};
  std::uint64_t id = 0;
  std::string a, b;
  std::int64_t n = 0, m = -1;
  std::vector<std::string> list;

  [[nodiscard]] std::string encode() const { return enc(std::tie(o, id, a, b, n, m, list)); }
  static request decode(std::string_view bytes) {
    request r;
    decode_fields(bytes, std::tie(r.o, r.id, r.a, r.b, r.n, r.m, r.list), "corrupt manager request: trailing bytes");
    return r;
  }
};

/// The reply to one request. An operation that raised carries its exception in
/// `error`, captured as a pool task's or a child's is (remote_exception.hpp), so one
/// exception table serves tasks, children and the Manager: the client re-raises it
/// as the type the server saw, a type it registered with MPROC_REGISTER_EXCEPTION as
/// that type, anything else as remote_error.
struct response {
  std::string a;
  std::vector<std::string> list;
  std::int64_t n = 0;
  std::optional<encoded_exception> error;  // set when the operation raised

  [[nodiscard]] std::string encode() const { return enc(std::tie(a, list, n, error)); }
  static response decode(std::string_view bytes) {
    response r;
    decode_fields(bytes, std::tie(r.a, r.list, r.n, r.error), "corrupt manager response: trailing bytes");
    return r;
  }
  /// The error the response carries, rebuilt (null when the operation succeeded). A
  /// garbled one raises serialization_error.
  [[nodiscard]] std::exception_ptr raised() const {
    if (!error) return nullptr;
    try {
      return to_exception_ptr(*error, 0);  // a remote type's pid is in its fields
    } catch (const serialization_error& e) {
      throw serialization_error(std::string("corrupt manager response: ") + e.what());
    }
  }
  /// Field i of list, checked: a reply too short raises serialization_error naming
  /// `what`, never std::out_of_range.
  [[nodiscard]] const std::string& field(std::size_t i, const char* what) const {
    if (i >= list.size())
      throw serialization_error(std::string("corrupt manager response: no ") + what);
    return list[i];
  }
  /// Field i of list as a decimal number (as the server writes them); anything else
  /// raises serialization_error naming `what`.
  [[nodiscard]] std::uint64_t number(std::size_t i, const char* what) const {
    const std::string& f = field(i, what);
    std::uint64_t v = 0;
    auto [end, ec] = std::from_chars(f.data(), f.data() + f.size(), v);
    if (ec != std::errc{} || end != f.data() + f.size() || f.empty())
      throw serialization_error(std::string("corrupt manager response: ") + what + " is not a number");
    return v;
  }
  /// Re-raises an error carried by a response as the type the server saw.
  void raise_if_error() const {
    if (auto e = raised()) std::rethrow_exception(e);
  }
  /// Turns the exception being handled into an error response (server side).
  static response from_current_exception() {
    response r;
    r.error = capture_exception(std::current_exception());
    // A type the client may not know arrives as remote_error: name this process.
    if (r.error->kind == static_cast<std::uint8_t>(exception_kind::remote) && r.error->fields.empty()) {
      try {
        remote_exception_impl::put_fields(r.error->fields, std::int32_t(current_pid()));
      } catch (...) {  // out of memory: the client names no process
        r.error->fields.clear();
      }
    }
    return r;
  }
};

/// Read-modify-write run under the root mutex: gets the current bytes (nullptr when
/// the key is missing) and the default, returns the new bytes.
using updater = std::function<std::string(const std::string_view* current, std::string_view dflt)>;

}  // namespace mproc::detail::mgr
