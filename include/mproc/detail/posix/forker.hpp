// Forking from a thread that lives as long as the process.
//
// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not when the
// parent process does. A child forked from a short-lived std::thread would be killed
// the moment that thread ends. The main thread lives as long as the process, so forks
// requested there happen directly; forks requested on any other thread are handed to
// one long-lived service thread that does the fork() itself. Spawns (posix_spawn has
// the same rule) use the same thread.
#pragma once

#include <condition_variable>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <thread>
#include <type_traits>
#include <utility>

#include <pthread.h>
#include <unistd.h>

#include "fork.hpp"

namespace mproc::detail {

/// Non-owning reference to a callable (the callable must outlive the call).
template <class Sig>
class function_ref;

template <class R, class... A>
class function_ref<R(A...)> {
 public:
  template <class F>
    requires(!std::is_same_v<std::remove_cvref_t<F>, function_ref> &&
             std::is_invocable_r_v<R, F&, A...>)
  function_ref(F&& f) noexcept  // NOLINT: implicit by design, like std::function
      : obj_(const_cast<void*>(static_cast<const void*>(std::addressof(f)))),
        call_([](void* o, A... a) -> R {
          return std::invoke(*static_cast<std::remove_reference_t<F>*>(o), std::forward<A>(a)...);
        }) {}

  R operator()(A... a) const { return call_(obj_, std::forward<A>(a)...); }

 private:
  void* obj_;
  R (*call_)(void*, A...);
};

inline bool on_main_thread() noexcept { return ::gettid() == ::getpid(); }

/// True on the service thread: a job that asks for it again runs in place (it would
/// otherwise wait on itself).
inline thread_local bool in_stable_thread = false;

/// The one long-lived service thread: runs a job for a thread that may not outlive
/// its children (forks, and spawns, both tie PR_SET_PDEATHSIG to the calling thread).
/// One request at a time; the job's exception reaches the caller.
struct stable_thread {
  std::mutex call_m;  // one request at a time
  std::mutex m;
  std::condition_variable cv;
  function_ref<void()>* job = nullptr;
  bool done = false;
  std::exception_ptr error;

  stable_thread() {
    std::thread([this] { serve(); }).detach();
  }

  void serve() {
    in_stable_thread = true;
    std::unique_lock lk(m);
    for (;;) {
      cv.wait(lk, [&] { return job != nullptr; });
      try {
        (*job)();
      } catch (...) {
        error = std::current_exception();
      }
      job = nullptr;
      done = true;
      cv.notify_all();
    }
  }

  void run(function_ref<void()> f) {
    std::lock_guard call(call_m);
    std::unique_lock lk(m);
    job = &f;
    done = false;
    error = nullptr;
    cv.notify_all();
    cv.wait(lk, [&] { return done; });
    if (error) std::rethrow_exception(std::exchange(error, nullptr));
  }
};

struct stable_thread_globals {
  std::mutex create_m;
  stable_thread* service = nullptr;  // leaked on purpose: the thread never ends
};

inline stable_thread_globals& stable_thread_state() {
  static stable_thread_globals* g = new stable_thread_globals;
  return *g;
}

// In a forked child the service thread does not exist (only the forking thread is
// copied), and its mutexes may have been held by threads that are gone: start afresh.
inline void stable_thread_after_fork_child() noexcept {
  auto& g = stable_thread_state();
  new (&g.create_m) std::mutex;
  g.service = nullptr;
}

inline const int stable_thread_atfork_registered = [] {
  stable_thread_state();
  return set_fork_hook(fork_hook_slot::stable_thread, {.child = &stable_thread_after_fork_child});
}();

/// Runs f on a thread that lives as long as this process: here when called on the
/// main thread, else on the service thread (the caller waits).
template <class F>
void run_on_stable_thread(F&& f) {
  if (on_main_thread() || in_stable_thread) {
    f();
    return;
  }
  stable_thread* svc;
  {
    auto& g = stable_thread_state();
    std::lock_guard lk(g.create_m);
    if (!g.service) g.service = new stable_thread;
    svc = g.service;
  }
  svc->run(function_ref<void()>(f));
}

/// Like fork_child, but the child's death signal is tied to a thread that lives as
/// long as this process: the main thread, or the service thread when called elsewhere.
template <class Body>
pid_t fork_child_stable(Body&& body) {
  if (on_main_thread()) return fork_child(std::forward<Body>(body));
  pid_t pid = -1;
  run_on_stable_thread([&] { pid = fork_child(body); });
  return pid;
}

}  // namespace mproc::detail
