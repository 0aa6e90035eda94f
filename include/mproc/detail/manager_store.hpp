// The state behind a Manager: every managed object (dict, list, namespace, queue,
// lock, value) lives in one memfd-backed shared segment, organised with
// Boost.Interprocess containers (offset pointers, so each process may map it at a
// different address) and guarded by one robust, process-shared pthread mutex.
//
// Why shared memory instead of a request per operation to the server: a Unix-socket
// round trip costs ~45 us on the target machine, which caps a synchronous proxy at
// ~20k ops/s per process -- about what Python's Manager achieves. Operating on the
// segment directly under a mutex costs well under a microsecond, needs no batching
// or pipelining (so every operation is visible to every process the moment it
// returns, exactly as with a round trip), keeps update() atomic (the callable runs
// under the mutex, in the caller's process, so any callable works, under fork,
// spawn or an unrelated attaching process alike), and items() consistent (one
// snapshot under the mutex). The server process still exists: it owns the segment,
// hands its descriptor to processes that did not inherit it (over an authenticated
// Unix socket, SCM_RIGHTS), and executes the same operations for remote TCP clients.
//
// Robustness: the mutex is robust, so a process killed while holding it does not
// block the others: the next locker takes over. If it was killed in the middle of
// changing a container (a flag in the segment says so), the structure may be
// half-changed; the manager is then "poisoned": every later operation raises
// manager_error instead of walking a broken structure. The server holds a second robust mutex for its
// whole life: a non-owner's trylock on it answers "is the server alive?" without a
// system call, which is how a vanished server is reported at the next call.
#pragma once

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <pthread.h>
#include <sys/stat.h>

#include <boost/container/deque.hpp>
#include <boost/container/map.hpp>
#include <boost/container/vector.hpp>
#include <boost/interprocess/allocators/allocator.hpp>
#include <boost/interprocess/containers/string.hpp>
#include <boost/interprocess/exceptions.hpp>
#include <boost/interprocess/indexes/iset_index.hpp>
#include <boost/interprocess/managed_external_buffer.hpp>
#include <boost/interprocess/mem_algo/rbtree_best_fit.hpp>
#include <boost/interprocess/sync/mutex_family.hpp>

#include "../errors.hpp"
#include "../serialization.hpp"
#include "../synchronize.hpp"
#include "log.hpp"
#include "posix/posix.hpp"
#include "posix/robust_mutex.hpp"
#include "posix/shm_region.hpp"

namespace mproc::detail::mgr {

namespace bip = boost::interprocess;
namespace bc = boost::container;

// The segment's own allocator is unsynchronised: every allocation happens under the
// root mutex, which (unlike Boost's interprocess mutexes) survives a dead owner.
using segment = bip::basic_managed_external_buffer<char, bip::rbtree_best_fit<bip::null_mutex_family>,
                                                   bip::iset_index>;
using seg_manager = segment::segment_manager;
template <class T>
using shm_alloc = bip::allocator<T, seg_manager>;
using shm_string = bip::basic_string<char, std::char_traits<char>, shm_alloc<char>>;

inline std::string_view sv(const shm_string& s) noexcept { return {s.data(), s.size()}; }

struct bytes_less {
  using is_transparent = void;
  static std::string_view v(const shm_string& s) noexcept { return sv(s); }
  static std::string_view v(std::string_view s) noexcept { return s; }
  template <class A, class B>
  bool operator()(const A& a, const B& b) const noexcept {
    return v(a) < v(b);
  }
};

struct dict_entry {
  shm_string value;
  std::uint64_t seq;  // insertion order, so items() lists keys as a Python dict does
};
using dict_map = bc::map<shm_string, dict_entry, bytes_less,
                         shm_alloc<std::pair<const shm_string, dict_entry>>>;
using bytes_vec = bc::vector<shm_string, shm_alloc<shm_string>>;
using bytes_deque = bc::deque<shm_string, shm_alloc<shm_string>>;

enum class kind : std::uint32_t {
  dict = 1, list, ns, queue, lock, value,
  // New kinds go last: the numbers are the wire protocol.
  event, condition, semaphore, bounded_semaphore, rlock, barrier, array, joinable_queue
};
inline constexpr kind last_kind = kind::joinable_queue;

inline const char* kind_name(kind k) {
  switch (k) {
    case kind::dict: return "dict";
    case kind::list: return "list";
    case kind::ns: return "Namespace";
    case kind::queue: return "Queue";
    case kind::lock: return "Lock";
    case kind::value: return "Value";
    case kind::event: return "Event";
    case kind::condition: return "Condition";
    case kind::semaphore: return "Semaphore";
    case kind::bounded_semaphore: return "BoundedSemaphore";
    case kind::rlock: return "RLock";
    case kind::barrier: return "Barrier";
    case kind::array: return "Array";
    case kind::joinable_queue: return "JoinableQueue";
  }
  return "object";
}

/// One managed object. Every kind carries all containers (empty ones cost a few
/// words), which keeps the layout a single plain type.
struct object {
  kind k;
  std::uint64_t tag1, tag2;  // type tags of key/element and value, checked on lookup by name
  dict_map dict;
  bytes_vec list;
  bytes_deque queue;
  shm_string value;
  std::uint64_t maxsize = 0;
  std::uint64_t next_seq = 0;
  std::uint32_t locked = 0;  // Lock: held; Event: set
  // Semaphore: its value; Barrier: parties inside wait(); JoinableQueue: unfinished
  // tasks. `bound`: a BoundedSemaphore's initial value, a Barrier's parties.
  std::int64_t count = 0, bound = 0;
  // RLock, Condition: the holder (a token naming process and thread; 0: free) and
  // how many times it holds the lock.
  std::uint64_t owner = 0;
  std::uint32_t depth = 0;
  // Condition: waiters not yet notified, notifications not yet taken.
  std::int64_t waiters = 0, tokens = 0;
  // Barrier: the round, whether it is broken, which recent rounds ended broken (bit
  // round % 64), and wait()'s default timeout (ns; -1: none).
  std::uint64_t round = 0, broken_rounds = 0;
  std::uint32_t broken = 0;
  std::int64_t default_timeout_ns = -1;
  // Futex words (waited on without the root mutex held).
  std::atomic<std::uint32_t> put_seq{0}, get_seq{0}, release_seq{0};

