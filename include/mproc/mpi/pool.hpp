/// \file
/// mpi::Pool, the root's side: pool_interface over the worker ranks (transport: MPI
/// messages; launch: the ranks' local pools). Before: mpi/environment.hpp.
#pragma once

#include "environment.hpp"

namespace mproc::mpi {

/// Options of an mpi::Pool. Fields stay in this order (designated initializers).
struct pool_options {
  /// Worker ranks to use (the first ones); 0: all of them.
  std::size_t processes = 0;
  /// Chunks each worker rank holds at once: 2 hides the round trip (one runs while
  /// the next one waits). Chunks measured to take well under a millisecond are sent
  /// deeper, up to about 2 ms of work per rank, so tiny tasks do not wait on round
  /// trips while uneven ones stay balanced.
  std::size_t chunks_in_flight = 2;
  /// Worker processes each worker rank runs its tasks in (0: that host's cpu_count()).
  /// A task that crashes its process or overruns task_timeout fails alone, as with
  /// mproc::Pool; the rank and the job go on. -1: tasks run in the rank itself (a
  /// crash then ends the job, as with mpi4py.futures).
  int local_processes = 0;
  /// Per task, in the local processes; 0: none. An overrunning task fails with
  /// timeout_error and its process is replaced.
  mproc::duration_option task_timeout{};
  /// A local process is replaced after this many tasks; 0: never.
  std::size_t max_tasks_per_child = 0;
  /// Runs in each local process as it starts: `init_fn` or `{init_fn, args...}`.
  mproc::detail::portable_call initializer{};
};

/// The mproc::Pool API over the job's worker ranks. Create it on the root after the
/// environment; one at a time. Results, AsyncResult, as_completed and imap ranges
/// are the same types as mproc::Pool's. All members may be called from any thread.
class Pool : public mproc::pool_interface<Pool>, mproc::detail::run_control {
  friend class mproc::pool_interface<Pool>;

 public:
  Pool() : Pool(pool_options{}) {}
  /// Uses the first `processes` worker ranks (0: all).
  explicit Pool(std::size_t processes) : Pool(pool_options{.processes = processes}) {}
  /// A pool with `opts`; raises state_error without an environment or while another mpi::Pool exists.
  explicit Pool(pool_options opts) : opts_(opts) {
    env_ = detail::current_env();
    if (!env_) throw state_error("mpi::Pool: create an mproc::mpi::environment first");
    {
      std::lock_guard l(env_->m);
      if (env_->pool_alive) throw state_error("mpi::Pool: only one mpi::Pool may exist at a time");
      env_->pool_alive = true;
    }
    try {
      if (opts_.local_processes < -1)
        throw value_error("mpi::Pool: local_processes must be -1 (tasks in the rank), 0 (cpu_count()) or more, not " +
                          std::to_string(opts_.local_processes));
      if (opts_.chunks_in_flight == 0) opts_.chunks_in_flight = 1;
      std::size_t use = static_cast<std::size_t>(env_->size - 1);
      if (opts_.processes && opts_.processes < use) use = opts_.processes;
      for (std::size_t r = 1; r <= use; ++r) ranks_.push_back(rank_slot{static_cast<int>(r), {}, 1});
      start_local_pools();
    } catch (...) {
      std::lock_guard l(env_->m);
      env_->pool_alive = false;
      throw;
    }
    thread_ = std::thread([this] { engine(); });
  }
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  /// Closes and joins: outstanding work finishes, nothing is lost.
  ~Pool() {
    try {
      close();
      join();
    } catch (...) {
      terminate();
    }
    root_pool_.reset();  // before the members its result sink uses
    std::lock_guard l(env_->m);
    env_->pool_alive = false;
  }

  /// Worker ranks serving this pool (1 when the root runs tasks itself).
  [[nodiscard]] std::size_t processes() const noexcept {
    return std::max<std::size_t>(1, ranks_.size());
  }
  /// Local worker processes serving this pool, over all its ranks (as many as
  /// processes() when tasks run in the ranks themselves, local_processes = -1).
  [[nodiscard]] std::size_t local_processes() const noexcept {
    std::size_t n = 0;
    for (auto& r : ranks_) n += r.capacity;
    return std::max<std::size_t>(1, n);
  }

 private:
  static constexpr const char* pool_name = "mpi::Pool";
  using run_state = mproc::detail::run_state;
  void wake_service() {
    std::lock_guard l(m_);  // the engine waits on cv_ under m_
    cv_.notify_all();
  }

