/// \file
/// Pool stage 8, the engine: basic_pool (mproc::Pool) with its worker slots,
/// scheduling, and the service loop. Before: interface.hpp; next: supervision.hpp (worker
/// launch, crash recovery and shutdown).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <ranges>
#include <span>
#include <string>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include "async_result.hpp"
#include "interface.hpp"
#include "jobs.hpp"
#include "options.hpp"
#include "wire.hpp"
#include "worker.hpp"
#include "../context.hpp"
#include "../process.hpp"
#include "../detail/callable.hpp"
#include "../detail/input_view.hpp"
#include "../detail/log.hpp"
#include "../detail/posix/fork.hpp"
#include "../detail/posix/posix.hpp"
#include "../detail/posix/process_calls.hpp"
#include "../detail/posix/shm_region.hpp"
#include "../detail/remote_exception.hpp"
#include "../detail/spsc_ring.hpp"
#include "../errors.hpp"
#include "../serialization.hpp"
#include "../version.hpp"

namespace mproc {

namespace detail {

struct outstanding_chunk {
  job_base* job;
  std::uint64_t first;
  std::uint32_t count;
  std::uint32_t done = 0;
  std::uint32_t deaths = 0;                // workers that died on it in a row, no item done
  std::vector<std::byte> bytes;            // the task message, kept to resend on a crash
  std::vector<std::uint32_t> item_offsets; // where each item starts in bytes
};

struct worker_slot {
  pid_t pid = -1;
  unique_fd pidfd;
  unique_fd status;  // forkserver: the exit code arrives here (not our child to reap)
  shm_region region;
  worker_ctl* ctl = nullptr;
  spsc_ring tasks, results;
  std::deque<outstanding_chunk> outstanding;
  std::size_t outstanding_items = 0;
  std::size_t write_offset = 0;  // bytes of outstanding[write_index] already in the ring
  std::size_t write_index = 0;   // first chunk not yet fully written
  std::vector<std::byte> rx;     // reassembly of a fragmented result
  bool stopping = false;         // a stop message was queued
  bool timed_out = false;
  std::uint64_t timed_out_item = 0, timed_out_job = 0;
  unsigned number = 0;
  std::int64_t last_result_ns = 0;
  std::unique_ptr<deferred_spawn> unconfirmed;  // started, not yet handed its work
};

}  // namespace detail

/// Worker pool, as Python's multiprocessing.Pool. `basic_pool<Policy>` starts its
/// workers with Policy; mproc::Pool (basic_pool<dynamic_policy>) reads the start method
/// at run time. Not copyable; all members may be called from any thread.
///
/// A worker that dies mid-task fails exactly that task with worker_died and is
/// replaced; close() refuses new work, join() waits for it, and the destructor does
/// both, so outstanding work is never lost. The task calls (map, imap, apply_async, ...)
/// are those of pool_interface.
/// \code
/// mproc::Pool pool(4);
/// std::vector<int> squares = pool.map(square, std::views::iota(1, 11));
/// for (int s : pool.imap(square, std::views::iota(0))) if (s > 100) break;  // lazy
/// auto r = pool.apply_async(square, 12);   // AsyncResult<int>
/// int v = r.get(std::chrono::seconds(2));  // timeout_error if not ready by then
/// \endcode
template <class Policy>
class basic_pool : public pool_interface<basic_pool<Policy>>, detail::run_control {
  friend class pool_interface<basic_pool>;

 public:
  /// A pool of cpu_count() workers.
  basic_pool() : basic_pool(pool_options{}) {}
  /// A pool of `processes` workers (0: cpu_count()).
  explicit basic_pool(std::size_t processes) : basic_pool(pool_options{.processes = processes}) {}
  /// A pool with `opts` (workers, start method, initializer, max_tasks_per_child, task_timeout).
  explicit basic_pool(pool_options opts);
  basic_pool(const basic_pool&) = delete;
  basic_pool& operator=(const basic_pool&) = delete;

  /// Closes and joins: outstanding work finishes, nothing is lost.
  ~basic_pool();

  /// The number of worker processes.
  [[nodiscard]] std::size_t processes() const noexcept { return opts_.processes; }