  object(const shm_alloc<char>& a, kind kk, std::uint64_t t1, std::uint64_t t2)
      : k(kk), tag1(t1), tag2(t2), dict(a), list(a), queue(a), value(a) {}
};

using object_map = bc::map<std::uint64_t, bip::offset_ptr<object>, std::less<std::uint64_t>,
                           shm_alloc<std::pair<const std::uint64_t, bip::offset_ptr<object>>>>;
using name_map = bc::map<shm_string, std::uint64_t, bytes_less,
                         shm_alloc<std::pair<const shm_string, std::uint64_t>>>;

struct root {
  pthread_mutex_t mutex;  // guards everything in the segment
  pthread_mutex_t life;   // held by the server while it lives
  std::uint64_t next_id = 1;
  object_map objects;
  name_map names;
  // Set while a process changes the containers. A process that dies with it set may
  // have left them half-changed: the next locker then poisons the manager rather
  // than walk a broken structure.
  std::atomic<std::uint32_t> dirty{0};
  std::uint32_t poisoned = 0;

  explicit root(const shm_alloc<char>& a) : objects(a), names(a) {
    pthread_mutexattr_t at;
    ::pthread_mutexattr_init(&at);
    ::pthread_mutexattr_setpshared(&at, PTHREAD_PROCESS_SHARED);
    ::pthread_mutexattr_setrobust(&at, PTHREAD_MUTEX_ROBUST);
    // Error-checking: an update() function that calls the manager gets EDEADLK (an
    // exception) instead of hanging.
    ::pthread_mutexattr_settype(&at, PTHREAD_MUTEX_ERRORCHECK);
    ::pthread_mutex_init(&mutex, &at);
    ::pthread_mutex_init(&life, &at);
    ::pthread_mutexattr_destroy(&at);
  }
};

// ------------------------------------------------------------------ request / response

enum class op : std::uint8_t {
  create = 1,
  dict_set, dict_get, dict_contains, dict_erase, dict_size, dict_items, dict_clear, dict_update,
  dict_pop,
  list_append, list_get, list_set, list_size, list_items, list_clear, list_extend, list_pop,
  queue_put, queue_get, queue_size,
  lock_acquire, lock_release,
  value_get, value_set,
  attach,  // socket only: send the segment's descriptor
  hello,   // socket only: identify the manager
  destroy,
  // New operations go last: the numbers are the wire protocol.
  list_count, list_index, list_insert, list_remove, list_reverse, list_assign_if,
  dict_popitem, dict_setdefault,
  queue_full,
  event_set, event_clear, event_is_set, event_wait,
  sem_acquire, sem_release, sem_value,
  rlock_acquire, rlock_release,
  cond_wait, cond_notify,
  barrier_wait, barrier_reset, barrier_abort, barrier_info,
  queue_task_done, queue_join,
};

/// Operations that may block for their own timeout (request::m) beyond a round trip.
inline bool blocking_op(op o) noexcept {
  switch (o) {
    case op::queue_get: case op::queue_put: case op::lock_acquire: case op::event_wait:
    case op::sem_acquire: case op::rlock_acquire: case op::cond_wait: case op::barrier_wait:
    case op::queue_join:
      return true;
    default:
      return false;
  }
}

/// One operation. Fields are used per op (see execute()); n/m are indexes, flags or
/// timeouts in ns (-1: none).
struct request {
  op o{};
  std::uint64_t id = 0;
  std::string a, b;
  std::int64_t n = 0, m = -1;
  std::vector<std::string> list;

  [[nodiscard]] std::string encode() const {
    auto t = std::tie(o, id, a, b, n, m, list);
    std::string out(encoded_size(t), '\0');
    encode_to(t, reinterpret_cast<std::byte*>(out.data()));
    return out;
  }
  static request decode(std::string_view bytes) {
    request r;
    auto t = std::tie(r.o, r.id, r.a, r.b, r.n, r.m, r.list);
    reader rd{reinterpret_cast<const std::byte*>(bytes.data()),
              reinterpret_cast<const std::byte*>(bytes.data()) + bytes.size()};
    std::apply([&](auto&... f) { (detail::decode(rd, f), ...); }, t);
    if (rd.remaining()) throw serialization_error("corrupt manager request: trailing bytes");
    return r;
  }
};

enum class status : std::uint8_t {
  ok = 0, out_of_range, serialization, queue_empty, queue_full, timeout, manager, state,
  invalid_argument, other,
  // New statuses go last.
  value, broken_barrier
};

struct response {
  status st = status::ok;
  std::string a;
  std::vector<std::string> list;
  std::int64_t n = 0;

