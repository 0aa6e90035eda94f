// Forking from a thread that lives as long as the process.
//
// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not when the
// parent process does. A child forked from a short-lived std::thread would be killed
// the moment that thread ends. The main thread lives as long as the process, so forks
// requested there happen directly; forks requested on any other thread are handed to
// one long-lived service thread that does the fork() itself.
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

struct forker_service {
  std::mutex call_m;  // one request at a time
  std::mutex m;
  std::condition_variable cv;
  function_ref<int()>* job = nullptr;
  bool done = false;
  pid_t result = -1;
  std::exception_ptr error;

  forker_service() {
    std::thread([this] { serve(); }).detach();
  }

  void serve() {
    std::unique_lock lk(m);
    for (;;) {
      cv.wait(lk, [&] { return job != nullptr; });
      try {
        result = fork_child(*job);
      } catch (...) {
        error = std::current_exception();
      }
      job = nullptr;
      done = true;
      cv.notify_all();
    }
  }

  pid_t fork(function_ref<int()> body) {
    std::lock_guard call(call_m);
    std::unique_lock lk(m);
    job = &body;
    done = false;
    result = -1;
    error = nullptr;
    cv.notify_all();
    cv.wait(lk, [&] { return done; });
    if (error) std::rethrow_exception(std::exchange(error, nullptr));
    return result;
  }
};

struct forker_globals {
  std::mutex create_m;
  forker_service* service = nullptr;  // leaked on purpose: the thread never ends
};

inline forker_globals& forker_state() {
  static forker_globals* g = new forker_globals;
  return *g;
}

// In a forked child the service thread does not exist (only the forking thread is
// copied), and its mutexes may have been held by threads that are gone: start afresh.
inline void forker_after_fork_child() noexcept {
  auto& g = forker_state();
  new (&g.create_m) std::mutex;
  g.service = nullptr;
}

inline const int forker_atfork_registered = [] {
  forker_state();
  return set_fork_hook(fork_hook_slot::forker, {.child = &forker_after_fork_child});
}();

/// Like fork_child, but the child's death signal is tied to a thread that lives as
/// long as this process: the main thread, or the service thread when called elsewhere.
template <class Body>
pid_t fork_child_stable(Body&& body) {
  if (on_main_thread()) return fork_child(std::forward<Body>(body));
  function_ref<int()> ref(body);
  forker_service* svc;
  {
    auto& g = forker_state();
    std::lock_guard lk(g.create_m);
    if (!g.service) g.service = new forker_service;
    svc = g.service;
  }
  return svc->fork(ref);
}

}  // namespace mproc::detail