  /// For backends that bring chunks encoded elsewhere (mproc::mpi's worker ranks, see
  /// pool/relay.hpp): runs `job` on this pool's workers like a call's own chunks.
  /// Raises pool_not_running once the pool is closed.
  void enqueue_job(std::unique_ptr<detail::job_base> job) { enqueue(std::move(job)); }

 private:
  static constexpr const char* pool_name = "Pool";
  using run_state = detail::run_state;
  void wake_service() { force_wake(); }

  // The backend's part of pool_interface's submission stage.
  template <class State>
  void attach(State& st) const {
    st.helper = helper_;  // a caller waiting on a result helps the service thread
  }
  /// Enough in flight to keep every worker busy, little enough to bound memory.
  std::size_t imap_window(std::size_t chunksize) const {
    return std::max<std::size_t>(64, 8 * opts_.processes * chunksize);
  }
  template <class D, class V, bool Star>
  void enqueue_task(std::unique_ptr<detail::job_base> job) {
    enqueue(std::move(job));
  }

  void enqueue(std::unique_ptr<detail::job_base> job);

  // ------------------------------------------------------------ workers

  static constexpr std::size_t ring_capacity = 256 * 1024;
  void start_worker(detail::worker_slot& w);
  void confirm_worker(detail::worker_slot& w);

  // ------------------------------------------------------------ the engine
  //
  // All service state (worker slots, jobs) is guarded by engine_m_. The service thread
  // holds it while it steps; a caller waiting for a result may take it too and step
  // itself (try_step), which keeps the service thread asleep. Only the service thread
  // sleeps in poll() and handles worker exits.

  /// One pass: accept new jobs, collect results, hand out work, complete jobs.
  bool step();

  static bool helper_try_step(void* self) { return static_cast<basic_pool*>(self)->try_step(); }
  static void helper_end_help(void* self) { static_cast<basic_pool*>(self)->end_help(); }
  static void helper_wake(void* self) { static_cast<basic_pool*>(self)->nudge(); }

  /// Called by user threads after they change what the engine should do (new job,
  /// consumer caught up): step once right here, then leave the usual way, so the
  /// change is acted on whether or not the service thread is awake.
  void nudge() {
    try_step();
    end_help();
  }

  bool try_step();

  /// A caller stops driving: if work is still in flight, make sure the service thread
  /// hears of results (the same arm-then-recheck protocol it uses before sleeping).
  void end_help();

  void force_wake() {
    detail::eventfd_signal(wake_fd_.get());
  }

  void service();
  void service_loop();

  static constexpr std::int64_t spin_ns = 30'000;

  /// ms until the earliest task deadline, -1 if none.
  int next_deadline_ms();
  void build_pollfds(std::vector<pollfd>& fds);
  std::vector<pollfd>& poll_events(std::vector<pollfd>& fds, int timeout_ms);

  /// Acts on poll results: drains the wake counter, handles worker exits.
  void handle_events(std::vector<pollfd>& fds);
  void enforce_timeouts();

  /// Reads every complete result a worker has published.
  bool drain_results(detail::worker_slot& w);
  void handle_result(detail::worker_slot& w, std::span<const std::byte> msg);

  static constexpr std::uint32_t max_chunk_deaths = 3;
  void items_completed(detail::worker_slot& w, detail::outstanding_chunk& c, std::uint32_t n);

  /// Finished chunks give their buffers back, so steady streams allocate nothing.
  void recycle(detail::outstanding_chunk&& c);

  /// How many items a worker may hold for a job: enough to hide the wake-up latency
  /// for tiny tasks, few enough that slow or unknown ones stay balanced (Python hands
  /// out one task at a time).
  static std::size_t prefetch_limit(const detail::job_base* j);

