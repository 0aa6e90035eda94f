/// \file
/// The MPI backend: the Pool API over MPI ranks instead of local worker processes.
///
///   int main(int argc, char** argv) {
///     mproc::mpi::environment env(argc, argv);  // worker ranks serve tasks and exit here
///     mproc::mpi::Pool pool;                    // on the root rank (rank 0) only
///     auto v = pool.map(f, inputs);
///   }
///
/// Run with `mpirun -np N ./program`: rank 0 runs main, ranks 1..N-1 are workers. Tasks
/// name their function and carry their arguments exactly as with mproc::Pool (see
/// detail/callable.hpp and serialization.hpp), so every rank must run the same
/// executable.
///
/// Layout: each worker rank serves its chunks through a local mproc::Pool on its host
/// (pool_options::local_processes; its processes are forked by the forkserver that
/// environment forks before MPI_Init, so none carries MPI state). The chunk travels as
/// the local pool's own task message and runs through pool/relay.hpp, so crashes,
/// timeouts and max_tasks_per_child behave as locally. With local_processes = -1 the
/// rank runs tasks itself. With no worker ranks (-np 1, or no mpirun) the root serves
/// the chunks through a local pool of its own (or, with -1, on its engine thread).
///
/// Threading: MPI is initialised with MPI_THREAD_SERIALIZED. After initialisation only
/// one thread makes MPI calls at a time: the pool's engine thread while a pool exists,
/// the main thread before and after (environment's destructor); on a worker rank, its
/// main thread (the local pool's threads hand finished chunks over). Hence one
/// mpi::Pool at a time.
///
/// Scheduling: each worker rank holds up to `chunks_in_flight` chunks (default 2) per
/// local process; the engine sends the next chunk to a rank as soon as one of its
/// results arrives, so hosts are fed by their capacity and uneven tasks balance.
///
/// Failure: a task's exception comes back as with mproc::Pool; a task that kills its
/// local process fails alone with worker_died. A rank that dies takes the job down:
/// mpirun aborts every rank (the root included) and exits non-zero. MPI call failures
/// that are reported instead raise mproc::error naming the call.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <mpi.h>
#include <unistd.h>

#include <boost/mpi/communicator.hpp>
#include <boost/mpi/environment.hpp>

#include "detail/callable.hpp"
#include "detail/log.hpp"
#include "detail/posix/posix.hpp"
#include "detail/remote_exception.hpp"
#include "errors.hpp"
#include "pool.hpp"
#include "pool/relay.hpp"
#include "serialization.hpp"

/// The Pool API over the ranks of an MPI job (mpirun): see mpi::environment and mpi::Pool.
namespace mproc::mpi {

namespace detail {

using namespace mproc::detail;

// Message tags on MPI_COMM_WORLD; the bytes are our own wire format (MPI_BYTE).
inline constexpr int tag_task = 0x6d70;    // root -> worker: one chunk
inline constexpr int tag_result = 0x6d71;  // worker -> root: the results of one chunk
inline constexpr int tag_stop = 0x6d72;    // root -> worker: finalize and exit
inline constexpr int tag_config = 0x6d73;  // root -> worker: a pool starts; its local pool's options
inline constexpr int tag_ready = 0x6d74;   // worker -> root: local processes started (or why not)
inline constexpr int tag_release = 0x6d75; // root -> worker: the pool ended; stop the local pool
inline constexpr int tag_terminate = 0x6d76;  // root -> worker: the pool is terminated; kill running tasks

/// Raises mproc::error naming the MPI call when rc is not MPI_SUCCESS.
inline void check_mpi(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) std::snprintf(msg, sizeof msg, "error %d", rc);
  throw mproc::error(std::string("mproc::mpi: ") + call + " failed: " + msg);
}

/// A message length as MPI's int count; larger messages are refused, not truncated.
inline int mpi_count(std::size_t n, const char* what) {
  if (n > static_cast<std::size_t>(INT_MAX))
    throw mproc::error(std::string("mproc::mpi: ") + what + " of " + std::to_string(n) +
                       " bytes exceeds MPI's 2 GiB message limit; use a smaller chunksize");
  return static_cast<int>(n);
}

using invoker_fn = void (*)(result_writer&, task_view&);

/// A chunk run in the rank itself: the pool's item loop (worker.hpp) writing one
/// result message. Every item gets a result or an error, so the root's accounting
/// never waits for a missing one.
template <class F, class Arg, bool Star, bool PackedArgs>
std::int64_t rank_invoker_address() {
  // No local-static cache, as pool/jobs.hpp's invoker_address: fork safety.
  return encode_code_address(reinterpret_cast<const void*>(&mproc::detail::invoke_chunk<result_writer, F, Arg, Star, PackedArgs>));
}

/// Decodes and runs one task message; returns the result message.
inline std::vector<std::byte>& run_task(result_writer& out, const std::byte* data, std::size_t size) {
  reader r{data, data + size};
  task_header h;
  r.get(&h, sizeof h, "task header");
  r.need(h.callable_len, "task callable");
  task_view t{h.job, h.first, h.count, reader{r.p, r.p + h.callable_len},
              reader{r.p + h.callable_len, r.end}};
  out.begin(h.job, h.first, h.count);
  auto inv = reinterpret_cast<invoker_fn>(decode_code_address(h.invoker));
  inv(out, t);
  out.end();
  return out.bytes();
}

/// Sleeps a little longer each time nothing happened (MPI offers no fd to poll): the
/// first rounds spin, so a busy pipeline pays no sleep at all.
class backoff {
 public:
  void reset() noexcept { idle_ = 0; }
  /// How long to sleep now (0: just retry).
  std::chrono::microseconds next() noexcept {
    ++idle_;
    if (idle_ < 64) return std::chrono::microseconds(0);
    const auto us = std::min<long>(1000, 5L << std::min<unsigned>(8, (idle_ - 64) / 16));
    return std::chrono::microseconds(us);
  }