  struct job_entry {
    std::unique_ptr<detail::job_base> job;
    std::int64_t invoker;  // replaces the local pool's invoker in each chunk header (0: keep it)
    bool dead = false;     // completed with an error; late results are dropped
  };
  struct chunk {
    job_entry* job;
    std::uint64_t first;
    std::uint32_t count;
    std::vector<std::byte> bytes;  // must outlive the send
    MPI_Request req = MPI_REQUEST_NULL;
  };
  struct rank_slot {
    int rank;                     // 0: the root's own local pool (no worker ranks)
    std::deque<chunk> in_flight;  // in send order; answered in any order
    std::size_t capacity;         // its local worker processes (1 without)
  };

  /// The chunk's invoker when the ranks run tasks themselves; 0 (keep input_feed's,
  /// the local pool's) when local processes run them.
  template <class D, class V, bool Star>
  std::int64_t rank_invoker() const {
    if (opts_.local_processes >= 0) return 0;
    using Feed = detail::input_feed<D, Star, V>;
    using Arg = typename Feed::arg_t;
    return detail::rank_invoker_address<D, Arg, Star, Feed::packed>();
  }

  // The backend's part of pool_interface's submission stage.
  template <class State>
  void attach(State&) const {}  // results are driven by the engine thread alone
  /// Enough in flight to keep every rank busy, little enough to bound memory.
  std::size_t imap_window(std::size_t chunksize) const {
    return std::max<std::size_t>(64, 2 * opts_.chunks_in_flight * processes() * chunksize);
  }
  template <class D, class V, bool Star>
  void enqueue_task(std::unique_ptr<detail::job_base> job) {
    enqueue(std::move(job), rank_invoker<D, V, Star>());
  }

  void enqueue(std::unique_ptr<detail::job_base> job, std::int64_t inv) {
    {
      std::lock_guard l(m_);
      require_running(pool_name);
      if (fatal_) std::rethrow_exception(fatal_);
      job->id = ++next_job_id_;
      incoming_.push_back(job_entry{std::move(job), inv});
    }
    cv_.notify_all();
  }

  // ------------------------------------------------------------ engine thread

  void engine() {
    // MPI offers nothing to block on, so this thread naps between polls (backoff)
    // and its naps must be as short as asked: with the default timer slack, a caller
    // waiting on one result at a time waited 90 us a round trip instead of 55. Not in
    // the worker ranks: there the extra wake-ups took CPU from the tasks.
    mproc::detail::precise_timed_sleeps();
    detail::backoff idle;
    std::vector<std::byte> rx;
    try {
      while (true) {
        run_state state;
        {
          std::lock_guard l(m_);
          while (!incoming_.empty()) {
            jobs_.push_back(std::move(incoming_.front()));
            incoming_.pop_front();
          }
          state = state_;
        }
        if (state == run_state::terminating && !terminated_) {
          terminated_ = true;
          fail_all(std::make_exception_ptr(
              pool_not_running("mpi::Pool: terminated before the task completed")));
          terminate_local_pools();
        }
        bool progress = receive(rx);
        if (!terminated_) progress |= dispatch();
        finish_jobs();
        if (state != run_state::running && live_jobs() == 0 && nothing_in_flight()) {
          release_ranks();
          break;
        }
        if (progress) {
          idle.reset();
          continue;
        }
        const auto d = idle.next();
        std::unique_lock l(m_);
        if (live_jobs() == 0 && nothing_in_flight()) {
          // Nothing can arrive from the ranks: sleep until there is work.
          cv_.wait(l, [&] { return !incoming_.empty() || state_ != state; });
        } else if (!root_results_.empty()) {
          continue;
        } else if (d.count() == 0) {
          l.unlock();
          std::this_thread::yield();
        } else {
          cv_.wait_for(l, d, [&] { return !incoming_.empty() || state_ != state || !root_results_.empty(); });
        }
      }
    } catch (...) {
      // MPI itself failed: nothing can be trusted any more; every waiter learns why.
      std::exception_ptr e = std::current_exception();
      {
        std::lock_guard l(m_);
        fatal_ = e;
        while (!incoming_.empty()) {
          jobs_.push_back(std::move(incoming_.front()));
          incoming_.pop_front();
        }
      }
      fail_all(e);
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        detail::log(log_level::error, "mpi::Pool engine stopped: %s", ex.what());
      } catch (...) {
      }
    }
  }

