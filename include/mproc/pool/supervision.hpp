/// \file
/// Pool stage 9, worker supervision: starting a worker, accounting for one that exits
/// (its finished results kept, the item it was running failed, the rest re-sent),
/// starting its replacement, and stopping them all. Members of basic_pool, declared
/// in engine.hpp. Before: engine.hpp; the last stage.
#pragma once

#include "engine.hpp"

namespace mproc {

template <class Policy>
void basic_pool<Policy>::start_worker(detail::worker_slot& w) {
  using namespace detail;
  const std::size_t ring_bytes = spsc_ring::bytes_needed(ring_capacity);
  w.region = shm_region::create(sizeof(worker_ctl) + 2 * ring_bytes, "mproc-pool-worker");
  auto* base = static_cast<std::byte*>(w.region.data());
  w.ctl = new (base) worker_ctl{};
  w.tasks = spsc_ring::init(base + sizeof(worker_ctl), ring_capacity);
  w.results = spsc_ring::init(base + sizeof(worker_ctl) + ring_bytes, ring_capacity);
  w.outstanding.clear();
  w.outstanding_items = 0;
  w.write_offset = w.write_index = 0;
  w.rx.clear();
  w.stopping = w.timed_out = false;
  w.last_result_ns = 0;
  w.number = ++pool_worker_counter();
  std::string name = "PoolWorker-" + std::to_string(w.number);
  auto tasks = w.tasks, results = w.results;
  auto* ctl = w.ctl;
  auto* shared = shared_;
  int wfd = wake_fd_.get();
  const portable_call& init = opts_.initializer;
  std::size_t max_tasks = opts_.max_tasks_per_child;
  const bool timed = bool(opts_.task_timeout);
  auto body = [&]() -> int {
    return worker_main(tasks, results, ctl, shared, wfd, init, max_tasks, timed, name);
  };
  // The same worker for a fresh program image: rings and wake-up by descriptor.
  std::vector<std::byte> payload;
  vector_writer pw{&payload};
  encode(pw, std::uint64_t(ring_capacity));
  encode(pw, std::uint64_t(w.region.size()));
  encode(pw, std::uint64_t(shared_region_.size()));
  encode(pw, std::uint64_t(max_tasks));
  encode(pw, std::uint8_t(timed));
  encode(pw, name);
  init.encode_to_writer(pw);
  // A fresh image shares the program's resource tracker (started now if need be,
  // as for a spawned Process); a forked worker inherits it anyway.
  bool fresh_image = !std::is_same_v<Policy, fork_policy>;
  if constexpr (std::is_same_v<Policy, dynamic_policy>)
    fresh_image = opts_.method.value_or(get_start_method()) != start_method::fork;
  if (fresh_image) resource_tracker::instance().ensure_running();
  const auto [tracker_fd, tracker_pid] = resource_tracker::instance().running();
  encode(pw, std::int32_t(tracker_fd >= 0 ? tracker_pid : -1));
  const int fds[4] = {w.region.fd(), shared_region_.fd(), wfd, tracker_fd};
  launch_request req{name, true, opts_.method, body};
  req.entry = &pool_worker_entry;
  req.payload = payload;
  req.fds = std::span<const int>(fds, tracker_fd >= 0 ? 4 : 3);
  // A fresh image is confirmed later (confirm_worker), so that several start up at once.
  launched_child child = launch_deferred<Policy>(req);
  try {
    if (!child.pidfd && !child.status) child.pidfd = pidfd_open(child.pid);
  } catch (...) {
    // Only a child without a status socket gets here, so it is ours to reap (a
    // forkserver's child is the server's); an unconfirmed one is killed and reaped as
    // its start is dropped.
    if (!child.unconfirmed) {
      kill_quietly(child.pid, SIGKILL);
      int status;
      waitpid_eintr(child.pid, &status, 0);
    }
    throw;
  }
  w.pid = child.pid;
  w.status = std::move(child.status);
  w.pidfd = std::move(child.pidfd);
  w.unconfirmed = std::move(child.unconfirmed);
  log(log_level::debug, "started %s (pid %d)", name.c_str(), static_cast<int>(w.pid));
}

template <class Policy>
void basic_pool<Policy>::confirm_worker(detail::worker_slot& w) {
  if (!w.unconfirmed) return;
  launched_child c;
  c.unconfirmed = std::move(w.unconfirmed);
  try {
    detail::confirm_launch<Policy>(c);
  } catch (...) {
    w.pid = -1;  // killed and reaped by the failed confirmation
    w.pidfd.reset();
    throw;
  }
}

template <class Policy>
void basic_pool<Policy>::handle_exit(detail::worker_slot& w) {
  int code = 255;
  if (w.status) {
    std::int32_t c = 0;
    ssize_t n = detail::read_eintr(w.status.get(), &c, sizeof c);
    code = n == sizeof c ? c : 255;
    w.status.reset();
  } else {
    int status = 0;
    pid_t r = detail::waitpid_eintr(w.pid, &status, WNOHANG);
    if (r == 0) return;  // not actually gone yet
    code = r > 0 ? detail::exitcode_from_status(status) : 255;
  }
  // Every result it finished counts, published or not: then the item it was running
  // is exactly the next one of its first chunk.
  w.results.adopt_unpublished(w.ctl->results_committed.load(std::memory_order_acquire),
                              w.ctl->open_at.load(std::memory_order_acquire),
                              w.ctl->open_len.load(std::memory_order_acquire));
  drain_results(w);
  w.rx.clear();  // a result it was still streaming out will not be completed
  const bool was_initialized = w.ctl->initialized.load(std::memory_order_acquire) != 0;
  const std::int64_t started = w.ctl->cur_started_ns.load(std::memory_order_acquire);
  const std::uint64_t cur_job = w.ctl->cur_job.load(), cur_item = w.ctl->cur_item.load();
  const std::uint64_t chunk_job = w.ctl->chunk_job.load(), chunk_first = w.ctl->chunk_first.load();
  // Bytes of its first chunk had reached it: it may have died receiving that chunk
  // (one too big to reassemble), before reading its header.
  const bool was_receiving = was_initialized && (w.write_index > 0 || w.write_offset > 0);
  if (code != 0 || w.timed_out)
    detail::log(log_level::warning, "pool worker %d died (exit code %d)",
                static_cast<int>(w.pid), code);
  bool first = true;
  for (auto& c : w.outstanding) {
    std::uint32_t from = c.done;
    bool item_failed = false;
    if (first && (started || w.timed_out) && c.job->id == cur_job &&
        c.first + c.done == cur_item) {
      // The item it was running when it died: that one fails.
      std::exception_ptr e;
      if (w.timed_out && w.timed_out_item == cur_item && w.timed_out_job == cur_job) {
        e = std::make_exception_ptr(timeout_error(
            "task " + std::to_string(cur_item) + " exceeded task_timeout; its worker (pid " +
            std::to_string(w.pid) + ") was killed"));
      } else {
        const int sig = code < 0 ? -code : 0;
        std::string what = "worker process " + std::to_string(w.pid) +
                           " died while running task " + std::to_string(cur_item) +
                           (sig ? " (killed by signal " + std::to_string(sig) + ")"
                                : " (exit code " + std::to_string(code) + ")");
        e = std::make_exception_ptr(worker_died(what, w.pid, code, sig));
      }
      c.job->fail(cur_item, std::move(e));
      ++c.job->completed;
      c.job->report_progress();
      from = c.done + 1;
      item_failed = true;
    }
    // A chunk the worker had received and died on before finishing or starting any
    // item (it failed while decoding or receiving it, say) is sent again; after
    // max_chunk_deaths such deaths in a row its items fail instead, so a task that
    // kills every worker cannot keep the pool restarting workers for ever. Exit
    // status 0 counts too: a retiring worker never leaves inside a chunk.
    const bool progressed = c.done > 0 || item_failed;
    std::uint32_t deaths = progressed ? 0 : c.deaths;
    if (first && !progressed && ((c.job->id == chunk_job && c.first == chunk_first) || was_receiving))
      ++deaths;
    first = false;
    queue_finish(c.job);
    if (deaths >= max_chunk_deaths) {
      const int sig = code < 0 ? -code : 0;
      for (std::uint32_t k = from; k < c.count; ++k) {
        std::string what = "worker processes died " + std::to_string(deaths) +
                           " times in a row running the chunk of task " +
                           std::to_string(c.first + k) + " before any of its tasks finished" +
                           (sig ? " (last killed by signal " + std::to_string(sig) + ")"
                                : " (last exit code " + std::to_string(code) + ")");
        c.job->fail(c.first + k, std::make_exception_ptr(worker_died(what, w.pid, code, sig)));
        ++c.job->completed;
      }
      c.job->report_progress();
      continue;
    }
    if (from < c.count) {
      retry_.push_back(rebuild_chunk(c, from));
      retry_.back().deaths = deaths;
    }
  }
  w.outstanding.clear();
  std::lock_guard l(m_);
  if (state_ == run_state::terminating) return;
  // A worker that dies before it finished starting while another one did start was
  // killed from outside (the start itself works): replace it, never give up on it.
  if (!was_initialized && code != 0 && !another_worker_started(w)) {
    if (++failed_starts_ >= 3) {
      throw error("Pool: workers keep dying before they finish starting (exit code " +
                  std::to_string(code) + "); is the initializer failing?");
    }
  } else {
    failed_starts_ = 0;
  }
  if (w.stopping) {
    w.pid = -1;
    return;
  }
  start_replacement(w);
}

template <class Policy>
bool basic_pool<Policy>::another_worker_started(const detail::worker_slot& w) const {
  for (const auto& o : workers_)
    if (&o != &w && o.pid > 0 && o.ctl && o.ctl->initialized.load(std::memory_order_acquire))
      return true;
  return false;
}

template <class Policy>
void basic_pool<Policy>::start_replacement(detail::worker_slot& w) {
  for (int launch_failures = 0;;) {
    try {
      start_worker(w);
      confirm_worker(w);
      return;
    } catch (const start_method_error&) {
      w.pid = -1;
      w.pidfd.reset();
      w.status.reset();
      const bool others_start = another_worker_started(w);
      if ((!others_start && ++failed_starts_ >= 3) || ++launch_failures >= 100) throw;
      detail::log(log_level::warning, "pool worker died while starting; starting another");
    }
  }
}

template <class Policy>
detail::outstanding_chunk basic_pool<Policy>::rebuild_chunk(const detail::outstanding_chunk& c,
                                               std::uint32_t from) {
  detail::outstanding_chunk n;
  n.job = c.job;
  n.first = c.first + from;
  n.count = c.count - from;
  detail::task_header h;
  std::memcpy(&h, c.bytes.data(), sizeof h);
  const std::size_t prefix = sizeof h + h.callable_len;
  n.bytes.assign(c.bytes.begin(), c.bytes.begin() + static_cast<std::ptrdiff_t>(prefix));
  if (h.item_size) {  // packed: fixed-size items, no offsets kept
    const std::size_t begin = prefix + std::size_t(from) * h.item_size;
    n.bytes.insert(n.bytes.end(), c.bytes.begin() + static_cast<std::ptrdiff_t>(begin),
                   c.bytes.end());
  }
  for (std::uint32_t k = from; !h.item_size && k < c.count; ++k) {
    const std::size_t begin = c.item_offsets[k];
    const std::size_t end = k + 1 < c.count ? c.item_offsets[k + 1] : c.bytes.size();
    n.item_offsets.push_back(static_cast<std::uint32_t>(n.bytes.size()));
    n.bytes.insert(n.bytes.end(), c.bytes.begin() + static_cast<std::ptrdiff_t>(begin),
                   c.bytes.begin() + static_cast<std::ptrdiff_t>(end));
  }
  h.first = n.first;
  h.count = n.count;
  std::memcpy(n.bytes.data(), &h, sizeof h);
  return n;
}

template <class Policy>
void basic_pool<Policy>::shutdown_workers(std::exception_ptr fatal) {
  bool terminating;
  {
    std::lock_guard l(m_);
    terminating = state_ == run_state::terminating || fatal;
    if (fatal) state_ = run_state::terminating;
  }
  if (!terminating) {
    for (auto& w : workers_) {
      w.stopping = true;
      detail::task_header h{static_cast<std::uint32_t>(detail::task_kind::stop), 0, 0, 0, 0, 0, 0};
      std::byte* p = nullptr;
      const detail::deadline_t deadline = detail::deadline_after(2'000'000'000);
      while (!(p = w.tasks.try_reserve(sizeof h)) && !detail::deadline_passed(deadline))
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      if (p) {
        std::memcpy(p, &h, sizeof h);
        w.tasks.commit(sizeof h, 0);
        w.tasks.publish();
      }
    }
  }
  for (auto& w : workers_) {
    if (w.pid <= 0) continue;
    if (terminating) detail::kill_quietly(w.pid, SIGKILL);
    pollfd p{w.status ? w.status.get() : w.pidfd.get(), POLLIN, 0};
    if (detail::poll_until(&p, 1, detail::deadline_after(5'000'000'000)) == 0) {
      detail::kill_quietly(w.pid, SIGKILL);
      detail::poll_until(&p, 1, detail::deadline_after(5'000'000'000));
    }
    if (!w.status) {  // a forkserver's child is reaped by the forkserver
      int status;
      detail::waitpid_eintr(w.pid, &status, 0);
    }
    w.pid = -1;
    w.pidfd.reset();
    w.status.reset();
  }
  // Anything still pending can no longer run.
  auto gone = fatal ? fatal
                    : std::make_exception_ptr(
                          pool_not_running("Pool: terminated before the task completed"));
  std::vector<std::unique_ptr<detail::job_base>> all;
  {
    std::lock_guard l(m_);
    for (auto& j : incoming_) all.push_back(std::move(j));
    incoming_.clear();
    state_ = run_state::terminating;
  }
  for (auto& [p, j] : jobs_) all.push_back(std::move(j));
  jobs_.clear();
  feeding_.clear();
  finishing_.clear();
  retry_.clear();
  // Nothing may refer to the jobs once they are freed: a caller stepping the engine
  // after this (an imap_range going out of scope, say) finds no work.
  for (auto& w : workers_) {
    w.outstanding.clear();
    w.outstanding_items = 0;
    w.write_index = w.write_offset = 0;
    w.rx.clear();
  }
  last_job_ = nullptr;
  stopped_ = true;
  active_.store(false, std::memory_order_release);
  for (auto& j : all) j->complete(gone);
  detail::log(log_level::info, "pool stopped");
}

}  // namespace mproc
