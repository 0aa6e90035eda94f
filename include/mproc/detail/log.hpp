// Library logging: off by default, switched on with mproc::log_to_stderr(level).
// Each line carries the pid and the process name so interleaved output from many
// processes stays readable.
#pragma once

#include <cerrno>

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <string>

#include <unistd.h>

#include "posix/posix.hpp"

namespace mproc {

enum class log_level : int { debug = 10, info = 20, warning = 30, error = 40, off = 100 };

namespace detail {

inline std::atomic<int>& log_threshold() {
  static std::atomic<int> t{static_cast<int>(log_level::off)};
  return t;
}

/// Name of this process as reported by current_process().name; set when a process
/// or pool worker starts.
inline std::string& process_name_storage() {
  static std::string name = "MainProcess";
  return name;
}
// Initialised while the program starts: a child forked while another thread ran this
// initialiser for the first time would wait for ever on its guard.
inline const bool process_name_ready = (process_name_storage(), true);

inline bool log_enabled(log_level l) noexcept {
  return static_cast<int>(l) >= log_threshold().load(std::memory_order_relaxed);
}

inline const char* level_name(log_level l) noexcept {
  switch (l) {
    case log_level::debug: return "DEBUG";
    case log_level::info: return "INFO";
    case log_level::warning: return "WARNING";
    case log_level::error: return "ERROR";
    default: return "LOG";
  }
}

/// printf-style; one write() per line so lines from different processes do not mix.
[[gnu::format(printf, 2, 3)]] inline void log(log_level l, const char* fmt, ...) {
  if (!log_enabled(l)) return;
  char buf[1024];
  int n = std::snprintf(buf, sizeof buf, "[%s/%s %d] ", level_name(l),
                        process_name_storage().c_str(), static_cast<int>(current_pid()));
  if (n < 0) return;
  va_list ap;
  va_start(ap, fmt);
  int m = std::vsnprintf(buf + n, sizeof buf - std::size_t(n) - 1, fmt, ap);
  va_end(ap);
  if (m < 0) return;
  std::size_t len = std::min(sizeof buf - 2, std::size_t(n) + std::size_t(m));
  buf[len++] = '\n';
  // A signal may interrupt the write, or cut it short (a pipe near full).
  write_fully(2, buf, len);
}

}  // namespace detail

/// Turns library logging on at `level` (process lifecycle, pool events, worker deaths
/// and restarts) for this process and the processes it starts afterwards.
inline void log_to_stderr(log_level level = log_level::info) {
  detail::log_threshold().store(static_cast<int>(level));
}

}  // namespace mproc