 private:
  unsigned idle_ = 0;
};

/// What a worker rank's local pool is to be, as the root sends it when a pool starts.
struct local_config {
  std::int64_t processes = 0;  // -1: tasks run in the rank itself; 0: the host's cpu_count()
  std::int64_t task_timeout_ns = 0;
  std::uint64_t max_tasks_per_child = 0;
  mproc::detail::portable_call initializer;

  [[nodiscard]] std::vector<std::byte> encode_message() const {
    std::vector<std::byte> out;
    vector_writer w{&out};
    encode(w, processes);
    encode(w, task_timeout_ns);
    encode(w, max_tasks_per_child);
    initializer.encode_to_writer(w);
    return out;
  }
  static local_config decode_message(const std::vector<std::byte>& in) {
    local_config c;
    reader r{in.data(), in.data() + in.size()};
    decode(r, c.processes);
    decode(r, c.task_timeout_ns);
    decode(r, c.max_tasks_per_child);
    c.initializer = mproc::detail::portable_call::decode_from(r);
    return c;
  }
};

/// The pool a rank serves its chunks with: worker processes started by the forkserver,
/// which mpi::environment forked before MPI was initialised, so none of them carries
/// MPI state. A task that crashes or overruns its time fails alone; the rank goes on.
inline std::unique_ptr<mproc::Pool> start_local_pool(const local_config& c) {
  mproc::pool_options o;
  o.processes = c.processes > 0 ? static_cast<std::size_t>(c.processes) : 0;
  o.method = start_method::forkserver;
  o.initializer = c.initializer;
  o.max_tasks_per_child = c.max_tasks_per_child;
  o.task_timeout = std::chrono::nanoseconds(c.task_timeout_ns);
  return std::make_unique<mproc::Pool>(std::move(o));
}

/// Result messages finished by the local pool's service thread, for the rank's MPI
/// thread to send (only that one thread calls MPI).
struct outbox {
  std::mutex m;
  std::condition_variable cv;
  std::deque<std::vector<std::byte>> ready;
  std::atomic<std::size_t> running{0};  // chunks handed to the local pool, not yet answered