  [[nodiscard]] std::string encode() const {
    auto t = std::tie(st, a, list, n);
    std::string out(encoded_size(t), '\0');
    encode_to(t, reinterpret_cast<std::byte*>(out.data()));
    return out;
  }
  static response decode(std::string_view bytes) {
    response r;
    auto t = std::tie(r.st, r.a, r.list, r.n);
    reader rd{reinterpret_cast<const std::byte*>(bytes.data()),
              reinterpret_cast<const std::byte*>(bytes.data()) + bytes.size()};
    std::apply([&](auto&... f) { (detail::decode(rd, f), ...); }, t);
    if (rd.remaining()) throw serialization_error("corrupt manager response: trailing bytes");
    if (static_cast<std::uint8_t>(r.st) > static_cast<std::uint8_t>(status::broken_barrier))
      throw serialization_error("corrupt manager response: unknown status");
    return r;
  }
  /// Re-raises an error carried by a response as the type the server saw.
  void raise_if_error() const {
    switch (st) {
      case status::ok: return;
      case status::out_of_range: throw std::out_of_range(a);
      case status::serialization: throw serialization_error(a);
      case status::queue_empty: throw queue_empty(a);
      case status::queue_full: throw queue_full(a);
      case status::timeout: throw timeout_error(a);
      case status::manager: throw manager_error(a);
      case status::state: throw state_error(a);
      case status::invalid_argument: throw std::invalid_argument(a);
      case status::other: throw manager_error("manager server: " + a);
      case status::value: throw value_error(a);
      case status::broken_barrier: throw broken_barrier_error(a);
    }
  }
  /// Turns the exception being handled into an error response (server side).
  static response from_current_exception() {
    response r;
    try {
      throw;
    } catch (const std::out_of_range& e) {
      r.st = status::out_of_range, r.a = e.what();
    } catch (const serialization_error& e) {
      r.st = status::serialization, r.a = e.what();
    } catch (const mproc::queue_empty& e) {
      r.st = status::queue_empty, r.a = e.what();
    } catch (const mproc::queue_full& e) {
      r.st = status::queue_full, r.a = e.what();
    } catch (const timeout_error& e) {
      r.st = status::timeout, r.a = e.what();
    } catch (const manager_error& e) {
      r.st = status::manager, r.a = e.what();
    } catch (const state_error& e) {
      r.st = status::state, r.a = e.what();
    } catch (const std::invalid_argument& e) {
      r.st = status::invalid_argument, r.a = e.what();
    } catch (const value_error& e) {
      r.st = status::value, r.a = e.what();
    } catch (const broken_barrier_error& e) {
      r.st = status::broken_barrier, r.a = e.what();
    } catch (const std::exception& e) {
      r.st = status::other, r.a = e.what();
    }
    return r;
  }
};

/// Read-modify-write run under the root mutex: gets the current bytes (nullptr when
/// the key is missing) and the default, returns the new bytes.
using updater = std::function<std::string(const std::string_view* current, std::string_view dflt)>;

// ------------------------------------------------------------------ the store

class store {
 public:
  /// A new segment of `capacity` bytes (memory is committed only as it is used).
  static std::shared_ptr<store> create(std::size_t capacity) {
    auto s = std::shared_ptr<store>(new store);
    s->region_ = shm_region::create(capacity, "mproc-manager");
    s->seg_ = segment(bip::create_only, s->region_.data(), capacity);
    s->root_ = s->seg_.construct<root>(bip::anonymous_instance)(s->seg_.get_segment_manager());
    return s;
  }

  /// Maps a segment received as a descriptor; root_offset comes from its creator.
  static std::shared_ptr<store> attach(unique_fd fd, std::size_t capacity, std::size_t root_offset) {
    struct stat sb{};
    check(::fstat(fd.get(), &sb), "fstat(manager segment)");
    // Mapping past the end of the file would turn later accesses into SIGBUS.
    if (sb.st_size < 0 || static_cast<std::size_t>(sb.st_size) < capacity || capacity < sizeof(root))
      throw serialization_error("manager: the segment received is smaller than announced");
    auto s = std::shared_ptr<store>(new store);
    s->region_ = shm_region::map(std::move(fd), capacity);
    s->seg_ = segment(bip::open_only, s->region_.data(), capacity);
    if (root_offset + sizeof(root) > capacity)
      throw serialization_error("manager: segment root offset out of range");
    s->root_ = reinterpret_cast<root*>(static_cast<char*>(s->region_.data()) + root_offset);
    return s;
  }

  [[nodiscard]] int fd() const noexcept { return region_.fd(); }
  [[nodiscard]] std::size_t capacity() const noexcept { return region_.size(); }
  [[nodiscard]] std::size_t root_offset() const noexcept {
    return std::size_t(reinterpret_cast<char*>(root_) - static_cast<char*>(region_.data()));
  }

  /// Called once by the server's main thread; held until the server dies.
  void hold_life() {
    int rc = ::pthread_mutex_lock(&root_->life);
    if (rc == EOWNERDEAD) ::pthread_mutex_consistent(&root_->life);
    else if (rc != 0) throw_errno("pthread_mutex_lock(manager life)", rc);
  }

  [[nodiscard]] bool server_alive() const {
    int rc = ::pthread_mutex_trylock(&root_->life);
    // EDEADLK: this very thread holds it (the server's own; glibc answers so for a
    // robust error-checking mutex), so the server is alive. Taken for "gone" before, it
    // made the request fuzzer's single-threaded server refuse every request.
    if (rc == EBUSY) return true;
    // 0: never held or released at shutdown; EOWNERDEAD: the server died. Releasing
    // without marking it consistent leaves it unrecoverable: dead for everyone.
    if (rc == 0 || rc == EOWNERDEAD) ::pthread_mutex_unlock(&root_->life);
    return false;
  }

  void check_alive() const {
    if (!server_alive())
      throw manager_error("mproc::Manager: the manager's server process is gone (shut down or killed)");
  }

