/// \file
/// mproc::Manager itself: it starts the server process (or connects to one) and
/// makes the objects its proxies refer to. Options in manager_options.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include "../detail/hmac.hpp"
#include "../detail/log.hpp"
#include "../detail/manager_client.hpp"
#include "../detail/manager_messages.hpp"
#include "../detail/manager_protocol.hpp"
#include "../detail/posix/fork.hpp"
#include "../detail/posix/process_calls.hpp"
#include "../detail/posix/sockets.hpp"
#include "../errors.hpp"
#include "../serialization.hpp"
#include "../version.hpp"
#include "base_proxy.hpp"
#include "data_proxies.hpp"
#include "sync_proxies.hpp"

namespace mproc {

/// Options of a Manager.
struct manager_options {
  /// "" (default): local use only, through a Unix socket in a private directory.
  /// "host:port" additionally listens on TCP (port 0 picks one; see Manager::port()).
  std::string address{};
  /// Shared secret for the HMAC challenge; empty picks 32 random bytes.
  std::string authkey{};
  /// Size of the shared segment. Memory is committed only as objects fill it; an
  /// operation that does not fit raises manager_error.
  std::size_t capacity = std::size_t(256) << 20;
  /// Bound on every call: waiting for the shared state lock, connecting, and each
  /// round trip to the server (blocking Queue/Lock calls add their own timeout).
  std::chrono::nanoseconds timeout = std::chrono::seconds(30);
  /// Largest message accepted on a connection; a longer announced length closes it.
  std::size_t max_message = std::size_t(64) << 20;
};

/// Starts (or, with connect(), reaches) a manager and makes proxies to its objects.
/// Objects live until the manager shuts down or destroy() frees them. Movable, not copyable; the process that
/// created the manager shuts its server down on destruction or shutdown().
class Manager {
 public:
  /// Starts a manager for local use: a Unix socket in a private directory, a random key.
  Manager() : Manager(manager_options{}) {}

  /// Starts a manager with `opts` (TCP address, key, capacity, timeouts).
  explicit Manager(manager_options opts);

  /// A client of a manager running elsewhere, as Python's BaseManager(address,
  /// authkey).connect(): "host:port" for TCP, or the path of a manager's Unix socket
  /// (same host and uid; operations then run on the shared segment directly).
  /// A wrong key raises authentication_error.
  [[nodiscard]] static Manager connect(const std::string& address, const std::string& authkey,
                                       manager_options opts = {}) {
    using namespace detail::mgr;
    Manager m(client_tag{});
    m.opts_ = std::move(opts);
    m.opts_.address = address;
    m.opts_.authkey = authkey;
    std::int64_t timeout_ns = detail::to_ns(m.opts_.timeout);
    endpoint_address proto;
    proto.authkey = authkey, proto.timeout_ns = timeout_ns, proto.max_message = m.opts_.max_message;
    std::shared_ptr<backend> be;
    if (is_unix_address(address)) {
      be = attach_local(address, authkey, timeout_ns, m.opts_.max_message, &m.uuid_);
      m.unix_path_ = proto.unix_path = address;
    } else {
      auto rb = std::make_shared<remote_backend>(open_connection(address, authkey, timeout_ns), timeout_ns,
                                                 m.opts_.max_message);
      request q;
      q.o = op::hello;
      m.uuid_ = rb->call(q, nullptr).a;
      be = std::move(rb);
      m.tcp_address_ = proto.tcp_address = address;
      proto.remote = true;
    }
    proto.uuid = m.uuid_;
    m.ep_ = shared_endpoint(std::move(proto));
    m.ep_->set(std::move(be));
    return m;
  }

  Manager(const Manager&) = delete;
  Manager& operator=(const Manager&) = delete;
  /// Takes over the other manager (and the duty to shut its server down).
  Manager(Manager&& o) noexcept { swap(o); }
  /// Takes over the other manager (and the duty to shut its server down).
  Manager& operator=(Manager&& o) noexcept {
    if (this != &o) {
      shutdown();
      swap(o);
    }
    return *this;
  }
  ~Manager() { shutdown(); }

  /// Stops the server (objects are gone; proxies then raise manager_error or
  /// eof_error) and removes the socket directory. Idempotent; only the creating
  /// process does anything (copies inherited by forked children do not).
  void shutdown() noexcept {
    if (owner_pid_ != detail::current_pid()) return;
    if (server_pid_ > 0) {
      detail::log(log_level::info, "manager server %d shutting down", int(server_pid_));
      stop_server();
    }
    cleanup_dir();
    owner_pid_ = -1;
  }