  std::size_t live_jobs() const {
    std::size_t n = 0;
    for (auto& j : jobs_)
      if (!j.dead) ++n;
    return n;
  }
  bool nothing_in_flight() const {
    for (auto& r : ranks_)
      if (!r.in_flight.empty()) return false;
    return true;
  }

  void fail_all(std::exception_ptr e) {
    for (auto& j : jobs_)
      if (!j.dead) {
        j.dead = true;
        complete(j, e);
      }
  }
  static void complete(job_entry& j, std::exception_ptr e) {
    try {
      j.job->complete(std::move(e));
    } catch (const std::exception& ex) {
      // A user callback threw on the engine thread; the result itself is already set.
      detail::log(log_level::error, "mpi::Pool: a result callback threw: %s", ex.what());
    } catch (...) {
      detail::log(log_level::error, "mpi::Pool: a result callback threw");
    }
  }

  job_entry* next_job() {
    for (auto& j : jobs_)
      if (!j.dead && !j.job->input_done && j.job->may_dispatch()) return &j;
    return nullptr;
  }

  /// Builds the next chunk of the oldest job that has input left (count 0: none).
  chunk make_chunk() {
    chunk c{};
    std::vector<std::uint32_t> offsets;
    while (job_entry* j = next_job()) {
      c.job = j;
      c.first = j->job->dispatched;
      c.count = j->job->next_chunk(c.bytes, offsets);
      if (c.count == 0) continue;  // input ended exactly at a chunk boundary
      j->job->dispatched += c.count;
      if (j->invoker) {
        detail::task_header h;
        std::memcpy(&h, c.bytes.data(), sizeof h);
        h.invoker = j->invoker;
        std::memcpy(c.bytes.data(), &h, sizeof h);
      }
      return c;
    }
    c.count = 0;
    return c;
  }

  bool dispatch() {
    bool any = false;
    if (ranks_.empty()) {
      // No worker ranks, no local processes: run one chunk here, then look at the queue again.
      chunk c = make_chunk();
      if (c.count == 0) return false;
      auto& msg = detail::run_task(local_out_, c.bytes.data(), c.bytes.size());
      handle_result(c, msg.data(), msg.size());
      return true;
    }
    for (auto& r : ranks_) {
      while (true) {
        job_entry* next = next_job();
        // A rank with more local processes holds more chunks: hosts are fed in
        // proportion to their idle workers.
        if (!next || r.in_flight.size() >= depth_for(*next->job) * r.capacity) break;
        chunk c = make_chunk();
        if (c.count == 0) return any;
        any = true;
        if (r.rank == 0) {
          send_to_root_pool(c);
          r.in_flight.push_back(std::move(c));
          continue;
        }
        if (c.bytes.size() > static_cast<std::size_t>(INT_MAX)) {
          // Too big for one MPI message: these items fail, the pool goes on.
          std::exception_ptr e;
          try {
            (void)detail::mpi_count(c.bytes.size(), "a chunk of tasks");
          } catch (...) {
            e = std::current_exception();
          }
          fail_chunk(c, e);
          continue;
        }
        const int n = static_cast<int>(c.bytes.size());
        detail::check_mpi(MPI_Isend(c.bytes.data(), n, MPI_BYTE, r.rank, detail::tag_task,
                                    MPI_COMM_WORLD, &c.req),
                          "MPI_Isend");
        r.in_flight.push_back(std::move(c));  // the vector's buffer does not move
      }
    }
    return any;
  }

  /// -np 1 with local processes: the root's own local pool runs the chunk; its result
  /// message comes back through root_results_ as a rank's would through MPI.
  void send_to_root_pool(const chunk& c) {
    std::vector<std::byte> copy(c.bytes);  // c keeps its bytes, as a sent chunk does
    try {
      root_pool_->enqueue_job(std::make_unique<detail::relay_job>(std::move(copy), [this](std::vector<std::byte> m) {
        {
          std::lock_guard l(m_);
          root_results_.push_back(std::move(m));
        }
        cv_.notify_all();
      }));
    } catch (...) {
      auto m = detail::failed_chunk_message(c.job->job->id, c.first, c.count, std::current_exception());
      std::lock_guard l(m_);
      root_results_.push_back(std::move(m));
    }
  }