  /// map's default chunk: about 5 ms of work by the measured cost per item, and no
  /// more than a quarter of each worker's share of what is left (unless that is under
  /// 0.1 ms of work), never more than Python's size. The estimate trails costs that
  /// grow along the input; the share of what is left keeps the late, costly chunks
  /// small anyway, so the last ones end close together. Not 1 ms: a chunk costs more
  /// than the parent's 2 us to hand out, since when the workers fill every core each
  /// wake-up of the parent preempts one of them (factorials of 1..2000 on 2 cores: 4-8%
  /// faster at 5 ms; the last two chunks still end within 1-3 ms of each other). Until
  /// a cost is known, Python's size: a smaller probe costs tiny tasks a round trip.
  std::size_t auto_chunksize(const detail::job_base& j) const;

  /// Gives a worker more work and pushes pending bytes into its ring.
  bool feed(detail::worker_slot& w);

  /// The oldest job that can hand out more items. Jobs whose input is done leave the
  /// queue as they are met, so with many jobs in flight this stays cheap. (A job blocked
  /// on its consumer stays; done jobs behind it are near the front, cheap to erase.)
  detail::job_base* next_job();

  /// j may have finished: finish_jobs looks at it (and only at such jobs).
  void queue_finish(detail::job_base* j) {
    if (j->finish_queued) return;
    j->finish_queued = true;
    finishing_.push_back(j);
  }

  bool push_bytes(detail::worker_slot& w);
  void finish_jobs();
  bool chunks_reference(const detail::job_base* j) const {
    for (auto& c : retry_)
      if (c.job == j) return true;
    return false;
  }

  /// A worker's pidfd fired: account for its tasks and start a replacement.
  void handle_exit(detail::worker_slot& w);
  [[nodiscard]] bool another_worker_started(const detail::worker_slot& w) const;

  /// Starts the replacement of a dead worker. A replacement killed before it reached
  /// mproc::init (spawn) fails to launch: that is one more worker dying while starting,
  /// and counts as such.
  void start_replacement(detail::worker_slot& w);

  /// A chunk holding items [from, count) of c, to run again elsewhere.
  static detail::outstanding_chunk rebuild_chunk(const detail::outstanding_chunk& c,
                                                 std::uint32_t from);

  /// Stops every worker: politely when all work is done, by SIGKILL otherwise.
  void shutdown_workers(std::exception_ptr fatal);
  pool_options opts_;
  detail::shm_region shared_region_;
  detail::pool_shared* shared_ = nullptr;
  detail::unique_fd wake_fd_;
  std::vector<detail::worker_slot> workers_;
  std::vector<std::unique_ptr<detail::job_base>> incoming_;
  std::atomic<bool> has_incoming_{false};
  std::uint64_t next_job_id_ = 0;

  // Owned by the service thread.
  std::unordered_map<std::uint64_t, std::unique_ptr<detail::job_base>> jobs_;  // by id
  std::deque<std::uint64_t> feeding_;         // jobs whose input was not done, oldest first
  std::vector<detail::job_base*> finishing_;  // may have finished
  bool stopped_ = false;                      // shutdown_workers ran
  std::deque<detail::outstanding_chunk> retry_;
  detail::job_base* last_job_ = nullptr;  // job of the last result handled
  std::exception_ptr fatal_;              // set by a helper whose step failed
  std::vector<std::pair<std::vector<std::byte>, std::vector<std::uint32_t>>> spare_;
  int failed_starts_ = 0;

