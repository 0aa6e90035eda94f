// How a proxy reaches its manager: a backend runs each request, either on the
// segment mapped in this process (local_backend) or as a round trip to the server over
// TCP (remote_backend); an endpoint picks one, per process, and shares it among the
// proxies of one manager. Also the process-local tables behind that sharing.
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <utility>

#include <sys/types.h>
#include <unistd.h>

#include "../errors.hpp"
#include "../version.hpp"
#include "manager_messages.hpp"
#include "manager_protocol.hpp"
#include "posix/fork_hooks.hpp"
#include "posix/posix.hpp"

namespace mproc::detail::mgr {

class backend {
 public:
  virtual ~backend() = default;
  /// Runs a request; errors arrive as the exception the operation raised.
  virtual response call(const request& q, const updater* local_fn) = 0;
  /// True when operations run in this process (the segment is mapped here).
  [[nodiscard]] virtual bool local() const noexcept = 0;
  /// False once a connection failed; the next call then connects afresh.
  [[nodiscard]] virtual bool usable() const noexcept { return true; }
};

class store;  // the shared segment (manager_store.hpp; its body is the server's business)

class local_backend final : public backend {
 public:
  explicit local_backend(std::shared_ptr<store> s) : s_(std::move(s)) {}
  // Declared inline when header-only: a non-inline virtual would be the key function,
  // and every file would emit the vtable, this body and the whole store with it.
  MPROC_FUNC response call(const request& q, const updater* fn) override;
  [[nodiscard]] bool local() const noexcept override { return true; }
  store& st() { return *s_; }

 private:
  std::shared_ptr<store> s_;
};

/// Authenticated connection: we prove our key, then make the server prove its own.
inline unique_fd open_connection(const std::string& address, const std::string& key, std::int64_t timeout_ns) {
  deadline_t d = deadline_after(timeout_ns);
  unique_fd fd = connect_to(address, d);
  answer_challenge(fd.get(), key, d);
  deliver_challenge(fd.get(), key, d);
  return fd;
}

class remote_backend final : public backend {
 public:
  remote_backend(unique_fd fd, std::int64_t timeout_ns, std::size_t cap)
      : fd_(std::move(fd)), timeout_ns_(timeout_ns), cap_(cap) {}
  response call(const request& q, const updater*) override {
    std::lock_guard g(m_);
    if (!fd_) throw eof_error("mproc::Manager: connection to the server was lost");
    bool blocking = blocking_op(q.o);
    deadline_t d = !blocking ? deadline_after(timeout_ns_)
                   : q.m < 0 ? -1
                             : deadline_after(q.m > INT64_MAX - timeout_ns_ ? -1 : q.m + timeout_ns_);
    response r;
    std::exception_ptr failed;
    try {
      write_frame(fd_.get(), q.encode(), d);
      r = response::decode(read_frame(fd_.get(), cap_, d));
      failed = r.raised();  // a garbled error is a garbled reply
    } catch (const eof_error& e) {
      broken();
      throw server_gone(e);
    } catch (const timeout_error&) {
      broken();  // a late reply would be taken for the next call's
      throw;
    } catch (const serialization_error&) {
      broken();
      throw;
    } catch (const std::system_error& e) {
      broken();
      throw server_gone(e);
    }
    if (failed) std::rethrow_exception(failed);  // the operation's own error: the connection is fine
    return r;
  }
  [[nodiscard]] bool local() const noexcept override { return false; }
  [[nodiscard]] bool usable() const noexcept override { return !broken_.load(); }

  /// A connection that broke, or could not be made: the server is gone (or
  /// unreachable), which every proxy reports as manager_error, as a local one does.
  static manager_error server_gone(const std::exception& e) {
    return manager_error(std::string("mproc::Manager: the manager's server is gone or unreachable: ") +
                         e.what());
  }

 private:
  void broken() {
    fd_.reset();
    broken_.store(true);
  }
  std::mutex m_;
  unique_fd fd_;
  std::atomic<bool> broken_{false};
  std::int64_t timeout_ns_;
  std::size_t cap_;
};

// ---- process-local state
//
// Fork with threads: another thread may hold one of these mutexes at the instant of
// fork(); in the child that thread does not exist, so the mutex would stay locked
// forever. The child re-creates them before anything else runs, and endpoints
// re-create their own on first use in a new process.
//
// All of it is constant-initialised, so nothing runs at start-up for a program that
// never makes a manager, and no guard variable (a function-local static's) can be left
// taken in a child forked while another thread made it. The tables are made on first
// use, under the mutex that guards them, and never freed: a proxy destroyed while the
// program exits may still look one up.

/// A table made on first use. get() only with the table's mutex held.
template <class T>
class process_table {
 public:
  T& get() {
    if (!p_) p_ = new T();
    return *p_;
  }

