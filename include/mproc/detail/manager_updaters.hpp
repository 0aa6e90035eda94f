// Update functions that cross to the server: over TCP the server runs update()'s
// function, so the client names it instead of sending it -- a stateless callable by a
// stable id of its type, registered in every process running the program, or a
// function pointer by its address in the executable, named as tasks' code is
// (callable.hpp) and checked against the build-id. The calling shims are found by id
// in a table, not by address as a pool worker finds its own: a TCP peer is not this
// program's child, and a forged message must not choose which code the server enters.
#pragma once

#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <typeinfo>

#include <elf.h>
#include <link.h>

#include "../errors.hpp"
#include "../serialization.hpp"
#include "callable.hpp"
#include "manager_client.hpp"
#include "manager_messages.hpp"

namespace mproc::detail::mgr {

/// update()'s step on the bytes: the current value (or the default) decoded, f
/// applied, the result encoded.
template <class V, class F>
std::string apply_update(F&& f, const std::string_view* cur, std::string_view dflt) {
  return enc(static_cast<V>(std::invoke(f, dec<V>(cur ? *cur : dflt))));
}

/// Update functions the server finds by id, of one calling convention Fn; the id is
/// a hash of a type name, the same in every process running the program.
template <class Fn>
class updater_table {
 public:
  std::uint64_t add(const char* type_name, Fn fn) {
    const std::uint64_t id = fnv1a(type_name);
    std::lock_guard g(updater_mutex());
    t_.get().emplace(id, fn);
    return id;
  }
  /// The function registered as `id`; nullptr when none is.
  Fn find(std::uint64_t id) {
    std::lock_guard g(updater_mutex());
    auto& m = t_.get();
    auto it = m.find(id);
    return it == m.end() ? nullptr : it->second;
  }

 private:
  process_table<std::map<std::uint64_t, Fn>> t_;
};

using raw_updater = std::string (*)(const std::string_view*, std::string_view);
inline constinit updater_table<raw_updater> stateless_updaters{};

/// A stateless update function known by the id of its type. Dynamic initialisation
/// registers it in every process running this program, the server included.
template <class V, class F>
struct registered_updater {
  static std::string run(const std::string_view* cur, std::string_view dflt) {
    return apply_update<V>(F{}, cur, dflt);
  }
  static inline const std::uint64_t id = stateless_updaters.add(typeid(registered_updater).name(), &run);
};

// Function pointers travel as their address in the executable (callable.hpp),
// together with the image's GNU build-id, which the server compares with its own
// before using the address: a different program is refused, never called into.
inline int build_id_note(dl_phdr_info* info, std::size_t, void* out) {
  auto* id = static_cast<std::string*>(out);
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const auto& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_NOTE) continue;
    const char* p = reinterpret_cast<const char*>(info->dlpi_addr + ph.p_vaddr);
    const char* end = p + ph.p_memsz;
    while (p + sizeof(ElfW(Nhdr)) <= end) {
      ElfW(Nhdr) nh;
      std::memcpy(&nh, p, sizeof nh);
      const char* name = p + sizeof nh;
      const char* desc = name + ((nh.n_namesz + 3) & ~3u);
      if (nh.n_type == NT_GNU_BUILD_ID && nh.n_namesz == 4 && std::memcmp(name, "GNU", 4) == 0 &&
          desc + nh.n_descsz <= end) {
        id->assign(desc, nh.n_descsz);
        return 1;
      }
      p = desc + ((nh.n_descsz + 3) & ~3u);
    }
  }
  return 1;  // the first entry is the main program: stop there
}

/// The executable's GNU build-id (empty when it was linked without one). Read at
/// each use (a look at the first program header, only for a function pointer sent
/// over TCP): kept in a static, it would be read at start-up by every program,
/// manager or not, since a static made on first use could be half-made at a fork.
inline std::string own_build_id() {
  std::string out;
  ::dl_iterate_phdr(&build_id_note, &out);
  return out;
}

using raw_fnptr_updater = std::string (*)(const void* fn, const std::string_view*, std::string_view);
inline constinit updater_table<raw_fnptr_updater> fnptr_updaters{};

/// Calls a function pointer of type P on a decoded V; registered per (V, P).
template <class V, class P>
struct fnptr_updater {
  static std::string run(const void* fn, const std::string_view* cur, std::string_view dflt) {
    return apply_update<V>(reinterpret_cast<P>(const_cast<void*>(fn)), cur, dflt);
  }
  static inline const std::uint64_t id = fnptr_updaters.add(typeid(fnptr_updater).name(), &run);
};

/// The update function a remote request names (server side).
inline updater remote_updater_for(const request& q) {
  if (q.list.empty()) {
    const raw_updater fn = stateless_updaters.find(static_cast<std::uint64_t>(q.n));
    if (!fn)
      throw manager_error(
          "mproc::Manager: update function unknown to the server (over TCP the server must run the "
          "same program, and the function must be a function pointer, captureless lambda or stateless "
          "function object)");
    return fn;
  }
  if (q.list.size() != 2 || q.list[0].size() != sizeof(std::int64_t))
    throw serialization_error("manager: malformed function-pointer update");
  if (const std::string id = own_build_id(); id.empty() || q.list[1] != id)
    throw manager_error(
        "mproc::Manager: a function pointer can only be sent to a server running the same executable "
        "(its build-id differs or is missing)");
  const raw_fnptr_updater tramp = fnptr_updaters.find(static_cast<std::uint64_t>(q.n));
  if (!tramp) throw manager_error("mproc::Manager: update function type unknown to the server");
  std::int64_t code;
  std::memcpy(&code, q.list[0].data(), sizeof code);
  const void* fn = decode_executable_address(code);
  if (!fn) throw manager_error("mproc::Manager: function pointer outside the executable");
  return [tramp, fn](const std::string_view* cur, std::string_view d) { return tramp(fn, cur, d); };
}

}  // namespace mproc::detail::mgr
