/// \file
/// Queue, JoinableQueue and SimpleQueue: process-safe FIFOs on a shared-memory ring.
///
/// Differences from Python worth knowing:
///  - put() returns once the message is in shared memory. There is no feeder thread,
///    so a producer may exit right after put() and nothing is lost, and "put, join the
///    producer, then get" works at any size: the Python deadlock does not exist.
///  - Messages go into a ring (queue_options::capacity, default 4 MiB). While readers
///    keep up, that is all. When the ring stays full for ~10 ms (nobody reading), or
///    a large message finds no reader for ~50 ms, messages go to an overflow area in
///    the same shared memory that takes memory only for what is queued and gives it
///    back as it is read: put() on an unbounded queue (maxsize 0) never waits longer
///    than that, whatever the backlog. A large message that finds a reader streams
///    through the ring in fragments instead. With queue_options::spill = false there
///    is no overflow area: put() waits for room in the ring as on a pipe.
///  - close() closes the queue for every process: later puts raise state_error, and a
///    get on a closed queue that is empty raises eof_error instead of blocking forever
///    (try_get returns nullopt). Messages put before close() can still be taken.
///  - A producer killed mid-put does not wedge the queue: a partly written message is
///    dropped and the others carry on. A consumer killed while reading a large
///    (fragmented) message loses that message; one killed reading a small one loses
///    nothing.
#pragma once

#include <chrono>
#include <concepts>
#include <cstddef>
#include <memory>
#include <optional>
#include <utility>

#include "detail/handle_passing.hpp"
#include "detail/mpmc_ring.hpp"
#include "errors.hpp"
#include "serialization.hpp"

namespace mproc {

/// Options of a Queue, JoinableQueue or SimpleQueue.
struct queue_options {
  std::size_t maxsize = 0;  ///< most messages waiting; 0 = no limit
  std::size_t capacity = detail::mpmc_ring::default_capacity;  ///< ring bytes (rounded up to 2^k)
  bool spill = true;  ///< overflow area beyond the ring (see queue.hpp); false: put waits for room
};

namespace detail {
/// U is put as T: the same wire type, e.g. a string literal on a Queue<std::string>.
template <class U, class T>
concept sends_as = std::same_as<wire_t<U>, T>;
}  // namespace detail

/// A process-shared FIFO queue of T, as Python's multiprocessing.Queue: a ring in shared
/// memory, so a put() has stored the message when it returns (no feeder thread). A handle:
/// copies, and the object passed to a child, are the same queue. Every blocking call has
/// a timeout variant.
template <class T>
class Queue {
  static_assert(std::is_same_v<detail::wire_t<T>, T>,
                "mproc::Queue<T>: T is what get() returns, so use the received type "
                "(std::string rather than const char*)");
  static_assert(detail::encodable<T>, "mproc::Queue<T>: T cannot cross a process boundary");

 public:
  /// The message type (what get() returns).
  using value_type = T;

  /// An unbounded queue with the default ring.
  Queue() : Queue(queue_options{}) {}
  /// A queue holding at most `maxsize` messages (0: no limit).
  explicit Queue(std::size_t maxsize) : Queue(queue_options{.maxsize = maxsize}) {}
  /// A queue with `o` (maxsize, ring capacity, overflow area).
  explicit Queue(const queue_options& o)
      : ring_(detail::mpmc_ring::create(o.capacity, o.maxsize, false, overflow_of(o))) {}
  /// Adopts an existing ring (a queue received by a spawned child).
  explicit Queue(std::shared_ptr<detail::mpmc_ring> ring) : ring_(std::move(ring)) {}

  // -------------------------------------------------------------- put
  /// Blocks while the queue is full. Raises state_error after close().
  void put(const T& x) { put_until(x, detail::no_deadline); }
  /// As put(x), for a U sent as T (a string literal on a Queue<std::string>).
  template <detail::sends_as<T> U>
  void put(const U& x) {
    put_until(x, detail::no_deadline);
  }
  /// Raises queue_full if the message is not in the queue within `timeout`.
  template <class Rep, class Period>
  void put(const T& x, std::chrono::duration<Rep, Period> timeout) {
    put_until(x, detail::deadline_after(timeout));
  }
  /// As put(x, timeout), for a U sent as T.
  template <detail::sends_as<T> U, class Rep, class Period>
  void put(const U& x, std::chrono::duration<Rep, Period> timeout) {
    put_until(x, detail::deadline_after(timeout));
  }
  /// Raises queue_full unless the message fits right now.
  void put_nowait(const T& x) { put_until(x, detail::deadline_now()); }
  /// As put_nowait(x), for a U sent as T.
  template <detail::sends_as<T> U>
  void put_nowait(const U& x) {
    put_until(x, detail::deadline_now());
  }