  /// Where clients connect: "host:port" with the bound port when listening on TCP,
  /// otherwise the Unix socket path.
  [[nodiscard]] std::string address() const { return tcp_address_.empty() ? unix_path_ : tcp_address_; }
  /// The path of the manager's Unix socket.
  [[nodiscard]] const std::string& unix_address() const noexcept { return unix_path_; }
  /// The bound TCP port (0 when not listening on TCP).
  [[nodiscard]] int port() const noexcept { return port_; }
  /// The shared key clients prove with the HMAC challenge.
  [[nodiscard]] const std::string& authkey() const noexcept { return opts_.authkey; }
  /// This manager's unique id (hex); the same in every client of it.
  [[nodiscard]] const std::string& id() const noexcept { return uuid_; }
  /// The server process (-1 for a client made with connect()).
  [[nodiscard]] pid_t server_pid() const noexcept { return server_pid_; }

  /// A new dict, or with a name the dict registered under that name (created on first
  /// use; a name holding another kind or other types raises an error).
  template <class K, class V>
  [[nodiscard]] DictProxy<K, V> dict(const std::string& name = {}) {
    return DictProxy<K, V>(ep_, create(detail::mgr::kind::dict, name, tag<K>(), tag<V>()));
  }
  /// A new list, or with a name the list registered under that name.
  template <class T>
  [[nodiscard]] ListProxy<T> list(const std::string& name = {}) {
    return ListProxy<T>(ep_, create(detail::mgr::kind::list, name, tag<T>(), 0));
  }
  /// A new namespace, or with a name the namespace registered under that name.
  [[nodiscard]] NamespaceProxy Namespace(const std::string& name = {}) {
    return NamespaceProxy(ep_, create(detail::mgr::kind::ns, name, 0, 0));
  }
  /// A new queue holding at most `maxsize` messages (0: unbounded).
  template <class T>
  [[nodiscard]] QueueProxy<T> Queue(std::size_t maxsize = 0) {
    return QueueProxy<T>(ep_, create(detail::mgr::kind::queue, {}, tag<T>(), 0, maxsize));
  }
  /// The queue registered under `name` (created on first use with `maxsize`).
  template <class T>
  [[nodiscard]] QueueProxy<T> Queue(const std::string& name, std::size_t maxsize = 0) {
    return QueueProxy<T>(ep_, create(detail::mgr::kind::queue, name, tag<T>(), 0, maxsize));
  }
  /// A new lock, or with a name the lock registered under that name.
  [[nodiscard]] LockProxy Lock(const std::string& name = {}) {
    return LockProxy(ep_, create(detail::mgr::kind::lock, name, 0, 0));
  }
  /// A new value holding v.
  template <class T>
  [[nodiscard]] ValueProxy<T> Value(const T& v) {
    return ValueProxy<T>(ep_, create(detail::mgr::kind::value, {}, tag<T>(), 0, 0, detail::mgr::enc(v)));
  }
  /// A new joinable queue holding at most `maxsize` messages (0: unbounded).
  template <class T>
  [[nodiscard]] JoinableQueueProxy<T> JoinableQueue(std::size_t maxsize = 0) {
    return JoinableQueueProxy<T>(ep_, create(detail::mgr::kind::joinable_queue, {}, tag<T>(), 0, maxsize));
  }
  /// A new event.
  [[nodiscard]] EventProxy Event() { return EventProxy(ep_, create(detail::mgr::kind::event, {}, 0, 0)); }
  /// A new condition (with its own lock).
  [[nodiscard]] ConditionProxy Condition() {
    return ConditionProxy(ep_, create(detail::mgr::kind::condition, {}, 0, 0));
  }
  /// value_error when value is negative.
  [[nodiscard]] SemaphoreProxy Semaphore(std::int64_t value = 1) {
    return SemaphoreProxy(ep_, create(detail::mgr::kind::semaphore, {}, 0, 0, semaphore_value(value)));
  }
  /// A new bounded semaphore starting at, and bounded by, `value`.
  [[nodiscard]] SemaphoreProxy BoundedSemaphore(std::int64_t value = 1) {
    return SemaphoreProxy(ep_, create(detail::mgr::kind::bounded_semaphore, {}, 0, 0, semaphore_value(value)));
  }
  /// A new recursive lock.
  [[nodiscard]] RLockProxy RLock() { return RLockProxy(ep_, create(detail::mgr::kind::rlock, {}, 0, 0)); }
  /// A barrier for `parties` (value_error when 0 or negative); wait() without a timeout waits
  /// for ever.
  [[nodiscard]] BarrierProxy Barrier(std::size_t parties) { return make_barrier(parties, -1); }
  /// A barrier whose wait() without a timeout uses `timeout` (Python's timeout=).
  template <class Rep, class Period>
  [[nodiscard]] BarrierProxy Barrier(std::size_t parties, std::chrono::duration<Rep, Period> timeout) {
    return make_barrier(parties, detail::to_ns(timeout));
  }
  /// n value-initialised elements (value_error when n is negative or too large).
  template <class T>
  [[nodiscard]] ArrayProxy<T> Array(std::size_t n) {
    // A negative int arrives as a huge size_t: refused as mproc::Array refuses it.
    if (n > std::size_t(PTRDIFF_MAX) / sizeof(T))
      throw value_error("mproc::Manager::Array: size " + std::to_string(n) + " (elements of " +
                        std::to_string(sizeof(T)) + " bytes) is negative or too large");
    return Array<T>(std::vector<T>(n));
  }
  /// A copy of `init`.
  template <class T>
  [[nodiscard]] ArrayProxy<T> Array(const std::vector<T>& init) {
    std::vector<std::string> elements;
    elements.reserve(init.size());
    for (const T& e : init) elements.push_back(detail::mgr::enc(e));
    return ArrayProxy<T>(ep_, create(detail::mgr::kind::array, {}, tag<T>(), 0, 0, std::nullopt, std::move(elements)));
  }

