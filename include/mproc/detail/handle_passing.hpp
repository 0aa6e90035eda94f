// Handles crossing a spawn or forkserver boundary as the same shared objects.
//
// A Process started by spawn/forkserver gets its arguments as bytes plus a list of
// descriptors. A handle argument (Value, Array, Lock, Event, Connection, Queue, ...) is
// written as an index into that list (its region's memfd or its socket, each descriptor
// sent once however often it appears) plus what is needed to map it again; the child
// adopts a duplicate of the received descriptor, so the object it sees is the parent's
// object, not a copy. Handles pass as top-level Process arguments; inside containers
// they are not encodable (use one argument per handle).
//
// This file is the mechanism only: each handle type specialises handle_traits beside
// itself (synchronize.hpp, sharedctypes.hpp, connection.hpp, shared_memory.hpp,
// queue.hpp), so a new handle type edits no central file.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>

#include "../errors.hpp"
#include "../serialization.hpp"
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
  return dup_cloexec(fds[i], "fcntl(F_DUPFD_CLOEXEC, received handle)");
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
  if (std::uint64_t(file_stat(fd.get(), "fstat(received handle)").st_size) < size)
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
