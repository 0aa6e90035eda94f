/// \file
/// mproc::error hierarchy. Every error the library raises on purpose derives from
/// mproc::error (itself std::runtime_error); failing system calls raise
/// std::system_error whose what() names the call.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>
#include <sys/types.h>

namespace mproc {

/// Base of every error mproc raises on purpose: catch this to catch them all.
struct error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// An exception of a type other than the `<stdexcept>` ones, thrown by a task in
/// another process. type_name() is the demangled type, what() its message.
class remote_error : public error {
 public:
  /// Carries the remote exception's demangled type, message and the raising process.
  remote_error(std::string type_name, const std::string& what, pid_t pid)
      : error(what), type_name_(std::move(type_name)), pid_(pid) {}
  /// The demangled type of the exception the task threw.
  [[nodiscard]] const std::string& type_name() const noexcept { return type_name_; }
  /// The process that raised it.
  [[nodiscard]] pid_t pid() const noexcept { return pid_; }

 private:
  std::string type_name_;
  pid_t pid_;
};

/// A worker process died (signal, _exit, OOM kill) while running a task.
class worker_died : public error {
 public:
  /// `exitcode` and `signal` as exitcode() and signal() report them.
  worker_died(const std::string& what, pid_t pid, int exitcode, int signal)
      : error(what), pid_(pid), exitcode_(exitcode), signal_(signal) {}
  /// The worker that died.
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

/// A blocking call ran out of time (AsyncResult::get, a task over its task_timeout).
struct timeout_error : error {
  using error::error;
};
/// Work submitted to a closed pool, or left unfinished by Pool::terminate().
struct pool_not_running : error {
  using error::error;
};
/// Bytes that do not decode as the type asked for, or a type that cannot be encoded.
struct serialization_error : error {
  using error::error;
};
/// A queue had nothing to get within the timeout (or at once, for the nowait calls).
struct queue_empty : error {
  using error::error;
};
/// A bounded queue had no room within the timeout (or at once, for put_nowait).
struct queue_full : error {
  using error::error;
};
/// The other end is gone: a Connection whose peer closed, a closed and drained Queue.
struct eof_error : error {
  using error::error;
};
/// A process could not be started as asked: spawn or forkserver without mproc::init,
/// a child that never reached init, a forkserver that cannot be reached.
struct start_method_error : error {
  using error::error;
};
/// A Manager or forkserver peer did not prove the shared key.
struct authentication_error : error {
  using error::error;
};

/// Connection::recv_bytes_into: the message is larger than the buffer. It was
/// consumed and is held here whole, so nothing is lost (Python's BufferTooShort).
class buffer_too_short : public error {
 public:
  /// Holds `message`, which did not fit `capacity` bytes.
  buffer_too_short(std::vector<std::byte> message, std::size_t capacity)
      : error("mproc: Connection::recv_bytes_into: a message of " +
              std::to_string(message.size()) + " bytes does not fit a buffer of " +
              std::to_string(capacity) + " bytes; it is in buffer_too_short::message()"),
        message_(std::move(message)),
        capacity_(capacity) {}
  /// The whole message that did not fit.
  [[nodiscard]] const std::vector<std::byte>& message() const noexcept { return message_; }
  /// Moves the message out (message() is empty afterwards).
  [[nodiscard]] std::vector<std::byte> take_message() noexcept { return std::move(message_); }
  /// The size of the buffer that was too short.
  [[nodiscard]] std::size_t capacity() const noexcept { return capacity_; }

 private:
  std::vector<std::byte> message_;
  std::size_t capacity_;
};

/// Misuse of an object's lifecycle (start twice, join before start, use after close).
struct state_error : error {
  using error::error;
};

/// An invalid argument (Python's ValueError): a negative or zero count, size or
/// chunksize, an offset or index out of range, a NaN timeout. what() names the
/// argument and the value.
struct value_error : error { using error::error; };

/// A missing key (Python's KeyError): DictProxy::get or pop of a key that is not
/// there, popitem of an empty dict. Derives from mproc::error only (not also from
/// std::out_of_range: two std::exception bases would make `catch (const
/// std::exception&)` ambiguous, and it would not catch).
struct key_error : error {
  using error::error;
};

/// An index out of range (Python's IndexError): a ListProxy or ArrayProxy index, pop
/// from an empty list, sharedctypes Array::at. what() names the index and the size.
struct index_error : error {
  using error::error;
};

/// A missing attribute (Python's AttributeError): NamespaceProxy::get of a name that
/// was never set.
struct attribute_error : error {
  using error::error;
};

/// Misuse of a lock or semaphore: releasing a lock the thread does not hold,
/// re-acquiring a non-recursive Lock, releasing a BoundedSemaphore too many times,
/// waiting on or notifying a Condition without holding its lock.
struct lock_error : error {
  using error::error;
};

/// A Barrier was aborted, reset while parties were waiting, or timed out.
struct broken_barrier_error : error {
  using error::error;
};

/// A Manager's server is gone, its shared memory is full, or an object was used in a
/// way its kind does not allow.
struct manager_error : error {
  using error::error;
};

/// AsyncResult::get() of a task cancelled before it started (concurrent.futures'
/// CancelledError).
struct cancelled_error : error {
  using error::error;
};

}  // namespace mproc