 private:
  T* p_ = nullptr;
};

inline constinit std::mutex registry_mutex_v{}, endpoint_cache_mutex_v{}, updater_mutex_v{};
inline constinit std::atomic<std::uint64_t> fork_generation_v{0};

/// Guards local_registry().
inline std::mutex& registry_mutex() noexcept { return registry_mutex_v; }
/// Guards endpoint_cache().
inline std::mutex& endpoint_cache_mutex() noexcept { return endpoint_cache_mutex_v; }
/// Guards the update-function tables (manager_updaters.hpp).
inline std::mutex& updater_mutex() noexcept { return updater_mutex_v; }
/// Counts the forks this process descends from (see endpoint::get).
inline std::atomic<std::uint64_t>& fork_generation() noexcept { return fork_generation_v; }

inline void reset_locks_in_child() noexcept {
  fork_generation_v.fetch_add(1, std::memory_order_relaxed);
  new (&registry_mutex_v) std::mutex();
  new (&endpoint_cache_mutex_v) std::mutex();
  new (&updater_mutex_v) std::mutex();
}
// Filled during static initialisation, as fork_hooks.hpp asks; the hook touches only
// the constant-initialised state above.
inline const int managers_fork_hook_registered =
    set_fork_hook(fork_hook_slot::managers, {.child = &reset_locks_in_child});

/// Segments mapped in this process, by manager id (inherited across fork); only with
/// registry_mutex() held.
inline constinit process_table<std::map<std::string, std::weak_ptr<local_backend>>> local_registry_v{};
inline std::map<std::string, std::weak_ptr<local_backend>>& local_registry() { return local_registry_v.get(); }
struct endpoint;
/// Endpoints by manager id and mode; only with endpoint_cache_mutex() held.
inline constinit process_table<std::map<std::string, std::weak_ptr<endpoint>>> endpoint_cache_v{};
inline std::map<std::string, std::weak_ptr<endpoint>>& endpoint_cache() { return endpoint_cache_v.get(); }

/// The backend of a segment this process has mapped already, if any.
inline std::shared_ptr<local_backend> mapped_segment(const std::string& uuid) {
  std::lock_guard g(registry_mutex());
  auto it = local_registry().find(uuid);
  return it == local_registry().end() ? nullptr : it->second.lock();
}

/// Connects over a Unix socket and maps the segment; `uuid_out` receives the manager id.
MPROC_FUNC std::shared_ptr<local_backend> attach_local(const std::string& path, const std::string& key,
                                                       std::int64_t timeout_ns, std::size_t cap,
                                                       std::string* uuid_out = nullptr);

/// Where a manager is and how to talk to it: what a proxy carries to other processes.
struct endpoint_address {
  std::string uuid, unix_path, tcp_address, authkey;
  bool remote = false;  // operations go over TCP to the server
  std::int64_t timeout_ns = 30'000'000'000;
  std::size_t max_message = std::size_t(64) << 20;
};

/// How proxies of one manager reach it; shared by the proxies of a process.
struct endpoint : endpoint_address {
  explicit endpoint(endpoint_address a) : endpoint_address(std::move(a)) {}

  /// Shared, so a backend replaced by another thread stays alive for calls in flight.
  std::shared_ptr<backend> get() {
    if (std::uint64_t gen = fork_generation().load(std::memory_order_relaxed); gen != gen_) {
      new (&m_) std::mutex();  // first use in a forked child (see reset_locks_in_child)
      gen_ = gen;
    }
    std::lock_guard g(m_);
    // A mapped segment stays valid in a forked child; a socket must not be shared
    // with one, so a child opens its own connection.
    if (be_ && be_->usable() && (be_->local() || pid_ == current_pid())) return be_;
    be_ = resolve();
    pid_ = current_pid();
    return be_;
  }
  void set(std::shared_ptr<backend> be) {
    std::lock_guard g(m_);
    be_ = std::move(be);
    pid_ = current_pid();
  }

 private:
  std::shared_ptr<backend> resolve() {
    if (remote) {
      unique_fd fd;
      try {
        fd = open_connection(tcp_address, authkey, timeout_ns);
      } catch (const std::system_error& e) {
        throw remote_backend::server_gone(e);  // refused: nobody listens there any more
      } catch (const eof_error& e) {
        throw remote_backend::server_gone(e);
      }
      return std::make_shared<remote_backend>(std::move(fd), timeout_ns, max_message);
    }
    if (auto be = mapped_segment(uuid)) return be;
    return attach_local(unix_path, authkey, timeout_ns, max_message);
  }
  std::mutex m_;
  std::uint64_t gen_ = fork_generation().load(std::memory_order_relaxed);
  std::shared_ptr<backend> be_;
  pid_t pid_ = 0;
};

/// Endpoints by manager id and mode, so proxies decoded in one process share one
/// connection or mapping.
inline std::shared_ptr<endpoint> shared_endpoint(endpoint_address&& proto) {
  std::string k = proto.uuid + (proto.remote ? "/tcp" : "/local");
  std::lock_guard g(endpoint_cache_mutex());
  auto& cache = endpoint_cache();
  if (auto it = cache.find(k); it != cache.end())
    if (auto ep = it->second.lock()) return ep;
  auto ep = std::make_shared<endpoint>(std::move(proto));
  cache[k] = ep;
  return ep;
}

}  // namespace mproc::detail::mgr

#if MPROC_HEADER_ONLY
#include "manager_client_impl.hpp"
#endif
