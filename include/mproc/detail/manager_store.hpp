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
//
// This file lays the segment out (the containers, the root, the store and its lock);
// the operations on it are in manager_execute.hpp, the messages naming them in
// manager_messages.hpp.
#pragma once

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

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
#include "log.hpp"
#include "manager_messages.hpp"
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
  robust_mutex mutex;  // guards everything in the segment
  robust_mutex life;   // held by the server while it lives
  std::uint64_t next_id = 1;
  object_map objects;
  name_map names;
  // Set while a process changes the containers. A process that dies with it set may
  // have left them half-changed: the next locker then poisons the manager rather
  // than walk a broken structure.
  std::atomic<std::uint32_t> dirty{0};
  std::uint32_t poisoned = 0;

  explicit root(const shm_alloc<char>& a) : objects(a), names(a) {
    // Error-checking (robust_mutex): an update() function that calls the manager gets
    // EDEADLK (an exception) instead of hanging.
    mutex.init();
    life.init();
  }
};

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
    const struct stat sb = file_stat(fd.get(), "fstat(manager segment)");
    // Mapping past the end of the file would turn later accesses into SIGBUS.
    if (sb.st_size < 0 || static_cast<std::size_t>(sb.st_size) < capacity || capacity < sizeof(root))
      throw serialization_error("manager: the segment received is smaller than announced");
    auto s = std::shared_ptr<store>(new store);
    s->region_ = shm_region::map(std::move(fd), capacity);
    s->seg_ = segment(bip::open_only, s->region_.data(), capacity);
    // Written so that a forged offset near 2^64 cannot wrap past the check.
    if (root_offset > capacity || capacity - root_offset < sizeof(root) || root_offset % alignof(root) != 0)
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
    if (root_->life.lock(-1) == lock_result::already_mine)
      throw_errno("pthread_mutex_lock(manager life)", EDEADLK);
  }

  /// The server holds the life lock from start to death (robust_mutex::held_by_live_thread).
  [[nodiscard]] bool server_alive() const { return root_->life.held_by_live_thread(); }

  void check_alive() const {
    if (!server_alive())
      throw manager_error("mproc::Manager: the manager's server process is gone (shut down or killed)");
  }

  /// Holds the root mutex; a dead previous owner is taken over.
  class guard {
   public:
    guard(store& s, std::int64_t timeout_ns) : m_(&s.root_->mutex), r_(s.root_) {
      switch (m_->lock(timeout_ns < 0 ? -1 : timeout_ns)) {
        case lock_result::acquired: break;
        case lock_result::owner_died:
          if (r_->dirty.load(std::memory_order_relaxed)) {
            r_->poisoned = 1;
            r_->dirty.store(0, std::memory_order_relaxed);
            detail::log(log_level::error, "manager: a process died while changing shared state");
          } else {
            detail::log(log_level::warning, "manager: a process died holding the state lock; taking it over");
          }
          break;
        case lock_result::timed_out:
          throw timeout_error(
              "mproc::Manager: timed out waiting for the shared state lock (is a process holding it stopped?)");
        case lock_result::already_mine: throw_errno("pthread_mutex_lock(manager state)", EDEADLK);
      }
      if (r_->poisoned) {
        (void)m_->unlock();
        throw manager_error(
            "mproc::Manager: a process was killed in the middle of changing the manager's shared state; it may "
            "be inconsistent, so the manager refuses further operations");
      }
    }
    ~guard() { (void)m_->unlock(); }
    guard(const guard&) = delete;
    guard& operator=(const guard&) = delete;

   private:
    robust_mutex* m_;
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

}  // namespace mproc::detail::mgr