  std::mutex engine_m_;  // guards everything the service thread owns
  std::atomic<std::thread::id> engine_owner_{};
  std::atomic<bool> active_{false};  // jobs in flight (readable without engine_m_)
  std::atomic<std::int64_t> last_help_ns_{0};  // when a caller last stepped the engine
  std::shared_ptr<detail::pool_helper> helper_;
};

/// The pool most programs use: its start method is pool_options::method, else
/// get_start_method(). See basic_pool.
using Pool = basic_pool<dynamic_policy>;

// ------------------------------------------------------------ the bodies
//
// MPROC_FUNC: inline in the header-only mode, as they were when written in the class;
// in the compiled mode not inline, so that the extern template declarations below keep
// every file from instantiating them for the library's own policies.

template <class Policy>
MPROC_FUNC basic_pool<Policy>::basic_pool(pool_options opts) : opts_(std::move(opts)) {
  // A negative int arrives as a huge size_t; no system runs more processes than
  // its pid space (PID_MAX_LIMIT).
  if (opts_.processes > (std::size_t(1) << 22))
    throw value_error("mproc::Pool: processes " + std::to_string(opts_.processes) +
                      " is negative or too large (0 means cpu_count())");
  if (opts_.max_tasks_per_child > std::size_t(PTRDIFF_MAX))
    throw value_error("mproc::Pool: max_tasks_per_child " + std::to_string(opts_.max_tasks_per_child) +
                      " is negative (0 means no limit)");
  if (opts_.processes == 0) opts_.processes = cpu_count();
  shared_region_ = detail::shm_region::create(sizeof(detail::pool_shared), "mproc-pool");
  shared_ = new (shared_region_.data()) detail::pool_shared{};
  wake_fd_ = detail::make_eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK, "eventfd");
  helper_ = std::make_shared<detail::pool_helper>();
  helper_->pool = this;
  helper_->try_step = &helper_try_step;
  helper_->end_help = &helper_end_help;
  helper_->wake = &helper_wake;
  workers_.resize(opts_.processes);
  try {
    // Every worker is launched before any is waited for: fresh images start up at once.
    for (auto& w : workers_) start_worker(w);
    for (auto& w : workers_) confirm_worker(w);
  } catch (...) {
    // None of the workers started so far outlives the constructor that failed.
    for (auto& w : workers_)
      if (w.unconfirmed) {
        w.unconfirmed.reset();  // kills and reaps it
        w.pid = -1;
      }
    shutdown_workers(std::current_exception());
    throw;
  }
  detail::log(log_level::info, "pool started with %zu workers", workers_.size());
  thread_ = std::thread([this] {
    detail::block_async_signals();  // the program's signals go to the program's threads
    service();
  });
}

template <class Policy>
MPROC_FUNC basic_pool<Policy>::~basic_pool() {
  try {
    if (!joined_) {
      this->close();
      this->join();
    }
  } catch (...) {
    this->terminate();
  }
  std::lock_guard hl(helper_->m);  // results outliving the pool stop driving it
  helper_->pool = nullptr;
}

template <class Policy>
MPROC_FUNC void basic_pool<Policy>::enqueue(std::unique_ptr<detail::job_base> job) {
  {
    std::lock_guard l(m_);
    require_running(pool_name);
    job->id = ++next_job_id_;
    incoming_.push_back(std::move(job));
    has_incoming_.store(true, std::memory_order_seq_cst);
  }
  nudge();
}

template <class Policy>
MPROC_FUNC bool basic_pool<Policy>::step() {
  if (stopped_) return false;  // the workers are gone; jobs were completed and freed
  bool progress = false;
  if (has_incoming_.load(std::memory_order_acquire)) {
    std::lock_guard l(m_);
    for (auto& j : incoming_) {
      detail::job_base* p = j.get();
      if (p->input_done)
        queue_finish(p);  // an empty input
      else
        feeding_.push_back(p->id);
      jobs_.emplace(p->id, std::move(j));
    }
    incoming_.clear();
    has_incoming_.store(false, std::memory_order_relaxed);
    progress = true;
  }
  for (auto& w : workers_) progress |= drain_results(w);
  for (auto& w : workers_) progress |= feed(w);
  finish_jobs();  // also completes jobs whose last item failed with a worker's death
  if (opts_.task_timeout) enforce_timeouts();
  active_.store(!jobs_.empty() || !retry_.empty(), std::memory_order_release);
  return progress;
}

template <class Policy>
MPROC_FUNC bool basic_pool<Policy>::try_step() {
  if (engine_owner_.load(std::memory_order_relaxed) == std::this_thread::get_id())
    return false;  // a callback running inside step() is waiting on a result
  std::unique_lock el(engine_m_, std::try_to_lock);
  if (!el) return false;
  engine_owner_.store(std::this_thread::get_id(), std::memory_order_relaxed);
  // The service thread sleeps while we drive; workers need not wake it.
  shared_->parent_waiting.store(0, std::memory_order_relaxed);
  last_help_ns_.store(detail::monotonic_ns(), std::memory_order_relaxed);
  bool p = false;
  try {
    p = step();
  } catch (...) {
    // A broken protocol is fatal for the pool: the service thread ends it.
    if (!fatal_) fatal_ = std::current_exception();
    force_wake();
  }
  engine_owner_.store({}, std::memory_order_relaxed);
  return p;
}