  /// Frees a managed object now instead of at shutdown (objects are not reference
  /// counted). Proxies to it, in any process, then raise manager_error. Returns
  /// whether the object still existed.
  bool destroy(const BaseProxy& proxy) {
    if (!ep_) throw state_error("mproc::Manager: use of a moved-from or shut down manager");
    detail::mgr::request q;
    q.o = detail::mgr::op::destroy;
    q.id = proxy.id();
    return ep_->get()->call(q, nullptr).n != 0;
  }

  /// The value registered as `name`; set to v only when this call creates it.
  template <class T>
  [[nodiscard]] ValueProxy<T> Value(const std::string& name, const T& v) {
    // The initial value is stored by the call that creates the object, so a
    // concurrent creator never sees it empty.
    return ValueProxy<T>(ep_, create(detail::mgr::kind::value, name, tag<T>(), 0, 0, detail::mgr::enc(v)));
  }

 private:
  struct client_tag {};
  explicit Manager(client_tag) {}

  template <class T>
  static std::uint64_t tag() {
    return detail::type_tag<T>::value;
  }
  static std::size_t semaphore_value(std::int64_t value) {
    if (value < 0) throw value_error("mproc::Manager: a semaphore's initial value must be >= 0");
    return static_cast<std::size_t>(value);
  }
  BarrierProxy make_barrier(std::size_t parties, std::int64_t timeout_ns) {
    if (parties == 0 || parties > std::size_t(INT32_MAX))
      throw value_error("mproc::Manager::Barrier: parties must be at least 1 (and not negative), not " +
                        std::to_string(parties));
    std::string t(sizeof timeout_ns, '\0');
    std::memcpy(t.data(), &timeout_ns, sizeof timeout_ns);
    return BarrierProxy(ep_, create(detail::mgr::kind::barrier, {}, 0, 0, parties, std::nullopt, {std::move(t)}));
  }
  std::uint64_t create(detail::mgr::kind k, const std::string& name, std::uint64_t t1, std::uint64_t t2,
                       std::size_t maxsize = 0, std::optional<std::string> initial = std::nullopt,
                       std::vector<std::string> list = {}) {
    if (!ep_) throw state_error("mproc::Manager: use of a moved-from or shut down manager");
    detail::mgr::request q;
    q.o = detail::mgr::op::create;
    q.a = name;
    q.n = static_cast<std::int64_t>(k);
    q.m = static_cast<std::int64_t>(maxsize);
    std::uint64_t t[2] = {t1, t2};
    q.b.assign(reinterpret_cast<const char*>(t), sizeof t);
    if (initial) q.list.push_back(std::move(*initial));
    else q.list = std::move(list);
    auto r = ep_->get()->call(q, nullptr);
    return static_cast<std::uint64_t>(r.n);
  }

  void stop_server() noexcept {
    // Nothing to flush: the state lives in shared memory.
    if (server_pidfd_) detail::pidfd_send_signal(server_pidfd_.get(), SIGKILL);
    detail::waitpid_eintr(server_pid_, nullptr, 0);  // ECHILD if already reaped: fine
    server_pidfd_.reset();
    server_pid_ = -1;
  }

  void cleanup_dir() noexcept {
    if (dir_.empty()) return;
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
    dir_.clear();
  }

  void swap(Manager& o) noexcept {
    std::swap(opts_, o.opts_);
    std::swap(uuid_, o.uuid_);
    std::swap(dir_, o.dir_);
    std::swap(unix_path_, o.unix_path_);
    std::swap(tcp_address_, o.tcp_address_);
    std::swap(port_, o.port_);
    std::swap(server_pid_, o.server_pid_);
    std::swap(server_pidfd_, o.server_pidfd_);
    std::swap(owner_pid_, o.owner_pid_);
    std::swap(ep_, o.ep_);
  }

  manager_options opts_;
  std::string uuid_, dir_, unix_path_, tcp_address_;
  int port_ = 0;
  pid_t server_pid_ = -1;
  detail::unique_fd server_pidfd_;
  pid_t owner_pid_ = -1;
  std::shared_ptr<detail::mgr::endpoint> ep_;
};

}  // namespace mproc

#if MPROC_HEADER_ONLY
#include "manager_impl.hpp"
#endif