  // -------------------------------------------------------------- get
  /// Blocks until a message arrives. Raises eof_error on a closed, empty queue.
  [[nodiscard]] T get() { return get_until(detail::no_deadline); }
  /// Raises queue_empty if nothing arrives within `timeout`.
  template <class Rep, class Period>
  [[nodiscard]] T get(std::chrono::duration<Rep, Period> timeout) {
    return get_until(detail::deadline_after(timeout));
  }
  /// Raises queue_empty unless a message is there now (eof_error when closed and empty).
  [[nodiscard]] T get_nowait() { return get_until(detail::deadline_now()); }
  /// The next message if one is there now; nullopt when empty (or closed and empty).
  [[nodiscard]] std::optional<T> try_get() {
    std::optional<T> out;
    (void)ring_->get(out, detail::deadline_now());
    return out;
  }
  /// As try_get, waiting up to `timeout`.
  template <class Rep, class Period>
  [[nodiscard]] std::optional<T> try_get(std::chrono::duration<Rep, Period> timeout) {
    std::optional<T> out;
    (void)ring_->get(out, detail::deadline_after(timeout));
    return out;
  }

  // -------------------------------------------------------------- state
  /// Messages waiting (approximate while other processes use the queue, as in Python).
  [[nodiscard]] std::size_t qsize() const noexcept { return ring_->qsize(); }
  /// True when no message waits (approximate, as qsize()).
  [[nodiscard]] bool empty() const noexcept { return qsize() == 0; }
  /// True when maxsize messages wait. An unbounded queue is never full.
  [[nodiscard]] bool full() const noexcept {
    return ring_->maxsize() != 0 && qsize() >= ring_->maxsize();
  }
  /// The limit on waiting messages (0: none).
  [[nodiscard]] std::size_t maxsize() const noexcept { return ring_->maxsize(); }
  /// Size of the shared ring in bytes (longer messages stream through it).
  [[nodiscard]] std::size_t capacity_bytes() const noexcept { return ring_->capacity(); }
  /// No more puts, by any process; getters drain what is left, then get eof_error.
  void close() noexcept { ring_->close(); }
  /// True once close() was called by any process.
  [[nodiscard]] bool closed() const noexcept { return ring_->closed(); }

  /// The shared ring (its descriptor is what a spawned child inherits).
  [[nodiscard]] const std::shared_ptr<detail::mpmc_ring>& ring() const noexcept { return ring_; }

 protected:
  /// For derived queues: the overflow area `o` asks for.
  static std::size_t overflow_of(const queue_options& o) noexcept {
    return o.spill ? detail::mpmc_ring::default_overflow : 0;
  }
  /// For derived queues: put with an absolute deadline; raises queue_full when it passes.
  template <class U>
  void put_until(const U& x, detail::deadline_t deadline) {
    if (ring_->put(x, deadline) != detail::mpmc_ring::status::ok)
      throw queue_full("Queue::put: no room in the queue before the timeout");
  }
  /// For derived queues: get with an absolute deadline; raises queue_empty or eof_error.
  T get_until(detail::deadline_t deadline) {
    std::optional<T> out;
    switch (ring_->get(out, deadline)) {
      case detail::mpmc_ring::status::ok: return std::move(*out);
      case detail::mpmc_ring::status::closed: throw eof_error("Queue::get: the queue is closed and empty");
      default: throw queue_empty("Queue::get: no message before the timeout");
    }
  }

