// mproc::error hierarchy. Every error the library raises on purpose derives from
// mproc::error (itself std::runtime_error); failing system calls raise
// std::system_error whose what() names the call.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>
#include <sys/types.h>

namespace mproc {

struct error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// An exception of a type other than the <stdexcept> ones, thrown by a task in
/// another process. type_name() is the demangled type, what() its message.
class remote_error : public error {
 public:
  remote_error(std::string type_name, const std::string& what, pid_t pid)
      : error(what), type_name_(std::move(type_name)), pid_(pid) {}
  [[nodiscard]] const std::string& type_name() const noexcept { return type_name_; }
  [[nodiscard]] pid_t pid() const noexcept { return pid_; }

 private:
  std::string type_name_;
  pid_t pid_;
};

/// A worker process died (signal, _exit, OOM kill) while running a task.
class worker_died : public error {
 public:
  worker_died(const std::string& what, pid_t pid, int exitcode, int signal)
      : error(what), pid_(pid), exitcode_(exitcode), signal_(signal) {}
  [[nodiscard]] pid_t pid() const noexcept { return pid_; }
  /// Python convention: the exit status, or -signum when killed by a signal.
  [[nodiscard]] int exitcode() const noexcept { return exitcode_; }
  /// The signal that killed the worker, 0 when it exited.
  [[nodiscard]] int signal() const noexcept { return signal_; }

 private:
  pid_t pid_;
  int exitcode_;
  int signal_;
};

struct timeout_error : error {
  using error::error;
};
struct pool_not_running : error {
  using error::error;
};
struct serialization_error : error {
  using error::error;
};
struct queue_empty : error {
  using error::error;
};
struct queue_full : error {
  using error::error;
};
struct eof_error : error {
  using error::error;
};
struct start_method_error : error {
  using error::error;
};
struct authentication_error : error {
  using error::error;
};

/// Connection::recv_bytes_into: the message is larger than the buffer. It was
/// consumed and is held here whole, so nothing is lost (Python's BufferTooShort).
class buffer_too_short : public error {
 public:
  buffer_too_short(std::vector<std::byte> message, std::size_t capacity)
      : error("mproc: Connection::recv_bytes_into: a message of " +
              std::to_string(message.size()) + " bytes does not fit a buffer of " +
              std::to_string(capacity) + " bytes; it is in buffer_too_short::message()"),
        message_(std::move(message)) {}
  [[nodiscard]] const std::vector<std::byte>& message() const noexcept { return message_; }
  [[nodiscard]] std::vector<std::byte> take_message() noexcept { return std::move(message_); }

 private:
  std::vector<std::byte> message_;
};

/// Misuse of an object's lifecycle (start twice, join before start, use after close).
struct state_error : error {
  using error::error;
};

/// An invalid argument (Python's ValueError): a negative or zero count, size or
/// chunksize, an offset or index out of range, a NaN timeout. what() names the
/// argument and the value.
struct value_error : error { using error::error; };

}  // namespace mproc