  /// Holds the root mutex; a dead previous owner is taken over.
  class guard {
   public:
    guard(store& s, std::int64_t timeout_ns) : m_(&s.root_->mutex), r_(s.root_) {
      int rc;
      if (timeout_ns < 0) {
        rc = ::pthread_mutex_lock(m_);
      } else {
        timespec ts;
        ::clock_gettime(CLOCK_MONOTONIC, &ts);
        std::int64_t ns = ts.tv_nsec + timeout_ns % 1'000'000'000;
        ts.tv_sec += timeout_ns / 1'000'000'000 + ns / 1'000'000'000;
        ts.tv_nsec = ns % 1'000'000'000;
        rc = ::pthread_mutex_clocklock(m_, CLOCK_MONOTONIC, &ts);
        if (rc == 0 || rc == EOWNERDEAD) clocklock_acquired(m_);
      }
      if (rc == EOWNERDEAD) {
        ::pthread_mutex_consistent(m_);
        if (r_->dirty.load(std::memory_order_relaxed)) {
          r_->poisoned = 1;
          r_->dirty.store(0, std::memory_order_relaxed);
          detail::log(log_level::error, "manager: a process died while changing shared state");
        } else {
          detail::log(log_level::warning, "manager: a process died holding the state lock; taking it over");
        }
      } else if (rc == ETIMEDOUT) {
        throw timeout_error(
            "mproc::Manager: timed out waiting for the shared state lock (is a process holding it stopped?)");
      } else if (rc != 0) {
        throw_errno("pthread_mutex_lock(manager state)", rc);
      }
      if (r_->poisoned) {
        ::pthread_mutex_unlock(m_);
        throw manager_error(
            "mproc::Manager: a process was killed in the middle of changing the manager's shared state; it may "
            "be inconsistent, so the manager refuses further operations");
      }
    }
    ~guard() { ::pthread_mutex_unlock(m_); }
    guard(const guard&) = delete;
    guard& operator=(const guard&) = delete;

   private:
    pthread_mutex_t* m_;
    root* r_;
  };

  /// Marks the span in which containers change (see root::dirty). The fences keep
  /// the compiler from moving container writes outside it: a signal can stop the
  /// process at any instruction.
  class mutation {
   public:
    explicit mutation(store& s) : r_(s.root_) {
      r_->dirty.store(1, std::memory_order_relaxed);
      std::atomic_signal_fence(std::memory_order_seq_cst);
    }
    ~mutation() {
      std::atomic_signal_fence(std::memory_order_seq_cst);
      r_->dirty.store(0, std::memory_order_relaxed);
    }
    mutation(const mutation&) = delete;
    mutation& operator=(const mutation&) = delete;

   private:
    root* r_;
  };

  segment& seg() { return seg_; }
  shm_alloc<char> alloc() { return shm_alloc<char>(seg_.get_segment_manager()); }
  root& r() { return *root_; }
  shm_string str(std::string_view s) { return shm_string(s.data(), s.size(), alloc()); }

  object& find(std::uint64_t id, kind k) {
    auto it = root_->objects.find(id);
    if (it == root_->objects.end())
      throw manager_error("mproc::Manager: no object with id " + std::to_string(id));
    object& o = *it->second;
    // A Namespace is a dict by name; an Array a list of fixed size; a JoinableQueue a
    // Queue; a Condition has an RLock.
    if (o.k != k && !(k == kind::dict && o.k == kind::ns) &&
        !(k == kind::list && o.k == kind::array) && !(k == kind::queue && o.k == kind::joinable_queue) &&
        !(k == kind::rlock && o.k == kind::condition) &&
        !(k == kind::semaphore && o.k == kind::bounded_semaphore))
      throw manager_error(std::string("mproc::Manager: object ") + std::to_string(id) + " is a " +
                          kind_name(o.k) + ", not a " + kind_name(k));
    return o;
  }

  std::int64_t lock_timeout_ns = 30'000'000'000;  // root mutex acquisition

