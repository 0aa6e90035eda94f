/// \file
/// mproc::Supervisor (beyond Python): runs a target in a child process and restarts it
/// after an abnormal exit (non-zero exit code, uncaught exception, signal, or an
/// overrun of the per-run timeout), with a backoff between runs, up to max_restarts.
#pragma once

#include <algorithm>
#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <utility>

#include "detail/log.hpp"
#include "process.hpp"

namespace mproc {

/// Options of a Supervisor. Fields stay in this order (designated initializers).
struct supervisor_options {
  /// Relaunches allowed after abnormal exits (so at most max_restarts + 1 runs).
  int max_restarts = 5;
  /// Pause before the first relaunch.
  std::chrono::nanoseconds backoff = std::chrono::milliseconds(10);
  /// Each further relaunch waits backoff_multiplier times longer, up to max_backoff.
  double backoff_multiplier = 1.0;
  /// Longest pause between relaunches, however often backoff_multiplier has applied.
  std::chrono::nanoseconds max_backoff = std::chrono::seconds(30);
  /// A run lasting longer is killed (SIGKILL) and counts as abnormal; zero: no limit.
  std::chrono::nanoseconds run_timeout = std::chrono::nanoseconds::zero();
  /// Options for each child (name, start method); an empty name gives "Process-N".
  process_options process = {};
};

/// What Supervisor::run() reports.
struct supervisor_outcome {
  /// A run exited with code 0.
  bool succeeded = false;
  /// Relaunches after abnormal exits.
  int restarts = 0;
  /// Exit code of the last run (Python convention: -signum when killed).
  int exitcode = 0;
  /// The last run was killed for overrunning run_timeout.
  bool timed_out = false;
};

/// Runs a target in a child process and relaunches it after each abnormal exit (a
/// non-zero exit code, a signal, an overrun run_timeout), with backoff, up to
/// max_restarts times. The target and arguments are copied into every run, as for
/// Process.
/// \code
/// mproc::Supervisor sup({.max_restarts = 10, .backoff = 10ms}, worker, 42, 5);
/// auto outcome = sup.run();   // outcome.succeeded, outcome.restarts
/// \endcode
class Supervisor {
 public:
  /// Supervises `target(args...)` under `opts`; raises value_error for a negative max_restarts or backoff, or a multiplier below 1.
  template <class F, class... Args>
    requires std::invocable<std::decay_t<F>&, std::decay_t<Args>&...>
  explicit Supervisor(supervisor_options opts, F&& target, Args&&... args) : opts_(std::move(opts)) {
    if (opts_.max_restarts < 0) throw value_error("mproc::supervisor_options: max_restarts < 0");
    if (opts_.backoff < opts_.backoff.zero() || opts_.backoff_multiplier < 1.0)
      throw value_error("mproc::supervisor_options: backoff must be >= 0 and multiplier >= 1");
    make_ = [o = opts_.process, f = std::decay_t<F>(std::forward<F>(target)),
             ... a = std::decay_t<Args>(std::forward<Args>(args))]() { return Process(o, f, a...); };
  }

  /// Supervises `target(args...)` with default options.
  template <class F, class... Args>
    requires std::invocable<std::decay_t<F>&, std::decay_t<Args>&...>
  explicit Supervisor(F&& target, Args&&... args)
      : Supervisor(supervisor_options{}, std::forward<F>(target), std::forward<Args>(args)...) {}

  /// Runs until a run exits 0 or the restarts are used up. Blocks; with run_timeout
  /// set, each run is bounded.
  supervisor_outcome run() {
    supervisor_outcome out;
    auto backoff = opts_.backoff;
    for (;;) {
      Process p = make_();
      p.start();
      out.timed_out = false;
      if (opts_.run_timeout > opts_.run_timeout.zero()) {
        if (!p.join(opts_.run_timeout)) {
          detail::log(log_level::warning, "supervisor: %s (pid %d) overran its run timeout; killing it",
                      p.name().c_str(), int(p.pid()));
          p.kill();
          p.join();
          out.timed_out = true;
        }
      } else {
        p.join();
      }
      out.exitcode = p.exitcode().value_or(255);
      last_pid_ = p.pid();
      if (out.exitcode == 0 && !out.timed_out) {
        out.succeeded = true;
        return out;
      }
      if (out.restarts >= opts_.max_restarts) {
        detail::log(log_level::error, "supervisor: Max restarts (%d) exceeded; last exit code %d",
                    opts_.max_restarts, out.exitcode);
        return out;
      }
      ++out.restarts;
      detail::log(log_level::warning, "supervisor: %s exited abnormally (exit code %d); restart %d of %d in %lld us",
                  p.name().c_str(), out.exitcode, out.restarts, opts_.max_restarts,
                  static_cast<long long>(std::chrono::duration_cast<std::chrono::microseconds>(backoff).count()));
      std::this_thread::sleep_for(backoff);
      auto next = std::chrono::duration<double, std::nano>(backoff) * opts_.backoff_multiplier;
      backoff = next >= std::chrono::duration<double, std::nano>(opts_.max_backoff)
                    ? opts_.max_backoff
                    : std::chrono::duration_cast<std::chrono::nanoseconds>(next);
    }
  }

  /// Pid of the most recent run (0 before run()).
  [[nodiscard]] pid_t last_pid() const noexcept { return last_pid_; }
  /// The options it was made with.
  [[nodiscard]] const supervisor_options& options() const noexcept { return opts_; }

 private:
  supervisor_options opts_;
  std::function<Process()> make_;
  pid_t last_pid_ = 0;
};

}  // namespace mproc