  void put(std::vector<std::byte> msg) {
    {
      std::lock_guard l(m);
      ready.push_back(std::move(msg));
    }
    running.fetch_sub(1, std::memory_order_relaxed);
    cv.notify_one();
  }
};

/// A worker rank's whole life: serve chunks from rank 0 until told to stop.
inline void serve(MPI_Comm comm) {
  result_writer out;
  std::vector<std::byte> in;
  backoff idle;
  outbox box;
  std::unique_ptr<mproc::Pool> local;
  auto send_result = [&](std::vector<std::byte>& msg) {
    int n = 0;
    try {
      n = mpi_count(msg.size(), "a chunk's results");
    } catch (const std::exception& e) {
      // Report each item as failed instead, so the root sees why.
      result_msg_header h;
      std::memcpy(&h, msg.data(), sizeof h);
      msg = failed_chunk_message(h.job, h.first, h.count, std::make_exception_ptr(mproc::error(e.what())));
      n = static_cast<int>(msg.size());
    }
    MPI_Send(msg.data(), n, MPI_BYTE, 0, tag_result, comm);
  };
  auto flush_box = [&] {
    std::deque<std::vector<std::byte>> now;
    {
      std::lock_guard l(box.m);
      now.swap(box.ready);
    }
    for (auto& msg : now) send_result(msg);
    return !now.empty();
  };
  auto stop_local = [&] {
    local.reset();  // joins: every chunk handed to it is answered first
    flush_box();
  };
  while (true) {
    if (flush_box()) idle.reset();
    int flag = 0;
    MPI_Status st;
    MPI_Iprobe(0, MPI_ANY_TAG, comm, &flag, &st);
    if (!flag) {
      // Sleep, but wake at once when the local pool finishes a chunk; while it runs
      // chunks, the root's next one is due soon: look for it at least every 50 us, so
      // the local processes are not left waiting on a sleeping rank.
      auto d = idle.next();
      if (box.running.load(std::memory_order_relaxed) > 0) d = std::min(d, std::chrono::microseconds(50));
      std::unique_lock l(box.m);
      if (!box.ready.empty()) continue;
      if (d.count())
        box.cv.wait_for(l, d, [&] { return !box.ready.empty(); });
      else {
        l.unlock();
        std::this_thread::yield();
      }
      continue;
    }
    idle.reset();
    int count = 0;
    MPI_Get_count(&st, MPI_BYTE, &count);
    in.resize(static_cast<std::size_t>(count));
    MPI_Recv(in.data(), count, MPI_BYTE, 0, st.MPI_TAG, comm, MPI_STATUS_IGNORE);
    switch (st.MPI_TAG) {
      case tag_stop:
        stop_local();
        return;
      case tag_config: {
        stop_local();
        std::int64_t ready = 1;
        std::string why;
        try {
          const local_config c = local_config::decode_message(in);
          if (c.processes >= 0) {
            local = start_local_pool(c);
            ready = static_cast<std::int64_t>(local->processes());
          }
        } catch (const std::exception& e) {
          ready = -1;
          why = e.what();
        }
        std::vector<std::byte> msg;
        vector_writer w{&msg};
        encode(w, ready);
        encode(w, why);
        MPI_Send(msg.data(), static_cast<int>(msg.size()), MPI_BYTE, 0, tag_ready, comm);
        continue;
      }
      case tag_release:
        stop_local();
        continue;
      case tag_terminate:
        // Running tasks are killed; the chunks fail with pool_not_running and are
        // answered, so the root's wait for them ends.
        if (local) local->terminate();
        continue;
      case tag_task:
        break;
      default:
        continue;
    }
    if (local) {
      task_header th{};
      if (in.size() >= sizeof th) std::memcpy(&th, in.data(), sizeof th);
      try {
        auto job = std::make_unique<relay_job>(std::move(in), [&box](std::vector<std::byte> msg) {
          box.put(std::move(msg));
        });
        box.running.fetch_add(1, std::memory_order_relaxed);
        try {
          local->enqueue_job(std::move(job));
        } catch (...) {
          box.running.fetch_sub(1, std::memory_order_relaxed);
          throw;
        }
      } catch (...) {
        // Malformed, or the local pool is terminated: every item of it fails.
        auto msg = failed_chunk_message(th.job, th.first, th.count, std::current_exception());
        send_result(msg);
      }
      in = {};
      continue;
    }
    std::vector<std::byte>* msg = nullptr;
    try {
      msg = &run_task(out, in.data(), in.size());
    } catch (const std::exception& e) {
      // Only a malformed chunk header gets here (item errors travel as results): the
      // root could not match an answer to it, so the job cannot go on.
      std::fprintf(stderr, "mproc::mpi: worker rank: unreadable task: %s\n", e.what());
      MPI_Abort(comm, 70);
    }
    send_result(*msg);
    if (msg->capacity() > (std::size_t(64) << 20)) {  // don't keep a huge buffer around
      msg->clear();
      msg->shrink_to_fit();
    }
    if (in.capacity() > (std::size_t(64) << 20)) {
      in.clear();
      in.shrink_to_fit();
    }
  }
}

struct env_state {
  std::mutex m;
  bool pool_alive = false;
  int rank = 0;
  int size = 1;
};
inline env_state*& current_env() {
  static env_state* e = nullptr;
  return e;
}

}  // namespace detail