  /// Tells every worker rank what its local pool is to be, and waits until each has
  /// started it (or says why it could not). Before the engine thread exists: the only
  /// thread making MPI calls.
  void start_local_pools() {
    if (opts_.local_processes < 0) return;
    detail::local_config cfg;
    cfg.processes = opts_.local_processes;
    cfg.task_timeout_ns = opts_.task_timeout.ns();
    cfg.max_tasks_per_child = opts_.max_tasks_per_child;
    cfg.initializer = opts_.initializer;
    if (ranks_.empty()) {
      root_pool_ = detail::start_local_pool(cfg);
      ranks_.push_back(rank_slot{0, {}, root_pool_->processes()});
      return;
    }
    const std::vector<std::byte> msg = cfg.encode_message();
    for (auto& r : ranks_)
      detail::check_mpi(MPI_Send(msg.data(), detail::mpi_count(msg.size(), "the pool's options"), MPI_BYTE, r.rank,
                                 detail::tag_config, MPI_COMM_WORLD),
                        "MPI_Send");
    std::string failures;
    std::vector<std::byte> rx;
    for (auto& r : ranks_) {
      MPI_Status st;
      detail::check_mpi(MPI_Probe(r.rank, detail::tag_ready, MPI_COMM_WORLD, &st), "MPI_Probe");
      int count = 0;
      detail::check_mpi(MPI_Get_count(&st, MPI_BYTE, &count), "MPI_Get_count");
      rx.resize(static_cast<std::size_t>(count));
      detail::check_mpi(
          MPI_Recv(rx.data(), count, MPI_BYTE, r.rank, detail::tag_ready, MPI_COMM_WORLD, MPI_STATUS_IGNORE),
          "MPI_Recv");
      detail::reader rd{rx.data(), rx.data() + rx.size()};
      std::int64_t n = 0;
      std::string why;
      detail::decode(rd, n);
      detail::decode(rd, why);
      if (n > 0)
        r.capacity = static_cast<std::size_t>(n);
      else
        failures += "; rank " + std::to_string(r.rank) + ": " + why;
    }
    if (!failures.empty()) {
      release_ranks();
      throw mproc::error("mpi::Pool: worker ranks could not start their local processes" + failures);
    }
  }
  /// The pool is over: every worker rank stops its local pool.
  void release_ranks() {
    if (opts_.local_processes < 0) return;
    for (auto& r : ranks_)
      if (r.rank > 0) MPI_Send(nullptr, 0, MPI_BYTE, r.rank, detail::tag_release, MPI_COMM_WORLD);
  }
  /// terminate(): tasks running in local processes are killed; their chunks come back
  /// failed, so the wait for chunks in flight ends.
  void terminate_local_pools() {
    if (opts_.local_processes < 0) return;
    for (auto& r : ranks_)
      if (r.rank > 0) MPI_Send(nullptr, 0, MPI_BYTE, r.rank, detail::tag_terminate, MPI_COMM_WORLD);
    if (root_pool_) root_pool_->terminate();
  }

  /// Chunks a rank may hold for this job (see pool_options::chunks_in_flight).
  std::size_t depth_for(const detail::job_base& j) const {
    std::size_t d = opts_.chunks_in_flight;
    if (j.avg_item_ns > 0) {
      const std::int64_t chunk_ns =
          j.avg_item_ns * static_cast<std::int64_t>(std::max<std::size_t>(1, j.chunksize));
      const auto fit = static_cast<std::size_t>(2'000'000 / std::max<std::int64_t>(chunk_ns, 1));
      d = std::max(d, std::min<std::size_t>(fit, 64));
    }
    return d;
  }

  bool receive(std::vector<std::byte>& rx) {
    if (ranks_.empty()) return false;
    bool any = false;
    if (root_pool_) {
      std::deque<std::vector<std::byte>> now;
      {
        std::lock_guard l(m_);
        now.swap(root_results_);
      }
      for (auto& m : now) answer(ranks_.front(), m.data(), m.size());
      any = !now.empty();
      if (ranks_.front().rank == 0) return any;
    }
    for (int round = 0; round < 64; ++round) {
      int flag = 0;
      MPI_Status st;
      detail::check_mpi(MPI_Iprobe(MPI_ANY_SOURCE, detail::tag_result, MPI_COMM_WORLD, &flag, &st),
                        "MPI_Iprobe");
      if (!flag) break;
      int count = 0;
      detail::check_mpi(MPI_Get_count(&st, MPI_BYTE, &count), "MPI_Get_count");
      rx.resize(static_cast<std::size_t>(count));
      detail::check_mpi(MPI_Recv(rx.data(), count, MPI_BYTE, st.MPI_SOURCE, detail::tag_result,
                                 MPI_COMM_WORLD, MPI_STATUS_IGNORE),
                        "MPI_Recv");
      any = true;
      const int src = st.MPI_SOURCE;
      if (src < 1 || static_cast<std::size_t>(src) > ranks_.size())
        throw mproc::error("mpi::Pool: a result from unexpected rank " + std::to_string(src));
      answer(ranks_[static_cast<std::size_t>(src - 1)], rx.data(), rx.size());
      if (rx.capacity() > (std::size_t(64) << 20)) {
        rx.clear();
        rx.shrink_to_fit();
      }
    }
    return any;
  }