template <class Policy>
MPROC_FUNC void basic_pool<Policy>::end_help() {
  if (!active_.load(std::memory_order_acquire) && !has_incoming_.load(std::memory_order_acquire))
    return;
  if (engine_owner_.load(std::memory_order_relaxed) == std::this_thread::get_id()) return;
  shared_->parent_waiting.store(1, std::memory_order_seq_cst);
  if (opts_.task_timeout) {  // deadlines must be re-armed by the service thread
    force_wake();
    return;
  }
  // Anything a worker did before the flag was armed is seen by one more step; what
  // it does after will wake the service thread. If the engine is busy, its holder
  // may already be past its last look before sleeping: wake the service thread.
  std::unique_lock el(engine_m_, std::try_to_lock);
  if (!el) {
    force_wake();
    return;
  }
  engine_owner_.store(std::this_thread::get_id(), std::memory_order_relaxed);
  bool p = false;
  try {
    p = step();
  } catch (...) {
    if (!fatal_) fatal_ = std::current_exception();
    p = true;
  }
  engine_owner_.store({}, std::memory_order_relaxed);
  if (p) force_wake();
}

template <class Policy>
MPROC_FUNC void basic_pool<Policy>::service() {
  std::exception_ptr fatal;
  try {
    service_loop();
  } catch (...) {
    fatal = std::current_exception();
    detail::log(log_level::error, "pool service thread failed");
  }
  std::lock_guard el(engine_m_);
  shutdown_workers(fatal);
}

template <class Policy>
MPROC_FUNC void basic_pool<Policy>::service_loop() {
  std::int64_t idle_since = 0;
  std::size_t iterations = 0;
  std::vector<pollfd> fds;
  while (true) {
    std::unique_lock el(engine_m_);
    engine_owner_.store(std::this_thread::get_id(), std::memory_order_relaxed);
    run_state st;
    {
      std::lock_guard l(m_);
      st = state_;
    }
    if (st == run_state::terminating) return;
    if (fatal_) std::rethrow_exception(fatal_);
    const bool progress = step();
    if (st == run_state::closed && jobs_.empty() && retry_.empty()) {
      std::lock_guard l(m_);
      if (incoming_.empty()) return;
    }
    // Deaths are seen on every sleep and every 256 busy rounds.
    if (progress) {
      idle_since = 0;
      if (++iterations % 256 == 0) handle_events(poll_events(fds, 0));
      engine_owner_.store({}, std::memory_order_relaxed);
      continue;
    }
    const std::int64_t now = detail::monotonic_ns();
    if (idle_since == 0) idle_since = now;
    // While a waiting caller drives the engine, spinning here would only take a
    // core from it or from a worker: go straight back to sleep.
    const bool caller_driving = now - last_help_ns_.load(std::memory_order_relaxed) < 200'000;
    if (!caller_driving && now - idle_since < spin_ns) {
      engine_owner_.store({}, std::memory_order_relaxed);
      el.unlock();
      detail::yield_cpu();
      continue;
    }
    // Sleep until a worker or a caller wakes us, a worker exits or a deadline passes.
    // Arm the flag, then look once more: a worker that published results or freed
    // ring room before it saw the flag is caught by this step.
    shared_->parent_waiting.store(1, std::memory_order_seq_cst);
    if (step()) {
      shared_->parent_waiting.store(0, std::memory_order_relaxed);
      engine_owner_.store({}, std::memory_order_relaxed);
      idle_since = 0;
      continue;
    }
    bool pending;
    {
      std::lock_guard l(m_);
      pending = state_ != st;
    }
    const int timeout = pending ? 0 : next_deadline_ms();
    build_pollfds(fds);
    engine_owner_.store({}, std::memory_order_relaxed);
    el.unlock();  // callers may drive while we sleep; worker slots only change here
    int rc = detail::poll_eintr(fds.data(), fds.size(), timeout);
    if (rc < 0) detail::throw_errno("poll(pool)");
    el.lock();
    engine_owner_.store(std::this_thread::get_id(), std::memory_order_relaxed);
    shared_->parent_waiting.store(0, std::memory_order_relaxed);
    handle_events(fds);
    engine_owner_.store({}, std::memory_order_relaxed);
    idle_since = 0;
  }
}