/// Initialises MPI (MPI_THREAD_SERIALIZED). On worker ranks the constructor serves
/// tasks until the root's environment is destroyed, then finalizes MPI and exits the
/// process with status 0: construct it first thing in main, before any output or
/// side effect that only the root should have. Only rank 0 returns.
class environment {
 public:
  /// Initialises MPI with the program's arguments (see the class description: only rank 0 returns).
  environment(int& argc, char**& argv) {
    before_mpi(argc, argv);
    env_.emplace(argc, argv, boost::mpi::threading::serialized, true);
    start();
  }
  /// For programs that do not pass their arguments on (Open MPI does not need them).
  environment() {
    before_mpi(0, nullptr);
    env_.emplace(boost::mpi::threading::serialized, true);
    start();
  }
  environment(const environment&) = delete;
  environment& operator=(const environment&) = delete;

  /// Root only: tells the worker ranks to finalize and exit, then finalizes.
  ~environment() {
    if (!env_) return;
    {
      std::lock_guard l(state_.m);
      if (state_.pool_alive)
        detail::log(log_level::warning, "mpi::environment destroyed while an mpi::Pool exists");
    }
    for (int r = 1; r < state_.size; ++r) MPI_Send(nullptr, 0, MPI_BYTE, r, detail::tag_stop, MPI_COMM_WORLD);
    detail::current_env() = nullptr;
    env_.reset();  // MPI_Finalize
  }

  /// This process's rank (0 on the root, the only rank that sees the object).
  [[nodiscard]] int rank() const noexcept { return state_.rank; }
  /// Number of ranks in the job, the root included.
  [[nodiscard]] int size() const noexcept { return state_.size; }
  /// Number of worker ranks (size() - 1).
  [[nodiscard]] int workers() const noexcept { return state_.size - 1; }
  /// The host this rank runs on.
  [[nodiscard]] static std::string processor_name() { return boost::mpi::environment::processor_name(); }
  /// The job's MPI_COMM_WORLD as a Boost.MPI communicator.
  [[nodiscard]] boost::mpi::communicator communicator() const { return {}; }

 private:
  /// mproc::init, unless the program called it: records the command line and forks the
  /// forkserver now, before MPI is initialised, so that the local processes of every
  /// pool start from an image without MPI state (Open MPI warns about fork after
  /// MPI_Init, and some transports break).
  static void before_mpi(int argc, char** argv) {
    if (!mproc::initialized())
      mproc::init(argc, argv);
    else
      mproc::detail::forkserver_start_from_init();
  }
  void start() {
    if (detail::current_env())
      throw state_error("mpi::environment: MPI is already initialised by another environment");
    int provided = MPI_THREAD_SINGLE;
    MPI_Query_thread(&provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &state_.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &state_.size);
    if (provided < MPI_THREAD_SERIALIZED) {
      // The root's engine thread makes the MPI calls; every rank fails alike here.
      std::fprintf(stderr,
                   "mproc::mpi: this MPI library provides thread level %d, below "
                   "MPI_THREAD_SERIALIZED which mproc::mpi needs\n",
                   provided);
      MPI_Abort(MPI_COMM_WORLD, 70);
    }
    if (state_.rank != 0) {
      detail::serve(MPI_COMM_WORLD);
      std::fflush(nullptr);
      env_.reset();  // MPI_Finalize
      std::exit(0);
    }
    // On the root, failures come back as error codes and become exceptions.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    detail::current_env() = &state_;
  }

  std::optional<boost::mpi::environment> env_;
  detail::env_state state_;
};

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