  /// A result message from rank r: the chunk it answers (local processes finish chunks
  /// in any order), then its results.
  void answer(rank_slot& r, const std::byte* data, std::size_t size) {
    detail::result_msg_header h;
    if (size < sizeof h) throw serialization_error("mpi::Pool: a result message shorter than its header");
    std::memcpy(&h, data, sizeof h);
    auto it = std::find_if(r.in_flight.begin(), r.in_flight.end(),
                           [&](const chunk& c) { return c.job->job->id == h.job && c.first == h.first; });
    if (it == r.in_flight.end())
      throw mproc::error("mpi::Pool: rank " + std::to_string(r.rank) + " answered a chunk it was not sent");
    chunk c = std::move(*it);
    r.in_flight.erase(it);
    // The answer proves the rank received the chunk; this completes the send locally.
    if (c.req != MPI_REQUEST_NULL) detail::check_mpi(MPI_Wait(&c.req, MPI_STATUS_IGNORE), "MPI_Wait");
    handle_result(c, data, size);
  }

  void fail_chunk(chunk& c, const std::exception_ptr& e) {
    detail::job_base& job = *c.job->job;
    for (std::uint32_t k = 0; k < c.count; ++k) {
      job.fail(c.first + k, e);
      ++job.completed;
    }
  }

  /// Delivers a chunk's results (a result message) to its job.
  void handle_result(chunk& c, const std::byte* data, std::size_t size) {
    detail::job_base& job = *c.job->job;
    detail::reader r{data, data + size};
    detail::result_msg_header h;
    r.get(&h, sizeof h, "result header");
    if (h.job != job.id || h.first != c.first || h.count != c.count)
      throw serialization_error("mpi::Pool: a result message does not match the chunk it answers");
    if (c.count && h.elapsed_ns > 0) {
      const std::int64_t per_item = h.elapsed_ns / c.count;
      job.avg_item_ns = job.avg_item_ns ? (3 * job.avg_item_ns + per_item) / 4 : per_item;
    }
    for (std::uint32_t k = 0; k < c.count; ++k) {
      detail::result_item_header ih;
      r.get(&ih, sizeof ih, "result item header");
      r.need(ih.len, "result item");
      detail::reader item{r.p, r.p + ih.len};
      r.p += ih.len;
      if (c.job->dead) continue;
      const std::uint64_t index = c.first + k;
      if (ih.status == static_cast<std::uint32_t>(detail::result_status::ok)) {
        job.deliver(index, item);
      } else {
        std::exception_ptr e;
        try {
          detail::encoded_exception ex;
          detail::decode(item, ex);
          e = detail::to_exception_ptr(ex, static_cast<pid_t>(h.pid));
        } catch (...) {
          e = std::current_exception();
        }
        job.fail(index, std::move(e));
      }
      ++job.completed;
      job.report_progress();
    }
  }

  void finish_jobs() {
    for (auto it = jobs_.begin(); it != jobs_.end();) {
      if (!it->dead && it->job->finished()) {
        it->dead = true;
        complete(*it, it->job->callback_error);
      }
      if (it->dead && !referenced(&*it))
        it = jobs_.erase(it);
      else
        ++it;
    }
  }
  bool referenced(const job_entry* j) const {
    for (auto& r : ranks_)
      for (auto& c : r.in_flight)
        if (c.job == j) return true;
    return false;
  }

  pool_options opts_;
  detail::env_state* env_ = nullptr;
  std::vector<rank_slot> ranks_;
  std::list<job_entry> jobs_;  // engine thread only; stable addresses for chunk::job
  detail::result_writer local_out_;
  std::unique_ptr<mproc::Pool> root_pool_;  // -np 1 with local processes
  bool terminated_ = false;

  std::condition_variable cv_;  // with m_ (run_control's)
  std::deque<job_entry> incoming_;
  std::deque<std::vector<std::byte>> root_results_;  // result messages of root_pool_
  std::uint64_t next_job_id_ = 0;
  std::exception_ptr fatal_;

};

}  // namespace mproc::mpi
