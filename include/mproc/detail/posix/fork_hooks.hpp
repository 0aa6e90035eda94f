// The library's fork handlers: one table in a fixed order, registered with
// pthread_atfork once, while the program starts (before it can have threads).
//
// Why one table: handlers registered one by one run in the order their headers
// happened to be initialised, and a handler registered lazily (on first use, from a
// function-local static) can be half-registered when another thread forks - the child
// then waits for ever on the static's guard. Every slot below is filled during static
// initialisation; the table itself is constant-initialised, so it needs no guard.
#pragma once

#include <pthread.h>

namespace mproc::detail {

/// The order child (and parent) handlers run in; prepare handlers run in reverse, so
/// locks taken in prepare are released in the opposite order.
enum class fork_hook_slot : int {
  thread_id,         // the cached thread id: the child's thread has a new one
  module_table,      // the code-address table's lock
  process_registry,  // children, identity and name of this process
  tracker,           // the resource tracker's lock
  stable_thread,     // the service thread that forks and spawns for non-main threads
  forkserver,        // the forkserver connection
  managers,          // managers' process-local locks
  archive_stack,     // the cached stack bound of Boost archives: the child's may differ
  exception_registry,  // the registered exception types' lock
  count
};

struct fork_hook {
  void (*prepare)() = nullptr;
  void (*parent)() = nullptr;
  void (*child)() = nullptr;
};

inline constinit fork_hook fork_hook_table[static_cast<int>(fork_hook_slot::count)]{};

inline void fork_hooks_prepare() noexcept {
  for (int i = static_cast<int>(fork_hook_slot::count) - 1; i >= 0; --i)
    if (auto* f = fork_hook_table[i].prepare) f();
}
inline void fork_hooks_parent() noexcept {
  for (auto& h : fork_hook_table)
    if (h.parent) h.parent();
}
inline void fork_hooks_child() noexcept {
  for (auto& h : fork_hook_table)
    if (h.child) h.child();
}

inline const int fork_hooks_registered =
    ::pthread_atfork(&fork_hooks_prepare, &fork_hooks_parent, &fork_hooks_child);

/// Fills a slot; call from a namespace-scope initialiser (static initialisation).
inline int set_fork_hook(fork_hook_slot slot, fork_hook h) noexcept {
  fork_hook_table[static_cast<int>(slot)] = h;
  return fork_hooks_registered;
}

}  // namespace mproc::detail