 private:
  store() = default;
  shm_region region_;
  segment seg_;
  root* root_ = nullptr;
};

/// A list that may change size (not an Array).
inline object& resizable_list(store& s, std::uint64_t id) {
  object& o = s.find(id, kind::list);
  if (o.k == kind::array)
    throw manager_error("mproc::Manager: an Array has a fixed size (object " + std::to_string(id) + ")");
  return o;
}

/// Python's slice bound: negative counts from the end, then clamped to [0, size].
inline std::size_t clamp_index(std::int64_t i, std::size_t size) {
  const std::int64_t n = static_cast<std::int64_t>(size);
  if (i < 0) i = std::max<std::int64_t>(0, i + n);
  return std::size_t(std::min(i, n));
}

inline void bump(std::atomic<std::uint32_t>& w) noexcept {
  w.fetch_add(1);
  futex_wake(&w);
}

/// The caller's token in a request naming the holder of an RLock or Condition.
inline std::uint64_t owner_token(const request& q) {
  std::uint64_t t = 0;
  if (q.b.size() != sizeof t) throw serialization_error("corrupt manager request: no owner token");
  std::memcpy(&t, q.b.data(), sizeof t);
  if (t == 0) throw serialization_error("corrupt manager request: owner token 0");
  return t;
}

inline std::int64_t normalize_index(std::int64_t i, std::size_t size, const char* what) {
  std::int64_t n = static_cast<std::int64_t>(size);
  std::int64_t j = i < 0 ? i + n : i;
  if (j < 0 || j >= n)
    throw std::out_of_range(std::string(what) + " index " + std::to_string(i) +
                            " out of range (size " + std::to_string(size) + ")");
  return j;
}

/// Waits on a futex word in slices so that a vanished server is noticed; returns
/// false at the deadline.
inline bool wait_word(store& s, const std::atomic<std::uint32_t>& w, std::uint32_t seen, deadline_t d) {
  constexpr std::int64_t slice = 100'000'000;
  std::int64_t left = d < 0 ? slice : std::min<std::int64_t>(slice, d - monotonic_ns());
  if (left <= 0) return false;
  futex_wait(&w, seen, left);
  s.check_alive();
  return true;
}

/// Ends a Barrier's round: the parties inside are released (with broken_barrier_error
/// when `broken`), and the next round starts empty.
inline void next_round(object& o, bool broken) noexcept {
  const std::uint64_t bit = std::uint64_t(1) << (o.round % 64);
  if (broken) o.broken_rounds |= bit;
  else o.broken_rounds &= ~bit;
  ++o.round;
  o.broken_rounds &= ~(std::uint64_t(1) << (o.round % 64));
  o.count = 0;
  bump(o.release_seq);
}

/// Runs attempt(object) under the root mutex until it returns true; in between
/// sleeps on the object's futex word w (sampled under the mutex, so no change is
/// missed). False at the deadline, or at once when nonblocking.
template <class F>
bool wait_until(store& s, std::uint64_t id, kind k, std::atomic<std::uint32_t> object::*w, deadline_t d,
                bool nonblocking, F attempt) {
  for (;;) {
    std::uint32_t seen;
    object* o = nullptr;
    {
      store::guard g(s, s.lock_timeout_ns);
      o = &s.find(id, k);
      if (attempt(*o)) return true;
      seen = (o->*w).load();
    }
    if (nonblocking || !wait_word(s, o->*w, seen, d)) return false;
  }
}

/// Runs one operation against the segment. `fn` serves dict_update in the caller's
/// process; a server executing a remote request passes the registered updater.
inline response execute(store& s, const request& q, const updater* fn = nullptr) {
  s.check_alive();
  response out;
  try {
    switch (q.o) {
      case op::create: {
        if (q.n < 1 || q.n > static_cast<std::int64_t>(last_kind))
          throw value_error("manager: unknown object kind " + std::to_string(q.n));
        kind k = static_cast<kind>(q.n);
        std::uint64_t t[2] = {0, 0};
        if (q.b.size() == sizeof t) std::memcpy(t, q.b.data(), sizeof t);
        store::guard g(s, s.lock_timeout_ns);
        root& r = s.r();
        if (!q.a.empty()) {
          auto it = r.names.find(std::string_view(q.a));
          if (it != r.names.end()) {
            object& o = *r.objects.find(it->second)->second;
            if (o.k != k)
              throw manager_error("mproc::Manager: \"" + q.a + "\" is a " + kind_name(o.k) +
                                  ", not a " + kind_name(k));
            if (o.tag1 != t[0] || o.tag2 != t[1])
              throw serialization_error("mproc::Manager: \"" + q.a + "\" holds " + tag_name(o.tag1) +
                                        (o.tag2 ? " -> " + tag_name(o.tag2) : std::string()) +
                                        ", requested " + tag_name(t[0]) +
                                        (t[1] ? " -> " + tag_name(t[1]) : std::string()));
            out.n = static_cast<std::int64_t>(it->second);
            break;
          }
        }
        // The client refuses these; a forged request must not make a barrier that can
        // never release or a semaphore below zero (checked before anything changes).
        if (k == kind::barrier && (q.m < 1 || q.m > INT32_MAX))
          throw value_error("mproc::Manager: Barrier parties out of range");
        if ((k == kind::semaphore || k == kind::bounded_semaphore) && q.m < 0)
          throw value_error("mproc::Manager: a semaphore's initial value must be >= 0");
        std::uint64_t id = r.next_id;
        store::mutation mu(s);
        object* o = s.seg().construct<object>(bip::anonymous_instance)(s.alloc(), k, t[0], t[1]);
        o->maxsize = q.m > 0 ? std::uint64_t(q.m) : 0;
        switch (k) {
          case kind::semaphore:
          case kind::bounded_semaphore:
            o->count = o->bound = q.m;  // the initial value (checked above)
            break;
          case kind::barrier:
            o->bound = q.m;  // parties
            if (q.list.size() == 1 && q.list[0].size() == sizeof(std::int64_t))
              std::memcpy(&o->default_timeout_ns, q.list[0].data(), sizeof(std::int64_t));
            break;
          case kind::array:
            o->list.reserve(q.list.size());
            for (auto& e : q.list) o->list.push_back(s.str(e));
            break;
          default:
            if (q.list.size() == 1) o->value.assign(q.list[0].data(), q.list[0].size());  // a Value's initial value
        }
        try {
          r.objects.emplace(id, o);
          if (!q.a.empty()) r.names.emplace(s.str(q.a), id);
        } catch (...) {
          r.objects.erase(id);
          s.seg().destroy_ptr(o);
          throw;
        }
        ++r.next_id;
        out.n = static_cast<std::int64_t>(id);
        break;
      }
      case op::dict_set: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::dict);
        auto it = o.dict.find(std::string_view(q.a));
        store::mutation mu(s);
        if (it != o.dict.end()) it->second.value.assign(q.b.data(), q.b.size());
        else o.dict.emplace(s.str(q.a), dict_entry{s.str(q.b), o.next_seq++});
        break;
      }
      case op::dict_get:
      case op::dict_pop: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::dict);
        auto it = o.dict.find(std::string_view(q.a));
        if (it != o.dict.end()) {
          out.a.assign(it->second.value.data(), it->second.value.size());
          out.n = 1;
          if (q.o == op::dict_pop) {
            store::mutation mu(s);
            o.dict.erase(it);
          }
        }
        break;
      }
      case op::dict_contains: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::dict);
        out.n = o.dict.find(std::string_view(q.a)) != o.dict.end();
        break;
      }
      case op::dict_erase: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::dict);
        auto it = o.dict.find(std::string_view(q.a));
        if (it != o.dict.end()) {
          store::mutation mu(s);
          o.dict.erase(it);
          out.n = 1;
        }
        break;
      }
      case op::dict_size: {
        store::guard g(s, s.lock_timeout_ns);
        out.n = static_cast<std::int64_t>(s.find(q.id, kind::dict).dict.size());
        break;
      }
      case op::dict_items: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::dict);
        std::vector<const dict_map::value_type*> v;
        v.reserve(o.dict.size());
        for (auto& e : o.dict) v.push_back(&e);
        std::sort(v.begin(), v.end(), [](auto* x, auto* y) { return x->second.seq < y->second.seq; });
        out.list.reserve(v.size() * 2);
        for (auto* e : v) {
          out.list.emplace_back(sv(e->first));
          out.list.emplace_back(sv(e->second.value));
        }
        break;
      }
      case op::dict_clear: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::dict);
        store::mutation mu(s);
        o.dict.clear();
        break;
      }
      case op::dict_update: {
        if (!fn) throw manager_error("manager: update without a function");
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::dict);
        auto it = o.dict.find(std::string_view(q.a));
        std::string result;
        if (it != o.dict.end()) {
          std::string_view cur = sv(it->second.value);
          result = (*fn)(&cur, q.b);
          store::mutation mu(s);
          it->second.value.assign(result.data(), result.size());
        } else {
          result = (*fn)(nullptr, q.b);
          store::mutation mu(s);
          o.dict.emplace(s.str(q.a), dict_entry{s.str(result), o.next_seq++});
        }
        out.a = std::move(result);
        break;
      }
      case op::list_append:
      case op::list_extend: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = resizable_list(s, q.id);
        store::mutation mu(s);
        ++o.next_seq;
        if (q.o == op::list_append) {
          o.list.push_back(s.str(q.b));
        } else {
          o.list.reserve(o.list.size() + q.list.size());
          for (auto& e : q.list) o.list.push_back(s.str(e));
        }
        break;
      }
      case op::list_get: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::list);
        out.a = sv(o.list[std::size_t(normalize_index(q.n, o.list.size(), "list"))]);
        break;
      }
      case op::list_set: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::list);
        auto i = std::size_t(normalize_index(q.n, o.list.size(), "list assignment"));
        store::mutation mu(s);
        ++o.next_seq;
        o.list[i].assign(q.b.data(), q.b.size());
        break;
      }
      case op::list_pop: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = resizable_list(s, q.id);
        if (o.list.empty()) throw std::out_of_range("pop from empty list");
        auto i = std::size_t(normalize_index(q.n, o.list.size(), "pop"));
        out.a = sv(o.list[i]);
        store::mutation mu(s);
        ++o.next_seq;
        o.list.erase(o.list.begin() + static_cast<std::ptrdiff_t>(i));
        break;
      }
      case op::list_size: {
        store::guard g(s, s.lock_timeout_ns);
        out.n = static_cast<std::int64_t>(s.find(q.id, kind::list).list.size());
        break;
      }
      case op::list_items: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::list);
        out.list.reserve(o.list.size());
        for (auto& e : o.list) out.list.emplace_back(sv(e));
        out.n = static_cast<std::int64_t>(o.next_seq);  // the version, for list_assign_if
        break;
      }
      case op::list_clear: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = resizable_list(s, q.id);
        store::mutation mu(s);
        ++o.next_seq;
        o.list.clear();
        break;
      }
      case op::queue_put: {
        deadline_t d = deadline_after(q.m);
        for (;;) {
          std::uint32_t seen;
          object* op_ = nullptr;
          {
            store::guard g(s, s.lock_timeout_ns);
            object& o = s.find(q.id, kind::queue);
            op_ = &o;
            if (!o.maxsize || o.queue.size() < o.maxsize) {
              {
                store::mutation mu(s);
                o.queue.push_back(s.str(q.b));
              }
              if (o.k == kind::joinable_queue) ++o.count;  // one more unfinished task
              o.put_seq.fetch_add(1);
              futex_wake(&o.put_seq);
              break;
            }
            seen = o.get_seq.load();
          }
          if (q.n == 1 || !wait_word(s, op_->get_seq, seen, d))
            throw mproc::queue_full("manager Queue is full");
        }
        break;
      }
      case op::queue_get: {
        deadline_t d = deadline_after(q.m);
        for (;;) {
          std::uint32_t seen;
          object* op_ = nullptr;
          {
            store::guard g(s, s.lock_timeout_ns);
            object& o = s.find(q.id, kind::queue);
            op_ = &o;
            if (!o.queue.empty()) {
              out.a = sv(o.queue.front());
              {
                store::mutation mu(s);
                o.queue.pop_front();
              }
              o.get_seq.fetch_add(1);
              futex_wake(&o.get_seq);
              break;
            }
            seen = o.put_seq.load();
          }
          if (q.n == 1 || !wait_word(s, op_->put_seq, seen, d))
            throw mproc::queue_empty("manager Queue is empty");
        }
        break;
      }
      case op::queue_size: {
        store::guard g(s, s.lock_timeout_ns);
        out.n = static_cast<std::int64_t>(s.find(q.id, kind::queue).queue.size());
        break;
      }
      case op::lock_acquire: {
        deadline_t d = deadline_after(q.m);
        for (;;) {
          std::uint32_t seen;
          object* op_ = nullptr;
          {
            store::guard g(s, s.lock_timeout_ns);
            object& o = s.find(q.id, kind::lock);
            op_ = &o;
            if (!o.locked) {
              o.locked = 1;
              out.n = 1;
              break;
            }
            seen = o.release_seq.load();
          }
          if (q.n == 1 || !wait_word(s, op_->release_seq, seen, d)) break;  // out.n == 0
        }
        break;
      }
      case op::lock_release: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::lock);
        if (!o.locked) throw state_error("release of an unlocked manager Lock");
        o.locked = 0;
        o.release_seq.fetch_add(1);
        futex_wake(&o.release_seq);
        break;
      }
      case op::value_get: {
        store::guard g(s, s.lock_timeout_ns);
        out.a = sv(s.find(q.id, kind::value).value);
        break;
      }
      case op::value_set: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::value);
        store::mutation mu(s);
        o.value.assign(q.b.data(), q.b.size());
        break;
      }
      case op::destroy: {
        store::guard g(s, s.lock_timeout_ns);
        root& r = s.r();
        auto it = r.objects.find(q.id);
        if (it == r.objects.end()) break;  // already gone: destroying twice is harmless
        object* o = it->second.get();
        store::mutation mu(s);
        for (auto n = r.names.begin(); n != r.names.end();) {
          if (n->second == q.id) n = r.names.erase(n);
          else ++n;
        }
        r.objects.erase(it);
        // Wake anyone blocked on it: their next look-up reports the object gone.
        o->put_seq.fetch_add(1), o->get_seq.fetch_add(1), o->release_seq.fetch_add(1);
        futex_wake(&o->put_seq), futex_wake(&o->get_seq), futex_wake(&o->release_seq);
        s.seg().destroy_ptr(o);
        out.n = 1;
        break;
      }

      case op::list_count: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::list);
        out.n = std::count_if(o.list.begin(), o.list.end(), [&](const auto& e) { return sv(e) == q.b; });
        break;
      }
      case op::list_index: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::list);
        const std::size_t from = clamp_index(q.n, o.list.size()), to = clamp_index(q.m, o.list.size());
        out.n = -1;
        for (std::size_t i = from; i < to; ++i)
          if (sv(o.list[i]) == q.b) {
            out.n = static_cast<std::int64_t>(i);
            break;
          }
        if (out.n < 0) throw value_error("list.index(x): x not in list");
        break;
      }
      case op::list_insert: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = resizable_list(s, q.id);
        const std::size_t i = clamp_index(q.n, o.list.size());
        store::mutation mu(s);
        ++o.next_seq;
        o.list.insert(o.list.begin() + static_cast<std::ptrdiff_t>(i), s.str(q.b));
        break;
      }
      case op::list_remove: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = resizable_list(s, q.id);
        auto it = std::find_if(o.list.begin(), o.list.end(), [&](const auto& e) { return sv(e) == q.b; });
        if (it == o.list.end()) throw value_error("list.remove(x): x not in list");
        store::mutation mu(s);
        ++o.next_seq;
        o.list.erase(it);
        break;
      }
      case op::list_reverse: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::list);
        store::mutation mu(s);
        ++o.next_seq;
        // Swapping shm strings of one allocator exchanges their buffers: no copies.
        std::reverse(o.list.begin(), o.list.end());
        break;
      }
      case op::list_assign_if: {
        // Replaces the contents if nothing changed them since list_items reported
        // version q.n (a sort done by the caller, never lost to a concurrent change).
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::list);
        if (static_cast<std::int64_t>(o.next_seq) != q.n) break;  // out.n == 0: retry
        if (q.list.size() != o.list.size())
          throw manager_error("mproc::Manager: list_assign_if with another size");
        store::mutation mu(s);
        ++o.next_seq;
        for (std::size_t i = 0; i < q.list.size(); ++i) o.list[i].assign(q.list[i].data(), q.list[i].size());
        out.n = 1;
        break;
      }
      case op::dict_popitem: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::dict);
        if (o.dict.empty()) throw std::out_of_range("popitem(): dictionary is empty (KeyError)");
        // Last in, first out, as Python's dict.
        auto last = std::max_element(o.dict.begin(), o.dict.end(),
                                     [](const auto& x, const auto& y) { return x.second.seq < y.second.seq; });
        out.list = {std::string(sv(last->first)), std::string(sv(last->second.value))};
        store::mutation mu(s);
        o.dict.erase(last);
        break;
      }
      case op::dict_setdefault: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::dict);
        auto it = o.dict.find(std::string_view(q.a));
        if (it != o.dict.end()) {
          out.a = sv(it->second.value);
        } else {
          store::mutation mu(s);
          o.dict.emplace(s.str(q.a), dict_entry{s.str(q.b), o.next_seq++});
          out.a = q.b;
        }
        break;
      }
      case op::queue_full: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::queue);
        out.n = o.maxsize && o.queue.size() >= o.maxsize;
        break;
      }
      case op::event_set:
      case op::event_clear: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::event);
        o.locked = q.o == op::event_set;
        if (o.locked) bump(o.release_seq);
        break;
      }
      case op::event_is_set: {
        store::guard g(s, s.lock_timeout_ns);
        out.n = s.find(q.id, kind::event).locked;
        break;
      }
      case op::event_wait: {
        out.n = wait_until(s, q.id, kind::event, &object::release_seq, deadline_after(q.m), false,
                           [](object& o) { return o.locked != 0; });
        break;
      }
      case op::sem_acquire: {
        out.n = wait_until(s, q.id, kind::semaphore, &object::release_seq, deadline_after(q.m), q.n == 1,
                           [](object& o) {
                             if (o.count <= 0) return false;
                             --o.count;
                             return true;
                           });
        break;
      }
      case op::sem_release: {
        if (q.n < 1) throw value_error("Semaphore.release(n): n must be at least 1");
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::semaphore);
        if (o.k == kind::bounded_semaphore && o.count > o.bound - q.n)
          throw value_error("BoundedSemaphore released too many times");
        o.count += q.n;
        bump(o.release_seq);
        break;
      }
      case op::sem_value: {
        store::guard g(s, s.lock_timeout_ns);
        out.n = s.find(q.id, kind::semaphore).count;
        break;
      }
      case op::rlock_acquire: {
        const std::uint64_t me = owner_token(q);
        out.n = wait_until(s, q.id, kind::rlock, &object::release_seq, deadline_after(q.m), q.n == 1,
                           [me](object& o) {
                             if (o.owner != 0 && o.owner != me) return false;
                             o.owner = me;
                             ++o.depth;
                             return true;
                           });
        break;
      }
      case op::rlock_release: {
        const std::uint64_t me = owner_token(q);
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::rlock);
        if (o.owner != me) throw state_error("cannot release un-acquired lock");
        if (--o.depth == 0) {
          o.owner = 0;
          bump(o.release_seq);
        }
        break;
      }
      case op::cond_wait: {
        const std::uint64_t me = owner_token(q);
        std::uint32_t depth = 0;
        {
          store::guard g(s, s.lock_timeout_ns);
          object& o = s.find(q.id, kind::condition);
          if (o.owner != me) throw state_error("cannot wait on un-acquired lock");
          depth = o.depth;
          o.owner = 0, o.depth = 0;
          ++o.waiters;
          bump(o.release_seq);
        }
        bool notified = wait_until(s, q.id, kind::condition, &object::get_seq, deadline_after(q.m), false,
                                   [](object& o) {
                                     if (o.tokens <= 0) return false;
                                     --o.tokens;
                                     return true;
                                   });
        if (!notified) {
          // Timed out; a notification that came meanwhile is still this waiter's.
          store::guard g(s, s.lock_timeout_ns);
          object& o = s.find(q.id, kind::condition);
          if (o.tokens > 0) --o.tokens, notified = true;
          else --o.waiters;
        }
        // The lock comes back whatever happened, as in Python.
        wait_until(s, q.id, kind::condition, &object::release_seq, -1, false, [me, depth](object& o) {
          if (o.owner != 0) return false;
          o.owner = me, o.depth = depth;
          return true;
        });
        out.n = notified;
        break;
      }
      case op::cond_notify: {
        const std::uint64_t me = owner_token(q);
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::condition);
        if (o.owner != me) throw state_error("cannot notify on un-acquired lock");
        const std::int64_t n = q.n < 0 ? o.waiters : std::min<std::int64_t>(q.n, o.waiters);
        o.waiters -= n;
        o.tokens += n;
        if (n > 0) bump(o.get_seq);
        break;
      }
      case op::barrier_wait: {
        const std::int64_t timeout = q.m == -2 ? std::int64_t(-3) : q.m;  // -2: the default, read below
        std::uint64_t round = 0;
        std::int64_t t = timeout;
        {
          store::guard g(s, s.lock_timeout_ns);
          object& o = s.find(q.id, kind::barrier);
          if (t == -3) t = o.default_timeout_ns;
          if (o.broken) throw broken_barrier_error("Barrier.wait(): the barrier is broken");
          round = o.round;
          out.n = o.count++;
          if (o.count == o.bound) {  // the last party releases the round
            next_round(o, false);
            break;
          }
        }
        bool ended = wait_until(s, q.id, kind::barrier, &object::release_seq, deadline_after(t), false,
                                [round](object& o) { return o.round != round || o.broken; });
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::barrier);
        if (o.round != round) {
          if (o.broken_rounds & (std::uint64_t(1) << (round % 64)))
            throw broken_barrier_error("Barrier.wait(): the barrier was reset or broken while waiting");
          break;  // released
        }
        if (!ended && !o.broken) {  // timed out: break the barrier, as Python does
          const std::int64_t missing = o.bound - o.count;
          o.broken = 1;
          next_round(o, true);
          throw broken_barrier_error("Barrier.wait(): timed out waiting for " + std::to_string(missing) +
                                     " more parties");
        }
        throw broken_barrier_error("Barrier.wait(): the barrier was broken while waiting");
      }
      case op::barrier_reset:
      case op::barrier_abort: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::barrier);
        if (q.o == op::barrier_abort) {
          o.broken = 1;
          next_round(o, true);
        } else {
          // Parties waiting now are released with broken_barrier_error.
          if (o.count > 0) next_round(o, true);
          o.broken = 0;
        }
        break;
      }
      case op::barrier_info: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::barrier);
        out.n = o.bound;
        out.list = {std::to_string(o.broken ? 0 : o.count), std::to_string(o.broken),
                    std::to_string(o.default_timeout_ns)};
        break;
      }
      case op::queue_task_done: {
        store::guard g(s, s.lock_timeout_ns);
        object& o = s.find(q.id, kind::joinable_queue);
        if (o.count <= 0) throw value_error("task_done() called too many times");
        if (--o.count == 0) bump(o.release_seq);
        break;
      }
      case op::queue_join: {
        out.n = wait_until(s, q.id, kind::joinable_queue, &object::release_seq, deadline_after(q.m), false,
                           [](object& o) { return o.count == 0; });
        break;
      }
      case op::attach:
      case op::hello:
        throw manager_error("manager: connection-level request outside a connection");
      default:
        throw serialization_error("manager: unknown operation " + std::to_string(int(q.o)));
    }
  } catch (const bip::bad_alloc&) {
    throw manager_error("mproc::Manager: shared memory full (capacity " + std::to_string(s.capacity()) +
                        " bytes); raise manager_options::capacity");
  }
  return out;
}

}  // namespace mproc::detail::mgr
