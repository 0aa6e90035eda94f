// Handles crossing a spawn or forkserver boundary as the same shared objects.
//
// A Process started by spawn/forkserver gets its arguments as bytes plus a list of
// descriptors. A handle argument (Value, Array, RawValue, RawArray, Lock, RLock,
// Semaphore, BoundedSemaphore, Event, Condition, Barrier, Connection, SharedMemory) is written as an index into that list (its region's memfd
// or its socket, each descriptor sent once however often it appears) plus what is
// needed to map it again; the child adopts a duplicate of the received descriptor, so
// the object it sees is the parent's object, not a copy. SharedMemory travels by name.
// Handles pass as top-level Process arguments; inside containers they are not
// encodable (use one argument per handle).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>

#include "../connection.hpp"
#include "../errors.hpp"
#include "../serialization.hpp"
#include "../shared_memory.hpp"
#include "../sharedctypes.hpp"
#include "../synchronize.hpp"
#include "callable.hpp"
#include "posix/posix.hpp"
#include "posix/shm_region.hpp"
#include "shared_block.hpp"

namespace mproc::detail {

/// Descriptors collected while a payload is encoded; the same descriptor once.
struct fd_collector {
  std::vector<int> fds;
  std::uint32_t add(int fd) {
    if (fd < 0) throw state_error("mproc: cannot pass a closed handle to another process");
    for (std::size_t i = 0; i < fds.size(); ++i)
      if (fds[i] == fd) return std::uint32_t(i);
    fds.push_back(fd);
    return std::uint32_t(fds.size() - 1);
  }
};

/// A private duplicate of received descriptor i (the handle owns it).
inline unique_fd dup_received(std::span<const int> fds, std::uint32_t i) {
  if (i >= fds.size())
    throw serialization_error("mproc: handle refers to descriptor #" + std::to_string(i) + " of " +
                              std::to_string(fds.size()) + " received");
  int d = ::fcntl(fds[i], F_DUPFD_CLOEXEC, 0);
  if (d < 0) throw_errno("fcntl(F_DUPFD_CLOEXEC, received handle)");
  return unique_fd(d);
}

template <class T>
struct handle_traits {};  // no `passable`: T is not a handle

template <class T>
concept passable_handle = requires { handle_traits<T>::passable; };

/// Region-backed handles: {fd index, region size}.
inline void put_region(vector_writer& w, fd_collector& c, const shm_region& r) {
  std::uint32_t idx = c.add(r.fd());
  std::uint64_t size = r.size();
  w.put(&idx, sizeof idx);
  w.put(&size, sizeof size);
}
inline shm_region get_region(reader& r, std::span<const int> fds) {
  std::uint32_t idx;
  std::uint64_t size;
  r.get(&idx, sizeof idx, "handle descriptor index");
  r.get(&size, sizeof size, "handle region size");
  unique_fd fd = dup_received(fds, idx);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw_errno("fstat(received handle)");
  if (std::uint64_t(st.st_size) < size)
    throw serialization_error("mproc: received handle region is smaller than announced");
  return shm_region::map(std::move(fd), std::size_t(size));
}

template <class H>
struct region_handle_traits {
  static constexpr bool passable = true;
  static void encode(vector_writer& w, fd_collector& c, const H& h) {
    put_region(w, c, h.shared_region());
  }
  static H adopt(reader& r, std::span<const int> fds) { return H(adopt_region, get_region(r, fds)); }
};

/// Value and Array: their region, then the lock if it is one given at construction
/// (its region, where in it, recursive or not), so the child shares that lock too.
template <class H>
struct locked_region_handle_traits {
  static constexpr bool passable = true;
  static void encode(vector_writer& w, fd_collector& c, const H& h) {
    put_region(w, c, h.shared_region());
    std::uint8_t external = h.external_lock() ? 1 : 0;
    w.put(&external, sizeof external);
    if (!external) return;
    const RLock& l = h.get_lock();
    put_region(w, c, l.shared_region());
    std::uint64_t off = l.shared_offset();
    std::uint8_t rec = l.recursive() ? 1 : 0;
    w.put(&off, sizeof off);
    w.put(&rec, sizeof rec);
  }
  static H adopt(reader& r, std::span<const int> fds) {
    shm_region data = get_region(r, fds);
    std::uint8_t external = 0;
    r.get(&external, sizeof external, "shared object lock flag");
    if (!external) return H(adopt_region, std::move(data));
    shm_region lreg = get_region(r, fds);
    std::uint64_t off;
    std::uint8_t rec;
    r.get(&off, sizeof off, "shared object lock offset");
    r.get(&rec, sizeof rec, "shared object lock kind");
    if (off > lreg.size() || lreg.size() - off < sizeof(mutex_state))
      throw serialization_error("mproc: received lock lies outside its region");
    basic_lock lock(std::make_shared<shared_block>(std::move(lreg)), std::size_t(off), rec != 0,
                    false);
    return H(adopt_region, std::move(data), lock);
  }
};

template <class T>
struct handle_traits<Value<T>> : locked_region_handle_traits<Value<T>> {};
template <class T>
struct handle_traits<Array<T>> : locked_region_handle_traits<Array<T>> {};
template <class T>
struct handle_traits<RawValue<T>> : region_handle_traits<RawValue<T>> {};
template <class T>
struct handle_traits<RawArray<T>> : region_handle_traits<RawArray<T>> {};

template <class L>
struct lock_handle_traits {
  static constexpr bool passable = true;
  static void encode(vector_writer& w, fd_collector& c, const L& l) {
    put_region(w, c, l.shared_region());
    std::uint64_t off = l.shared_offset();
    w.put(&off, sizeof off);
  }
  static L adopt(reader& r, std::span<const int> fds) {
    shm_region reg = get_region(r, fds);
    std::uint64_t off;
    r.get(&off, sizeof off, "lock offset");
    if (off > reg.size() || reg.size() - off < sizeof(mutex_state))
      throw serialization_error("mproc: received lock lies outside its region");
    return L(adopt_region, std::make_shared<shared_block>(std::move(reg)), std::size_t(off), false);
  }
};
template <>
struct handle_traits<Lock> : lock_handle_traits<Lock> {};
template <>
struct handle_traits<RLock> : lock_handle_traits<RLock> {};

template <>
struct handle_traits<Semaphore> : region_handle_traits<Semaphore> {};
template <>
struct handle_traits<BoundedSemaphore> : region_handle_traits<BoundedSemaphore> {};
template <>
struct handle_traits<Event> : region_handle_traits<Event> {};

template <>
struct handle_traits<Barrier> {
  static constexpr bool passable = true;
  static void encode(vector_writer& w, fd_collector& c, const Barrier& b) {
    if (b.has_action() && !b.plain_action())
      throw state_error(
          "mproc: a Barrier whose action is a closure cannot be passed to a spawn/forkserver "
          "process (it exists in this process only); make the action a free function or a "
          "captureless lambda, or use fork");
    put_region(w, c, b.shared_region());
    // The action travels as a code address, as a Process target does.
    std::int64_t action = b.plain_action()
                              ? encode_code_address(reinterpret_cast<const void*>(b.plain_action()))
                              : 0;
    w.put(&action, sizeof action);
  }
  static Barrier adopt(reader& r, std::span<const int> fds) {
    shm_region region = get_region(r, fds);
    std::int64_t action = 0;
    r.get(&action, sizeof action, "barrier action");
    void (*fn)() = nullptr;
    if (action) {
      void* p = decode_code_address(action);
      if (!p) throw serialization_error("mproc: the Barrier's action is not code of this program");
      fn = reinterpret_cast<void (*)()>(p);
    }
    return Barrier(adopt_region, std::move(region), fn);
  }
};

template <>
struct handle_traits<Condition> {
  static constexpr bool passable = true;
  static void encode(vector_writer& w, fd_collector& c, const Condition& cond) {
    const basic_lock& l = cond.shared_lock();
    put_region(w, c, l.shared_region());
    std::uint64_t off = l.shared_offset();
    std::uint8_t rec = l.recursive() ? 1 : 0;
    w.put(&off, sizeof off);
    w.put(&rec, sizeof rec);
    put_region(w, c, cond.shared_core().shared_region());
  }
  static Condition adopt(reader& r, std::span<const int> fds) {
    shm_region lreg = get_region(r, fds);
    std::uint64_t off;
    std::uint8_t rec;
    r.get(&off, sizeof off, "condition lock offset");
    r.get(&rec, sizeof rec, "condition lock kind");
    if (off > lreg.size() || lreg.size() - off < sizeof(mutex_state))
      throw serialization_error("mproc: received condition lock lies outside its region");
    basic_lock lock(std::make_shared<shared_block>(std::move(lreg)), std::size_t(off), rec != 0,
                    false);
    condition_core core(adopt_region, get_region(r, fds));
    return Condition(adopt_region, std::move(lock), std::move(core));
  }
};

template <>
struct handle_traits<Connection> {
  static constexpr bool passable = true;
  static void encode(vector_writer& w, fd_collector& c, const Connection& conn) {
    std::uint32_t idx = c.add(conn.fileno());
    std::uint8_t flags = std::uint8_t((conn.readable() ? 1 : 0) | (conn.writable() ? 2 : 0));
    w.put(&idx, sizeof idx);
    w.put(&flags, sizeof flags);
  }
  static Connection adopt(reader& r, std::span<const int> fds) {
    std::uint32_t idx;
    std::uint8_t flags;
    r.get(&idx, sizeof idx, "connection descriptor index");
    r.get(&flags, sizeof flags, "connection flags");
    return Connection(dup_received(fds, idx), (flags & 1) != 0, (flags & 2) != 0);
  }
};

template <>
struct handle_traits<SharedMemory> {
  static constexpr bool passable = true;
  static void encode(vector_writer& w, fd_collector&, const SharedMemory& m) {
    mproc::detail::encode(w, m.name());
  }
  static SharedMemory adopt(reader& r, std::span<const int>) {
    std::string name;
    mproc::detail::decode(r, name);
    return SharedMemory(name);
  }
};

/// The type a Process argument arrives as in a spawned child: handles as themselves,
/// values as their wire type (a C string as std::string).
template <class A>
struct spawn_arg {
  using type = wire_t<A>;
};
template <class A>
  requires passable_handle<std::remove_cvref_t<A>>
struct spawn_arg<A> {
  using type = std::remove_cvref_t<A>;
};
template <class A>
using spawn_arg_t = typename spawn_arg<A>::type;

template <class A>
concept spawn_passable = passable_handle<std::remove_cvref_t<A>> || encodable<wire_t<A>>;

template <class A>
void encode_spawn_arg(vector_writer& w, fd_collector& c, const A& a) {
  using U = std::remove_cvref_t<A>;
  if constexpr (passable_handle<U>) {
    handle_traits<U>::encode(w, c, a);
  } else if constexpr (c_string<U>) {
    mproc::detail::encode(w, std::string(a));
  } else {
    mproc::detail::encode(w, a);
  }
}

template <class A>
spawn_arg_t<A> decode_spawn_arg(reader& r, std::span<const int> fds) {
  using U = std::remove_cvref_t<A>;
  if constexpr (passable_handle<U>) {
    return handle_traits<U>::adopt(r, fds);
  } else {
    spawn_arg_t<A> v{};
    mproc::detail::decode(r, v);
    return v;
  }
}

}  // namespace mproc::detail
