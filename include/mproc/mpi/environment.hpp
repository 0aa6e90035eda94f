/// \file
/// The MPI job: message tags, a worker rank's whole life (serve: chunks in, results out,
/// through its local pool), and mpi::environment, which starts MPI and sends worker ranks
/// to serve. Part of mpi.hpp; next: mpi/pool.hpp, the root's side.
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

#include "../detail/callable.hpp"
#include "../detail/log.hpp"
#include "../detail/posix/posix.hpp"
#include "../detail/remote_exception.hpp"
#include "../errors.hpp"
#include "../pool.hpp"
#include "../pool/relay.hpp"
#include "../serialization.hpp"


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

}  // namespace mproc::mpi
