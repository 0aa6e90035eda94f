/// \file
/// The bodies of async_result.hpp: included by it in the header-only mode, compiled once
/// by src/mproc.cpp otherwise (see MPROC_FUNC).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "async_result.hpp"

namespace mproc::detail {

MPROC_FUNC bool async_state_base::cancel() {
  {
    // Under the mutex: a result already done (say, failed by terminate() before it
    // started) stays as it is.
    std::lock_guard g(m);
    std::uint8_t p = pending;
    if (done || !phase.compare_exchange_strong(p, cancelled, std::memory_order_acq_rel))
      return phase.load(std::memory_order_acquire) == cancelled;
  }
  // Nothing else finishes a cancelled result: the job skips it from now on.
  finish(std::make_exception_ptr(cancelled_error("AsyncResult: the task was cancelled")));
  return true;
}

MPROC_FUNC bool async_state_base::listen(const std::shared_ptr<completion_listener>& l, std::size_t index) {
  std::lock_guard g(m);
  if (done) return false;
  std::erase_if(listeners, [](const auto& e) { return e.first.expired(); });
  listeners.emplace_back(l, index);
  return true;
}

MPROC_FUNC void async_state_base::on_done(std::function<void()> fn) {
  {
    std::lock_guard g(m);
    if (!done) {
      done_callbacks.push_back(std::move(fn));
      return;
    }
  }
  run_guarded(fn, "a done callback");
}

MPROC_FUNC bool async_state_base::wait_until(deadline_t d) {
  help_while_waiting(helper, [&] { return done_flag.load(std::memory_order_acquire); }, d);
  std::unique_lock l(m);
  return wait_until_deadline(cv, l, d, [&] { return done; });
}

MPROC_FUNC void async_state_base::finish(std::exception_ptr e) {
  std::vector<std::pair<std::weak_ptr<completion_listener>, std::size_t>> ls;
  std::vector<std::function<void()>> cbs;
  {
    std::lock_guard l(m);
    if (done) return;
    error = std::move(e);
    done = true;
    done_flag.store(true, std::memory_order_release);
    ls.swap(listeners);
    cbs.swap(done_callbacks);
  }
  cv.notify_all();
  for (auto& [wl, idx] : ls)
    if (auto lst = wl.lock()) {
      {
        std::lock_guard g(lst->m);
        lst->done.push_back(idx);
      }
      lst->cv.notify_all();
    }
  for (auto& fn : cbs) run_guarded(fn, "a done callback");
}
}  // namespace mproc::detail