  std::shared_ptr<detail::mpmc_ring> ring_;  ///< the shared ring; copies of the queue share it
};

/// A Queue whose consumers confirm each message with task_done(); join() waits until
/// every message put has been confirmed.
template <class T>
class JoinableQueue : public Queue<T> {
 public:
  JoinableQueue() : JoinableQueue(queue_options{}) {}
  /// A queue holding at most `maxsize` messages (0: no limit).
  explicit JoinableQueue(std::size_t maxsize) : JoinableQueue(queue_options{.maxsize = maxsize}) {}
  /// A queue with `o` (maxsize, ring capacity, overflow area).
  explicit JoinableQueue(const queue_options& o)
      : Queue<T>(detail::mpmc_ring::create(o.capacity, o.maxsize, true, Queue<T>::overflow_of(o))) {}
  /// Adopts an existing ring (a queue received by a spawned child).
  explicit JoinableQueue(std::shared_ptr<detail::mpmc_ring> ring) : Queue<T>(std::move(ring)) {}

  /// Raises state_error when called more often than messages were put.
  void task_done() { this->ring_->task_done(); }
  /// Waits until every message put has been confirmed with task_done().
  void join() { (void)this->ring_->join(detail::no_deadline); }
  /// False if messages are still unconfirmed after `timeout`.
  template <class Rep, class Period>
  bool join(std::chrono::duration<Rep, Period> timeout) {
    return this->ring_->join(detail::deadline_after(timeout));
  }
  /// Messages put and not yet confirmed with task_done().
  [[nodiscard]] std::size_t unfinished_tasks() const noexcept { return this->ring_->unfinished_tasks(); }
};

/// The minimal queue: unbounded put, get, empty, close (as Python's SimpleQueue).
template <class T>
class SimpleQueue {
 public:
  /// The message type (what get() returns).
  using value_type = T;
  SimpleQueue() = default;
  /// A queue with `o`, as for Queue.
  explicit SimpleQueue(const queue_options& o) : q_(o) {}
  /// A handle on an existing ring (a queue received by a spawned child).
  explicit SimpleQueue(std::shared_ptr<detail::mpmc_ring> ring) : q_(std::move(ring)) {}

  /// Puts a message (blocks only while a maxsize given in queue_options is reached). Raises state_error after close().
  void put(const T& x) { q_.put(x); }
  /// As put(x), for a U sent as T.
  template <detail::sends_as<T> U>
  void put(const U& x) {
    q_.put(x);
  }
  /// Blocks until a message arrives. Raises eof_error on a closed, empty queue.
  [[nodiscard]] T get() { return q_.get(); }
  /// As get(), raising queue_empty if nothing arrives within `timeout`.
  template <class Rep, class Period>
  [[nodiscard]] T get(std::chrono::duration<Rep, Period> timeout) {
    return q_.get(timeout);
  }
  /// The next message if one is there now; nullopt otherwise.
  [[nodiscard]] std::optional<T> try_get() { return q_.try_get(); }
  /// True when no message waits.
  [[nodiscard]] bool empty() const noexcept { return q_.empty(); }
  /// No more puts, by any process; getters drain what is left, then get eof_error.
  void close() noexcept { q_.close(); }
  /// The shared ring (its descriptor is what a spawned child inherits).
  [[nodiscard]] const std::shared_ptr<detail::mpmc_ring>& ring() const noexcept { return q_.ring(); }

 private:
  Queue<T> q_;
};

namespace detail {

/// Queues passed to a spawn/forkserver Process arrive as the same queue: the ring's
/// descriptor travels, the child maps it again.
template <class Q>
struct queue_handle_traits {
  static constexpr bool passable = true;
  static void encode(vector_writer& w, fd_collector& c, const Q& q) {
    std::uint32_t idx = c.add(q.ring()->fd());
    w.put(&idx, sizeof idx);
  }
  static Q adopt(reader& r, std::span<const int> fds) {
    std::uint32_t idx;
    r.get(&idx, sizeof idx, "queue descriptor index");
    return Q(mpmc_ring::attach(dup_received(fds, idx)));
  }
};
template <class T>
struct handle_traits<Queue<T>> : queue_handle_traits<Queue<T>> {};
template <class T>
struct handle_traits<JoinableQueue<T>> : queue_handle_traits<JoinableQueue<T>> {};
template <class T>
struct handle_traits<SimpleQueue<T>> : queue_handle_traits<SimpleQueue<T>> {};

}  // namespace detail

}  // namespace mproc