template <class Policy>
MPROC_FUNC int basic_pool<Policy>::next_deadline_ms() {
  if (!opts_.task_timeout) return -1;
  std::int64_t best = -1;
  const std::int64_t now = detail::monotonic_ns();
  for (auto& w : workers_) {
    std::int64_t s = w.ctl->cur_started_ns.load(std::memory_order_acquire);
    if (!s) continue;
    std::int64_t left = s + opts_.task_timeout.ns() - now;
    if (left < 0) left = 0;
    if (best < 0 || left < best) best = left;
  }
  if (best < 0 && active_.load()) best = opts_.task_timeout.ns();  // work may start soon
  return best < 0 ? -1 : static_cast<int>(std::min<std::int64_t>(best / 1'000'000 + 1, 60'000));
}

template <class Policy>
MPROC_FUNC void basic_pool<Policy>::build_pollfds(std::vector<pollfd>& fds) {
  fds.clear();
  fds.push_back({wake_fd_.get(), POLLIN, 0});
  for (auto& w : workers_) fds.push_back({w.status ? w.status.get() : w.pidfd.get(), POLLIN, 0});
}

template <class Policy>
MPROC_FUNC std::vector<pollfd>& basic_pool<Policy>::poll_events(std::vector<pollfd>& fds, int timeout_ms) {
  build_pollfds(fds);
  int rc = detail::poll_eintr(fds.data(), fds.size(), timeout_ms);
  if (rc < 0) detail::throw_errno("poll(pool)");
  return fds;
}

template <class Policy>
MPROC_FUNC void basic_pool<Policy>::handle_events(std::vector<pollfd>& fds) {
  if (fds[0].revents & POLLIN) detail::eventfd_drain(wake_fd_.get());
  for (std::size_t i = 0; i + 1 < fds.size() && i < workers_.size(); ++i)
    if (fds[i + 1].revents) handle_exit(workers_[i]);
}

template <class Policy>
MPROC_FUNC void basic_pool<Policy>::enforce_timeouts() {
  const std::int64_t now = detail::monotonic_ns();
  for (auto& w : workers_) {
    std::int64_t s = w.ctl->cur_started_ns.load(std::memory_order_acquire);
    if (!s || w.timed_out || now - s < opts_.task_timeout.ns()) continue;
    w.timed_out = true;
    w.timed_out_job = w.ctl->cur_job.load();
    w.timed_out_item = w.ctl->cur_item.load();
    detail::log(log_level::warning, "task overran task_timeout; killing worker %d",
                static_cast<int>(w.pid));
    detail::kill_quietly(w.pid, SIGKILL);
  }
}

template <class Policy>
MPROC_FUNC bool basic_pool<Policy>::drain_results(detail::worker_slot& w) {
  std::size_t n = 0;
  const std::size_t items_before = w.outstanding_items;
  last_job_ = nullptr;
  detail::spsc_ring::record rec;
  while (w.results.try_peek(rec)) {
    ++n;
    if (rec.flags & detail::spsc_ring::flag_more) {
      w.rx.insert(w.rx.end(), rec.data, rec.data + rec.len);
      w.results.release(rec);
      w.results.publish_release();  // the worker streams the rest into this room
      continue;
    }
    if (!w.rx.empty()) {
      w.rx.insert(w.rx.end(), rec.data, rec.data + rec.len);
      w.results.release(rec);
      handle_result(w, w.rx);
      w.rx.clear();
    } else {
      handle_result(w, {rec.data, rec.len});
      w.results.release(rec);
    }
  }
  if (!n) return false;
  w.results.publish_release();
  const std::int64_t now = detail::monotonic_ns();
  if (w.last_result_ns && last_job_) {
    const std::int64_t per = (now - w.last_result_ns) / std::int64_t(n);
    auto& avg = last_job_->avg_item_ns;
    avg = avg ? (avg * 3 + per) / 4 : per;
  }
  w.last_result_ns = now;
  // The worker's own time per item in its last chunk, weighted towards the latest so
  // that chunks follow costs that grow along the input.
  if (last_job_ && items_before != w.outstanding_items) {
    const std::int64_t per = w.ctl->last_chunk_item_ns.load(std::memory_order_acquire);
    if (per > 0 && w.ctl->last_chunk_job.load(std::memory_order_relaxed) == last_job_->id) {
      auto& busy = last_job_->busy_item_ns;
      busy = busy ? (busy + per) / 2 : per;
    }
  }
  return true;
}

template <class Policy>
MPROC_FUNC void basic_pool<Policy>::handle_result(detail::worker_slot& w, std::span<const std::byte> msg) {
  detail::reader r{msg.data(), msg.data() + msg.size()};
  detail::result_header h;
  r.get(&h, sizeof h, "result header");
  if (w.outstanding.empty()) throw serialization_error("pool: result for no outstanding task");
  auto& c = w.outstanding.front();
  if (c.job->id != h.job || c.first + c.done != h.index)
    throw serialization_error("pool: result out of order");
  last_job_ = c.job;
  if (h.status == static_cast<std::uint32_t>(detail::result_status::packed)) {
    if (h.count == 0 || h.count > c.count - c.done)
      throw serialization_error("pool: packed result count out of range");
    c.job->deliver_packed(h.index, h.count, r);
    items_completed(w, c, h.count);
    return;
  }
  if (h.status == static_cast<std::uint32_t>(detail::result_status::ok)) {
    c.job->deliver(h.index, r);
  } else {
    detail::encoded_exception ex;
    std::exception_ptr e;
    try {
      detail::decode(r, ex);
      e = detail::to_exception_ptr(ex, w.pid);
    } catch (...) {
      e = std::current_exception();
    }
    c.job->fail(h.index, std::move(e));
  }
  items_completed(w, c, 1);
}

template <class Policy>
MPROC_FUNC void basic_pool<Policy>::items_completed(detail::worker_slot& w, detail::outstanding_chunk& c, std::uint32_t n) {
  c.done += n;
  w.outstanding_items -= n;
  auto* job = c.job;
  job->completed += n;
  job->report_progress();
  if (job->finished()) queue_finish(job);
  if (c.done == c.count) {
    recycle(std::move(c));
    w.outstanding.pop_front();
    if (w.write_index > 0) --w.write_index;
  }
}

template <class Policy>
MPROC_FUNC void basic_pool<Policy>::recycle(detail::outstanding_chunk&& c) {
  if (spare_.size() < 64 && c.bytes.capacity() <= (1u << 20)) {
    c.bytes.clear();
    c.item_offsets.clear();
    spare_.push_back({std::move(c.bytes), std::move(c.item_offsets)});
  }
}

template <class Policy>
MPROC_FUNC std::size_t basic_pool<Policy>::prefetch_limit(const detail::job_base* j) {
  if (!j || j->avg_item_ns <= 0) return 1;
  // Once the cost is known, a second chunk waits in the ring, so a worker never sits
  // idle while the parent wakes up to hand out the next one.
  std::int64_t n = 2'000'000 / std::max<std::int64_t>(j->avg_item_ns, 1);  // ~2 ms of work
  return static_cast<std::size_t>(std::clamp<std::int64_t>(n, std::int64_t(2 * j->chunksize), 4096));
}

template <class Policy>
MPROC_FUNC std::size_t basic_pool<Policy>::auto_chunksize(const detail::job_base& j) const {
  if (j.busy_item_ns <= 0) return j.max_chunk;
  const std::int64_t per = j.busy_item_ns;
  std::int64_t n = 5'000'000 / per;
  if (j.known_total > j.dispatched) {
    const auto left = static_cast<std::int64_t>(j.known_total - j.dispatched);
    const std::int64_t share = left / std::int64_t(4 * opts_.processes);
    n = std::min(n, std::max(share, std::int64_t(100'000) / per));
  }
  return static_cast<std::size_t>(std::clamp<std::int64_t>(n, 1, std::int64_t(j.max_chunk)));
}

template <class Policy>
MPROC_FUNC bool basic_pool<Policy>::feed(detail::worker_slot& w) {
  bool any = false;
  while (!w.stopping) {
    if (!retry_.empty()) {
      if (!w.outstanding.empty()) break;  // re-sent work goes one chunk at a time
      w.outstanding.push_back(std::move(retry_.front()));
      retry_.pop_front();
      w.outstanding_items += w.outstanding.back().count;
      any = true;
      continue;
    }
    detail::job_base* j = next_job();
    if (!j) break;
    if (!w.outstanding.empty() && w.outstanding_items >= prefetch_limit(j)) break;
    detail::outstanding_chunk c;
    if (!spare_.empty()) {
      c.bytes = std::move(spare_.back().first);
      c.item_offsets = std::move(spare_.back().second);
      spare_.pop_back();
    }
    c.job = j;
    c.first = j->dispatched;
    if (j->auto_chunk) j->chunksize = auto_chunksize(*j);
    c.count = j->next_chunk(c.bytes, c.item_offsets);
    if (j->input_done) queue_finish(j);
    if (c.count == 0) continue;  // input ended exactly at a chunk boundary
    j->dispatched += c.count;
    w.outstanding_items += c.count;
    w.outstanding.push_back(std::move(c));
    any = true;
    if (w.outstanding.size() > 256) break;
  }
  any |= push_bytes(w);
  return any;
}

template <class Policy>
MPROC_FUNC detail::job_base* basic_pool<Policy>::next_job() {
  for (auto it = feeding_.begin(); it != feeding_.end();) {
    auto found = jobs_.find(*it);
    detail::job_base* j = found == jobs_.end() ? nullptr : found->second.get();
    if (!j || j->input_done) {
      // Wherever it is: behind an imap waiting for its consumer, a done job left in
      // place would be scanned again by every dispatch (quadratic in outstanding jobs).
      it = feeding_.erase(it);
      continue;
    }
    if (j->may_dispatch()) return j;
    ++it;
  }
  return nullptr;
}

template <class Policy>
MPROC_FUNC bool basic_pool<Policy>::push_bytes(detail::worker_slot& w) {
  bool any = false;
  while (w.write_index < w.outstanding.size()) {
    auto& c = w.outstanding[w.write_index];
    const std::size_t left = c.bytes.size() - w.write_offset;
    const std::size_t frag = std::min(left, w.tasks.max_fragment());
    std::byte* p = w.tasks.try_reserve(frag);
    if (!p) break;
    std::memcpy(p, c.bytes.data() + w.write_offset, frag);
    w.write_offset += frag;
    const bool last = w.write_offset == c.bytes.size();
    w.tasks.commit(frag, last ? 0 : detail::spsc_ring::flag_more);
    any = true;
    if (last) {
      ++w.write_index;
      w.write_offset = 0;
    } else {
      w.tasks.publish();  // the worker reassembles as it goes, making room
    }
  }
  if (any) w.tasks.publish();
  return any;
}

template <class Policy>
MPROC_FUNC void basic_pool<Policy>::finish_jobs() {
  if (finishing_.empty()) return;
  std::vector<detail::job_base*> now;
  now.swap(finishing_);
  for (auto* j : now) {
    j->finish_queued = false;
    if (j->finished() && !chunks_reference(j)) {
      auto owned = std::move(jobs_.at(j->id));
      jobs_.erase(j->id);
      owned->complete(owned->callback_error);
    }
  }
}

}  // namespace mproc

// The bodies of the supervision members declared above.
#include "supervision.hpp"

#if !MPROC_HEADER_ONLY
// Compiled once, in libmproc (src/mproc.cpp), not in every file that makes a Pool: the
// members are defined outside the class, not inline, so these declarations keep every
// file from instantiating them. A pool with a policy of the program's own instantiates
// its members where it is used, as in the header-only mode.
namespace mproc {
extern template class basic_pool<dynamic_policy>;
extern template class basic_pool<fork_policy>;
extern template class basic_pool<spawn_policy>;
extern template class basic_pool<forkserver_policy>;
}  // namespace mproc
#endif
