/// \file
/// mproc::Manager: shared dicts, lists, namespaces, queues, locks and values that any
/// process can use through copyable proxies, as Python's multiprocessing.Manager.
///
/// How it works (see detail/manager_store.hpp for the reasoning): the objects live in
/// one shared-memory segment; proxies in processes that have the segment mapped
/// operate on it directly under a robust process-shared mutex, so every operation is
/// synchronous, immediately visible everywhere, and costs no round trip. A server
/// process (forked by the Manager) owns the segment and listens on a Unix socket in a
/// private 0700 directory: a process that did not inherit the mapping (a pool worker
/// started before the Manager, a process given a proxy through a pipe or queue, an
/// unrelated process calling Manager::connect) authenticates there (SO_PEERCRED
/// same-uid check plus a mutual HMAC-SHA256 challenge with the manager's key) and
/// receives the segment's descriptor. With manager_options::address = "host:port" the
/// server also listens on TCP; clients connecting there (Manager::connect) send each
/// operation as a request that the server executes against the same segment.
///
/// update(key, fn, default) is atomic: fn runs while the shared state is locked. Local
/// proxies run fn in the calling process, so any callable works. Over TCP the server
/// runs it: fn must then be a captureless lambda or stateless function object, sent as
/// a stable id of its type that the server (the same program) resolves in its own
/// image (the id is registered at start-up in every process running the program), or
/// a function pointer, sent as an offset from a known function of the executable and
/// used only if the server's executable has the same GNU build-id.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iterator>
#include <limits>
#include <map>
#include <random>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <poll.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "detail/log.hpp"
#include "detail/manager_protocol.hpp"
#include "detail/manager_store.hpp"
#include "detail/posix/fork.hpp"
#include "errors.hpp"
#include "serialization.hpp"
#include "serialization/boost.hpp"  // proxies travel through BaseProxy::serialize()

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

namespace detail::mgr {

template <class T>
std::string enc(const T& v) {
  std::string s(encoded_size(v), '\0');
  encode_to(v, reinterpret_cast<std::byte*>(s.data()));
  return s;
}
template <class T>
T dec(std::string_view s) {
  return deserialize<T>(std::span<const std::byte>(reinterpret_cast<const std::byte*>(s.data()), s.size()));
}

// ------------------------------------------------------------------ backends

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

class local_backend final : public backend {
 public:
  explicit local_backend(std::shared_ptr<store> s) : s_(std::move(s)) {}
  response call(const request& q, const updater* fn) override { return execute(*s_, q, fn); }
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
    try {
      write_frame(fd_.get(), q.encode(), d);
      r = response::decode(read_frame(fd_.get(), cap_, d));
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
    r.raise_if_error();  // the operation's own error: the connection is fine
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

/// Segments mapped in this process, by manager id (inherited across fork).
inline std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}
inline std::mutex& endpoint_cache_mutex() {
  static std::mutex m;
  return m;
}
inline std::mutex& updater_mutex() {
  static std::mutex m;
  return m;
}

// Fork with threads: another thread may hold one of this file's process-local
// mutexes at the instant of fork(); in the child that thread does not exist, so the
// mutex would stay locked forever. The child re-creates them before anything else
// runs, and endpoints re-create their own on first use in a new process.
inline std::atomic<std::uint64_t>& fork_generation() {
  static std::atomic<std::uint64_t> g{0};
  return g;
}
inline void reset_locks_in_child() noexcept {
  fork_generation().fetch_add(1, std::memory_order_relaxed);
  new (&registry_mutex()) std::mutex();
  new (&endpoint_cache_mutex()) std::mutex();
  new (&updater_mutex()) std::mutex();
}
inline std::map<std::string, std::weak_ptr<local_backend>>& local_registry() {
  static std::map<std::string, std::weak_ptr<local_backend>> r;
  return r;
}
struct endpoint;
inline std::map<std::string, std::weak_ptr<endpoint>>& endpoint_cache() {
  static std::map<std::string, std::weak_ptr<endpoint>> cache;
  return cache;
}
// Every local static above is made here, during static initialisation: made on first
// use instead, a fork while another thread made one would leave its guard taken in
// the child.
inline const int managers_fork_hook_registered = [] {
  (void)registry_mutex(), (void)endpoint_cache_mutex(), (void)updater_mutex();
  (void)local_registry(), (void)endpoint_cache();
  return set_fork_hook(fork_hook_slot::managers, {.child = &reset_locks_in_child});
}();

/// Connects over a Unix socket and maps the segment; `uuid_out` receives the manager id.
inline std::shared_ptr<local_backend> attach_local(const std::string& path, const std::string& key,
                                                   std::int64_t timeout_ns, std::size_t cap,
                                                   std::string* uuid_out = nullptr) {
  unique_fd fd = open_connection(path, key, timeout_ns);
  deadline_t d = deadline_after(timeout_ns);
  request q;
  q.o = op::attach;
  write_frame(fd.get(), q.encode(), d);
  auto [payload, memfd] = read_frame_with_fd(fd.get(), cap, d);
  response r = response::decode(payload);
  r.raise_if_error();
  if (!memfd || r.list.size() != 1) throw manager_error("mproc::Manager: server did not send its segment");
  {
    std::lock_guard g(registry_mutex());
    auto it = local_registry().find(r.a);
    if (it != local_registry().end())
      if (auto be = it->second.lock()) {
        if (uuid_out) *uuid_out = r.a;
        return be;
      }
  }
  auto st = store::attach(std::move(memfd), static_cast<std::size_t>(r.n), std::stoull(r.list[0]));
  st->lock_timeout_ns = timeout_ns;
  auto be = std::make_shared<local_backend>(std::move(st));
  std::lock_guard g(registry_mutex());
  local_registry()[r.a] = be;
  if (uuid_out) *uuid_out = r.a;
  return be;
}

/// How proxies of one manager reach it; shared by the proxies of a process.
struct endpoint {
  std::string uuid, unix_path, tcp_address, authkey;
  bool remote = false;  // operations go over TCP to the server
  std::int64_t timeout_ns = 30'000'000'000;
  std::size_t max_message = std::size_t(64) << 20;

  /// Shared, so a backend replaced by another thread stays alive for calls in flight.
  std::shared_ptr<backend> get() {
    if (std::uint64_t gen = fork_generation().load(std::memory_order_relaxed); gen != gen_) {
      new (&m_) std::mutex();  // first use in a forked child (see reset_locks_in_child)
      gen_ = gen;
    }
    std::lock_guard g(m_);
    // A mapped segment stays valid in a forked child; a socket must not be shared
    // with one, so a child opens its own connection.
    if (be_ && be_->usable() && (be_->local() || pid_ == ::getpid())) return be_;
    be_ = resolve();
    pid_ = ::getpid();
    return be_;
  }
  void set(std::shared_ptr<backend> be) {
    std::lock_guard g(m_);
    be_ = std::move(be);
    pid_ = ::getpid();
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
    {
      std::lock_guard g(registry_mutex());
      auto it = local_registry().find(uuid);
      if (it != local_registry().end())
        if (auto be = it->second.lock()) return be;
    }
    return attach_local(unix_path, authkey, timeout_ns, max_message);
  }
  std::mutex m_;
  std::uint64_t gen_ = fork_generation().load(std::memory_order_relaxed);
  std::shared_ptr<backend> be_;
  pid_t pid_ = 0;
};

/// Endpoints by manager id and mode, so proxies decoded in one process share one
/// connection or mapping.
inline std::shared_ptr<endpoint> shared_endpoint(endpoint&& proto) {
  auto& cache = endpoint_cache();
  std::string k = proto.uuid + (proto.remote ? "/tcp" : "/local");
  std::lock_guard g(endpoint_cache_mutex());
  if (auto it = cache.find(k); it != cache.end())
    if (auto ep = it->second.lock()) return ep;
  auto ep = std::make_shared<endpoint>();
  ep->uuid = std::move(proto.uuid);
  ep->unix_path = std::move(proto.unix_path);
  ep->tcp_address = std::move(proto.tcp_address);
  ep->authkey = std::move(proto.authkey);
  ep->remote = proto.remote;
  ep->timeout_ns = proto.timeout_ns;
  ep->max_message = proto.max_message;
  cache[k] = ep;
  return ep;
}

// ------------------------------------------------------------------ update functions

using raw_updater = std::string (*)(const std::string_view*, std::string_view);
inline std::map<std::uint64_t, raw_updater>& updater_registry() {
  static std::map<std::uint64_t, raw_updater> r;
  return r;
}

/// A stateless update function known by the id of its type. Dynamic initialisation
/// registers it in every process running this program, the server included.
template <class V, class F>
struct registered_updater {
  static std::string run(const std::string_view* cur, std::string_view dflt) {
    V v = cur ? dec<V>(*cur) : dec<V>(dflt);
    return enc(static_cast<V>(F{}(std::move(v))));
  }
  static std::uint64_t compute() {
    std::uint64_t h = fnv1a(typeid(registered_updater).name());
    std::lock_guard g(updater_mutex());
    updater_registry().emplace(h, &run);
    return h;
  }
  static inline const std::uint64_t id = compute();
};

// Function pointers travel as an offset from a known function of the program image
// (valid in any process running the same executable, whatever its load address),
// together with the image's GNU build-id, which the server compares with its own
// before using the offset: a different program is refused, never called into.
inline void code_anchor() noexcept {}

inline int build_id_note(dl_phdr_info* info, std::size_t, void* out) {
  auto* id = static_cast<std::string*>(out);
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const auto& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_NOTE) continue;
    const char* p = reinterpret_cast<const char*>(info->dlpi_addr + ph.p_vaddr);
    const char* end = p + ph.p_memsz;
    while (p + sizeof(ElfW(Nhdr)) <= end) {
      ElfW(Nhdr) nh;
      std::memcpy(&nh, p, sizeof nh);
      const char* name = p + sizeof nh;
      const char* desc = name + ((nh.n_namesz + 3) & ~3u);
      if (nh.n_type == NT_GNU_BUILD_ID && nh.n_namesz == 4 && std::memcmp(name, "GNU", 4) == 0 &&
          desc + nh.n_descsz <= end) {
        id->assign(desc, nh.n_descsz);
        return 1;
      }
      p = desc + ((nh.n_descsz + 3) & ~3u);
    }
  }
  return 1;  // the first entry is the main program: stop there
}

/// The executable's GNU build-id (empty when it was linked without one).
inline const std::string& own_build_id() {
  static const std::string id = [] {
    std::string out;
    ::dl_iterate_phdr(&build_id_note, &out);
    return out;
  }();
  return id;
}
// Read during static initialisation, not on first use: see managers_fork_hook_registered.
inline const bool own_build_id_read = (own_build_id(), true);

/// Offset of fn from code_anchor, if both lie in the main executable.
inline std::optional<std::int64_t> code_offset(const void* fn) {
  Dl_info a{}, f{};
  if (!::dladdr(reinterpret_cast<const void*>(&code_anchor), &a) || !::dladdr(fn, &f) ||
      a.dli_fbase != f.dli_fbase)
    return std::nullopt;
  return static_cast<std::int64_t>(reinterpret_cast<std::uintptr_t>(fn) -
                                   reinterpret_cast<std::uintptr_t>(&code_anchor));
}

using raw_fnptr_updater = std::string (*)(const void* fn, const std::string_view*, std::string_view);
inline std::map<std::uint64_t, raw_fnptr_updater>& fnptr_updater_registry() {
  static std::map<std::uint64_t, raw_fnptr_updater> r;
  return r;
}

/// Calls a function pointer of type P on a decoded V; registered per (V, P).
template <class V, class P>
struct fnptr_updater {
  static std::string run(const void* fn, const std::string_view* cur, std::string_view dflt) {
    V v = cur ? dec<V>(*cur) : dec<V>(dflt);
    return enc(static_cast<V>(reinterpret_cast<P>(const_cast<void*>(fn))(std::move(v))));
  }
  static std::uint64_t compute() {
    std::uint64_t h = fnv1a(typeid(fnptr_updater).name());
    std::lock_guard g(updater_mutex());
    fnptr_updater_registry().emplace(h, &run);
    return h;
  }
  static inline const std::uint64_t id = compute();
};

/// The update function a remote request names (server side).
inline updater remote_updater_for(const request& q) {
  if (q.list.empty()) {
    raw_updater fn = nullptr;
    {
      std::lock_guard g(updater_mutex());
      auto it = updater_registry().find(static_cast<std::uint64_t>(q.n));
      if (it != updater_registry().end()) fn = it->second;
    }
    if (!fn)
      throw manager_error(
          "mproc::Manager: update function unknown to the server (over TCP the server must run the "
          "same program, and the function must be a function pointer, captureless lambda or stateless "
          "function object)");
    return fn;
  }
  if (q.list.size() != 2 || q.list[0].size() != sizeof(std::int64_t))
    throw serialization_error("manager: malformed function-pointer update");
  if (own_build_id().empty() || q.list[1] != own_build_id())
    throw manager_error(
        "mproc::Manager: a function pointer can only be sent to a server running the same executable "
        "(its build-id differs or is missing)");
  raw_fnptr_updater tramp = nullptr;
  {
    std::lock_guard g(updater_mutex());
    auto it = fnptr_updater_registry().find(static_cast<std::uint64_t>(q.n));
    if (it != fnptr_updater_registry().end()) tramp = it->second;
  }
  if (!tramp) throw manager_error("mproc::Manager: update function type unknown to the server");
  std::int64_t off;
  std::memcpy(&off, q.list[0].data(), sizeof off);
  const void* fn = reinterpret_cast<const void*>(reinterpret_cast<std::uintptr_t>(&code_anchor) +
                                                 static_cast<std::uintptr_t>(off));
  if (!code_offset(fn)) throw manager_error("mproc::Manager: function pointer outside the executable");
  return [tramp, fn](const std::string_view* cur, std::string_view d) { return tramp(fn, cur, d); };
}

// ------------------------------------------------------------------ server

/// Closes every descriptor but `keep` (the server must not hold the user's pipes
/// open, or their readers would never see end-of-file).
inline void close_all_but(std::vector<int> keep) {
  std::sort(keep.begin(), keep.end());
  unsigned next = 0;
  for (int k : keep) {
    if (k < 0) continue;
    if (unsigned(k) > next) ::close_range(next, unsigned(k) - 1, 0);
    next = unsigned(k) + 1;
  }
  ::close_range(next, ~0u, 0);
}

struct server_config {
  std::shared_ptr<store> st;
  std::string authkey, uuid;
  std::string dir;  // the private socket directory, removed if the owner dies
  std::size_t max_message;
  std::int64_t handshake_timeout_ns;
};

/// One request frame from an authenticated client, parsed and executed: the reply,
/// and whether the segment's descriptor goes with it. Never throws: every failure,
/// corrupt bytes included, becomes an error reply (fuzz/fuzz_manager.cpp checks that).
inline std::pair<response, bool> handle_request(const server_config& cfg, std::string_view frame,
                                                bool is_unix) {
  response r;
  bool with_fd = false;
  try {
    request q = request::decode(frame);
    if (q.o == op::attach) {
      if (!is_unix) throw manager_error("mproc::Manager: the shared segment is only handed out over the Unix socket");
      r.a = cfg.uuid;
      r.n = static_cast<std::int64_t>(cfg.st->capacity());
      r.list.push_back(std::to_string(cfg.st->root_offset()));
      with_fd = true;
    } else if (q.o == op::hello) {
      r.a = cfg.uuid;
    } else if (q.o == op::dict_update) {
      updater u = remote_updater_for(q);
      r = execute(*cfg.st, q, &u);
    } else {
      r = execute(*cfg.st, q, nullptr);
    }
  } catch (...) {
    r = response::from_current_exception();
    with_fd = false;
  }
  return {std::move(r), with_fd};
}

/// Serves an authenticated connection until the client goes away (on its own thread:
/// a request may block, e.g. a Queue get with a timeout).
inline void serve_connection(const server_config& cfg, unique_fd fd, bool is_unix) {
  try {
    for (;;) {
      std::string frame = read_frame(fd.get(), cfg.max_message, -1);
      auto [r, with_fd] = handle_request(cfg, frame, is_unix);
      if (with_fd) write_frame_with_fd(fd.get(), r.encode(), cfg.st->fd(), deadline_after(cfg.handshake_timeout_ns));
      else write_frame(fd.get(), r.encode(), deadline_after(cfg.handshake_timeout_ns));
    }
  } catch (const eof_error&) {
    // client went away
  } catch (const std::exception& e) {
    detail::log(log_level::info, "manager: closing a connection: %s", e.what());
  }
}

// ---- the handshake stage
//
// A new connection costs no thread until it has authenticated: the server's one loop
// runs every handshake without blocking, each with its own deadline, at most
// max_pending_handshakes per listener. When a listener has that many, the oldest of
// its handshakes is dropped for the newcomer, so peers that connect and say nothing
// can neither hold the server nor keep anyone else out; the Unix socket's and the TCP
// port's handshakes never displace each other. Out of descriptors, the server drops
// the oldest handshake, or takes the connection and closes it at once (a descriptor
// kept in reserve for that), and else stops accepting for a moment: it never spins.

inline constexpr std::size_t max_pending_handshakes = 64;
inline constexpr std::int64_t accept_backoff_ns = 100'000'000;

/// One connection in the handshake stage. The server sent its challenge; the client
/// now sends three frames: its digest of our nonce, its own challenge, our verdict.
/// Each is read exactly (never past it: the client may send its first request right
/// after the last one).
struct pending_handshake {
  unique_fd fd;
  bool is_unix = false;
  deadline_t deadline = 0;
  std::uint64_t serial = 0;  // accept order: the lowest is the oldest
  std::string nonce;
  int frames = 0;  // frames received so far
  unsigned char hdr[4] = {};
  std::size_t hdr_got = 0;
  std::string body;
  std::size_t body_got = 0;
};

enum class handshake_state { more, done, failed };

/// Receives what has arrived of the current frame; true once it is whole (in h.body).
/// Throws on end of file, an error or a frame over the handshake cap.
inline bool read_handshake_frame(pending_handshake& h) {
  for (;;) {
    void* at;
    std::size_t want;
    if (h.hdr_got < 4) {
      at = h.hdr + h.hdr_got;
      want = 4 - h.hdr_got;
    } else {
      if (h.body_got == h.body.size()) return true;
      at = h.body.data() + h.body_got;
      want = h.body.size() - h.body_got;
    }
    const ssize_t r = ::recv(h.fd.get(), at, want, MSG_DONTWAIT);
    if (r == 0) throw eof_error("manager: the peer closed during the handshake");
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return false;
      throw_errno("recv(manager handshake)");
    }
    if (h.hdr_got < 4) {
      h.hdr_got += std::size_t(r);
      if (h.hdr_got == 4) {
        std::uint32_t n;
        std::memcpy(&n, h.hdr, 4);
        h.body.assign(checked_length(n, handshake_cap), '\0');
        h.body_got = 0;
      }
    } else {
      h.body_got += std::size_t(r);
    }
  }
}

/// Moves a handshake on with what has arrived; never blocks.
inline handshake_state advance_handshake(const server_config& cfg, pending_handshake& h) {
  const deadline_t now = monotonic_ns();  // replies are a few bytes: they go out at once
  while (read_handshake_frame(h)) {
    std::string msg = std::move(h.body);
    h.body.clear();
    h.hdr_got = h.body_got = 0;
    switch (h.frames++) {
      case 0:  // the client's digest of our nonce
        if (!constant_time_equal(msg, hmac_sha256(cfg.authkey, h.nonce))) {
          write_frame(h.fd.get(), failure, now);
          detail::log(log_level::warning, "manager: a peer failed authentication (wrong key)");
          return handshake_state::failed;
        }
        write_frame(h.fd.get(), welcome, now);
        break;
      case 1:  // the client's challenge
        if (msg.size() <= challenge_prefix.size() || msg.compare(0, challenge_prefix.size(), challenge_prefix) != 0)
          return handshake_state::failed;
        write_frame(h.fd.get(), hmac_sha256(cfg.authkey, std::string_view(msg).substr(challenge_prefix.size())), now);
        break;
      default:  // our verdict, as the client saw it
        return msg == welcome ? handshake_state::done : handshake_state::failed;
    }
  }
  return handshake_state::more;
}

/// The server's accept side: listeners, handshakes in progress, and the hand-off of
/// authenticated connections to threads of their own.
class handshake_stage {
 public:
  explicit handshake_stage(const server_config& cfg) : cfg_(cfg) { reserve_fd(); }

  /// Accepts what is waiting on `listen_fd` (listener 0: Unix, 1: TCP).
  void accept_from(int listen_fd, int listener) {
    for (int burst = 0; burst < 256; ++burst) {
      int c = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (c < 0) {
        if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
          // Out of descriptors: make room by dropping the oldest handshake, else
          // refuse this peer through the reserve, else wait a moment.
          if (drop_oldest(listener)) continue;
          if (spare_) {
            spare_.reset();
            int refused = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
            if (refused >= 0) ::close(refused);
            reserve_fd();
            if (refused >= 0) continue;
          }
          paused_until_[listener] = monotonic_ns() + accept_backoff_ns;
          return;
        }
        throw_errno("accept4(manager)");
      }
      admit(unique_fd(c), listener);
    }
  }

  /// Descriptors to poll: each pending handshake's, after `out`'s first entries.
  void add_pollfds(std::vector<pollfd>& out) const {
    for (const auto& h : pending_) out.push_back({h.fd.get(), POLLIN, 0});
  }
  /// Handles readiness for the entries add_pollfds added (from `first` on), then
  /// drops handshakes whose deadline passed.
  void on_ready(const std::vector<pollfd>& p, std::size_t first) {
    // Pending entries are in the same order as polled; collect by fd first, since
    // finishing one changes the list.
    std::vector<int> ready;
    for (std::size_t i = first; i < p.size(); ++i)
      if (p[i].revents) ready.push_back(p[i].fd);
    for (int fd : ready) {
      auto it = std::find_if(pending_.begin(), pending_.end(), [fd](const auto& h) { return h.fd.get() == fd; });
      if (it == pending_.end()) continue;
      handshake_state st;
      try {
        st = advance_handshake(cfg_, *it);
      } catch (const std::exception& e) {
        detail::log(log_level::info, "manager: dropping a connection in its handshake: %s", e.what());
        st = handshake_state::failed;
      }
      if (st == handshake_state::more) continue;
      pending_handshake h = std::move(*it);
      pending_.erase(it);
      if (st == handshake_state::done) hand_off(std::move(h));
    }
    const deadline_t now = monotonic_ns();
    std::erase_if(pending_, [now](const pending_handshake& h) { return h.deadline <= now; });
  }

  /// Milliseconds poll may sleep: until the next handshake deadline or the end of an
  /// accept pause; -1 when nothing is due.
  [[nodiscard]] int poll_timeout_ms() const {
    deadline_t next = -1;
    for (const auto& h : pending_)
      if (next < 0 || h.deadline < next) next = h.deadline;
    for (deadline_t p : paused_until_)
      if (p > 0 && (next < 0 || p < next)) next = p;
    return poll_ms_until(next);
  }
  /// False while accepting on `listener` is paused (descriptors ran out).
  [[nodiscard]] bool accepting(int listener) {
    if (paused_until_[listener] && monotonic_ns() >= paused_until_[listener]) paused_until_[listener] = 0;
    return paused_until_[listener] == 0;
  }
  [[nodiscard]] std::size_t pending() const noexcept { return pending_.size(); }

 private:
  void reserve_fd() noexcept { spare_.reset(::open("/dev/null", O_RDONLY | O_CLOEXEC)); }

  void admit(unique_fd fd, int listener) {
    const bool is_unix = listener == 0;
    if (is_unix) {
      ucred cred{};
      socklen_t len = sizeof cred;
      if (::getsockopt(fd.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) == -1 || cred.uid != ::geteuid()) {
        detail::log(log_level::warning, "manager: refused a Unix connection from uid %d", int(cred.uid));
        return;
      }
    }
    std::size_t mine = 0;
    for (const auto& h : pending_) mine += h.is_unix == is_unix;
    if (mine >= max_pending_handshakes) drop_oldest(listener);
    pending_handshake h;
    h.fd = std::move(fd);
    h.is_unix = is_unix;
    h.deadline = deadline_after(cfg_.handshake_timeout_ns);
    h.serial = ++serial_;
    h.nonce = random_bytes(32);
    try {
      write_frame(h.fd.get(), std::string(challenge_prefix) + h.nonce, monotonic_ns());
    } catch (const std::exception&) {
      return;  // gone already
    }
    pending_.push_back(std::move(h));
  }

  /// Drops the oldest handshake of `listener`; false if it has none.
  bool drop_oldest(int listener) {
    const bool is_unix = listener == 0;
    auto oldest = pending_.end();
    for (auto it = pending_.begin(); it != pending_.end(); ++it)
      if (it->is_unix == is_unix && (oldest == pending_.end() || it->serial < oldest->serial)) oldest = it;
    if (oldest == pending_.end()) return false;
    pending_.erase(oldest);
    return true;
  }

  void hand_off(pending_handshake h) {
    // The serving thread blocks in poll with deadlines; plain blocking sends suit it.
    const int flags = ::fcntl(h.fd.get(), F_GETFL);
    if (flags >= 0) ::fcntl(h.fd.get(), F_SETFL, flags & ~O_NONBLOCK);
    const int c = h.fd.release();
    const bool is_unix = h.is_unix;
    const server_config& cfg = cfg_;
    try {
      std::thread([&cfg, c, is_unix] { serve_connection(cfg, unique_fd(c), is_unix); }).detach();
    } catch (...) {
      ::close(c);
    }
  }

  const server_config& cfg_;
  std::vector<pending_handshake> pending_;
  std::uint64_t serial_ = 0;
  deadline_t paused_until_[2] = {0, 0};
  unique_fd spare_;
};

/// Removes the socket directory and exits: the owner died without shutting us down.
[[noreturn]] inline void server_orphaned(const server_config& cfg) {
  std::error_code ec;
  std::filesystem::remove_all(cfg.dir, ec);
  ::_exit(0);
}

[[noreturn]] inline void server_main(server_config cfg, pid_t owner, int unix_fd, int tcp_fd, int ready_fd) {
  ::signal(SIGINT, SIG_IGN);  // a Ctrl-C is the owner's to act on; the owner shuts us down
  ::signal(SIGPIPE, SIG_IGN);
  detail::process_name_storage() = "SyncManager";
  close_all_but({0, 1, 2, cfg.st->fd(), unix_fd, tcp_fd, ready_fd});
  // The owner removes the socket directory at shutdown; if it is killed instead, the
  // parent-death signal becomes SIGTERM (received here through a signalfd) so the
  // directory does not outlive it. Shutdown itself uses SIGKILL.
  sigset_t term;
  ::sigemptyset(&term);
  ::sigaddset(&term, SIGTERM);
  ::pthread_sigmask(SIG_BLOCK, &term, nullptr);  // before any thread: they inherit the mask
  int sfd = ::signalfd(-1, &term, SFD_CLOEXEC);
  ::prctl(PR_SET_PDEATHSIG, SIGTERM);
  // Out of the program's process group: a SIGKILL of the whole group must leave the
  // server alive to get the parent-death signal and remove the directory.
  ::setpgid(0, 0);
  if (::getppid() != owner) server_orphaned(cfg);
  cfg.st->hold_life();
  char one = 1;
  [[maybe_unused]] auto w = ::write(ready_fd, &one, 1);
  ::close(ready_fd);
  // Accepting drains a listener until it would block.
  for (int l : {unix_fd, tcp_fd})
    if (l >= 0) ::fcntl(l, F_SETFL, ::fcntl(l, F_GETFL) | O_NONBLOCK);
  handshake_stage stage(cfg);
  std::vector<pollfd> p;
  for (;;) {
    p.clear();
    p.push_back({stage.accepting(0) ? unix_fd : -1, POLLIN, 0});
    p.push_back({sfd, POLLIN, 0});
    p.push_back({tcp_fd >= 0 && stage.accepting(1) ? tcp_fd : -1, POLLIN, 0});
    stage.add_pollfds(p);
    int rc = ::poll(p.data(), p.size(), stage.poll_timeout_ms());
    if (rc == -1) {
      if (errno == EINTR) continue;
      ::_exit(3);
    }
    if (p[1].revents & POLLIN) server_orphaned(cfg);
    stage.on_ready(p, 3);
    try {
      if (p[0].revents & POLLIN) stage.accept_from(unix_fd, 0);
      if (p[2].revents & POLLIN) stage.accept_from(tcp_fd, 1);
    } catch (const std::exception& e) {
      detail::log(log_level::warning, "manager: accept failed: %s", e.what());
    }
  }
}

}  // namespace detail::mgr

// ------------------------------------------------------------------ proxies

namespace detail::mgr {

/// Names the calling thread to the holder checks of a manager RLock or Condition,
/// also among clients on other hosts: a random number drawn once per process, its pid
/// and the thread id.
inline std::string caller_token() {
  static std::atomic<std::uint64_t> state{0};  // pid << 32 | random
  const auto pid = static_cast<std::uint32_t>(::getpid());
  std::uint64_t cur = state.load();
  while (static_cast<std::uint32_t>(cur >> 32) != pid) {
    std::random_device rd;
    const std::uint64_t mine = std::uint64_t(pid) << 32 | std::uint32_t(rd());
    if (state.compare_exchange_weak(cur, mine)) cur = mine;  // else another thread won: use its draw
  }
  std::uint64_t t = ((cur & 0xffffffffu) ^ pid) << 32 | static_cast<std::uint32_t>(::gettid());
  if (t == 0) t = 1;
  return std::string(reinterpret_cast<const char*>(&t), sizeof t);
}

/// Iterates over a snapshot taken when iteration began (Python's iteration over a
/// proxy's copy): later changes by any process do not disturb it.
template <class T>
class snapshot_iterator {
 public:
  using value_type = T;
  using difference_type = std::ptrdiff_t;
  using reference = const T&;
  using pointer = const T*;
  using iterator_category = std::input_iterator_tag;
  snapshot_iterator() = default;
  explicit snapshot_iterator(std::shared_ptr<const std::vector<T>> v) : v_(std::move(v)) {}
  const T& operator*() const { return (*v_)[i_]; }
  const T* operator->() const { return &(*v_)[i_]; }
  snapshot_iterator& operator++() {
    ++i_;
    return *this;
  }
  snapshot_iterator operator++(int) {
    auto t = *this;
    ++i_;
    return t;
  }
  friend bool operator==(const snapshot_iterator& it, std::default_sentinel_t) noexcept {
    return !it.v_ || it.i_ >= it.v_->size();
  }

 private:
  std::shared_ptr<const std::vector<T>> v_;
  std::size_t i_ = 0;
};

}  // namespace detail::mgr

/// Common part of every proxy: which manager, which object. Copies refer to the same
/// object; a proxy may be passed to Process targets and Pool tasks (it serializes to
/// the manager's address, key and the object's id).
class BaseProxy {
 public:
  BaseProxy() = default;
  /// The object's id in its manager (the same in every copy and every process).
  [[nodiscard]] std::uint64_t id() const noexcept { return id_; }
  /// False for a default-constructed proxy, which refers to no object.
  [[nodiscard]] explicit operator bool() const noexcept { return bool(ep_); }

  /// Boost.Serialization: a proxy travels as its manager's address, key and object id.
  template <class Archive>
  void serialize(Archive& ar, unsigned) {
    detail::mgr::endpoint e;
    if (ep_) {
      e.uuid = ep_->uuid, e.unix_path = ep_->unix_path, e.tcp_address = ep_->tcp_address;
      e.authkey = ep_->authkey, e.remote = ep_->remote, e.timeout_ns = ep_->timeout_ns;
      e.max_message = ep_->max_message;
    }
    bool has = bool(ep_);
    std::uint64_t maxmsg = e.max_message;
    ar & has & e.uuid & e.unix_path & e.tcp_address & e.authkey & e.remote & e.timeout_ns & maxmsg & id_;
    if constexpr (Archive::is_loading::value) {
      e.max_message = static_cast<std::size_t>(maxmsg);
      ep_ = has ? detail::mgr::shared_endpoint(std::move(e)) : nullptr;
    }
  }

 protected:
  BaseProxy(std::shared_ptr<detail::mgr::endpoint> ep, std::uint64_t id) : ep_(std::move(ep)), id_(id) {}

  std::shared_ptr<detail::mgr::backend> be() const {
    if (!ep_) throw state_error("mproc: use of an empty (default-constructed) manager proxy");
    return ep_->get();
  }
  detail::mgr::response call(detail::mgr::op o, std::string a = {}, std::string b = {}, std::int64_t n = 0,
                             std::int64_t m = -1) const {
    detail::mgr::request q;
    q.o = o, q.id = id_, q.a = std::move(a), q.b = std::move(b), q.n = n, q.m = m;
    return be()->call(q, nullptr);
  }

  std::shared_ptr<detail::mgr::endpoint> ep_;
  std::uint64_t id_ = 0;
};

/// A dict in the manager (Python's DictProxy). Keys and values cross as bytes, so any
/// type mproc can send works for K and V.
template <class K, class V>
class DictProxy : public BaseProxy {
  using op = detail::mgr::op;
  static_assert(!detail::c_string<K> && !detail::c_string<V>,
                "mproc::DictProxy: use std::string, not a C string type, for keys and values");

 public:
  /// The key type.
  using key_type = K;
  /// The value type.
  using mapped_type = V;
  DictProxy() = default;

  /// Sets the value for `k`.
  void set(const K& k, const V& v) { call(op::dict_set, detail::mgr::enc(k), detail::mgr::enc(v)); }
  /// The value for k; std::out_of_range (Python's KeyError) when missing.
  [[nodiscard]] V get(const K& k) const {
    auto r = call(op::dict_get, detail::mgr::enc(k));
    if (!r.n) throw std::out_of_range("mproc::DictProxy::get: key not found (KeyError)");
    return detail::mgr::dec<V>(r.a);
  }
  /// The value for `k`, or `dflt` when missing.
  [[nodiscard]] V get(const K& k, const V& dflt) const {
    auto r = call(op::dict_get, detail::mgr::enc(k));
    return r.n ? detail::mgr::dec<V>(r.a) : dflt;
  }
  /// The value for `k`, or nullopt when missing.
  [[nodiscard]] std::optional<V> try_get(const K& k) const {
    auto r = call(op::dict_get, detail::mgr::enc(k));
    if (!r.n) return std::nullopt;
    return detail::mgr::dec<V>(r.a);
  }
  /// True when `k` is present.
  [[nodiscard]] bool contains(const K& k) const { return call(op::dict_contains, detail::mgr::enc(k)).n != 0; }
  /// Removes k; returns whether it was there.
  bool erase(const K& k) { return call(op::dict_erase, detail::mgr::enc(k)).n != 0; }
  /// Removes k and returns its value; std::out_of_range when missing.
  V pop(const K& k) {
    auto r = call(op::dict_pop, detail::mgr::enc(k));
    if (!r.n) throw std::out_of_range("mproc::DictProxy::pop: key not found (KeyError)");
    return detail::mgr::dec<V>(r.a);
  }
  /// Number of entries.
  [[nodiscard]] std::size_t size() const { return static_cast<std::size_t>(call(op::dict_size).n); }
  /// True when there are no entries.
  [[nodiscard]] bool empty() const { return size() == 0; }
  /// Removes every entry.
  void clear() { call(op::dict_clear); }

  /// A consistent snapshot, in insertion order (as a Python dict).
  [[nodiscard]] std::vector<std::pair<K, V>> items() const {
    auto r = call(op::dict_items);
    std::vector<std::pair<K, V>> out;
    out.reserve(r.list.size() / 2);
    for (std::size_t i = 0; i + 1 < r.list.size(); i += 2)
      out.emplace_back(detail::mgr::dec<K>(r.list[i]), detail::mgr::dec<V>(r.list[i + 1]));
    return out;
  }
  /// The keys, in insertion order.
  [[nodiscard]] std::vector<K> keys() const {
    std::vector<K> out;
    for (auto& [k, v] : items()) out.push_back(std::move(k));
    return out;
  }
  /// The values, in key insertion order.
  [[nodiscard]] std::vector<V> values() const {
    std::vector<V> out;
    for (auto& [k, v] : items()) out.push_back(std::move(v));
    return out;
  }
  /// Removes k and returns its value, or dflt when k is missing (Python's pop(k, d)).
  V pop(const K& k, const V& dflt) {
    auto r = call(op::dict_pop, detail::mgr::enc(k));
    return r.n ? detail::mgr::dec<V>(r.a) : dflt;
  }
  /// Removes and returns the item inserted last; std::out_of_range (KeyError) when
  /// the dict is empty.
  std::pair<K, V> popitem() {
    auto r = call(op::dict_popitem);
    if (r.list.size() != 2) throw serialization_error("mproc::DictProxy::popitem: corrupt reply");
    return {detail::mgr::dec<K>(r.list[0]), detail::mgr::dec<V>(r.list[1])};
  }
  /// d[k] if present, else sets d[k] = dflt and returns it, in one step.
  V setdefault(const K& k, const V& dflt) {
    return detail::mgr::dec<V>(call(op::dict_setdefault, detail::mgr::enc(k), detail::mgr::enc(dflt)).a);
  }
  /// Iterates over a snapshot of the items, in insertion order.
  [[nodiscard]] detail::mgr::snapshot_iterator<std::pair<K, V>> begin() const {
    return detail::mgr::snapshot_iterator<std::pair<K, V>>(
        std::make_shared<const std::vector<std::pair<K, V>>>(items()));
  }
  /// The end of the snapshot.
  [[nodiscard]] std::default_sentinel_t end() const noexcept { return {}; }

  /// The snapshot as a std::map (needs K ordered).
  [[nodiscard]] std::map<K, V> to_map() const {
    std::map<K, V> out;
    for (auto& [k, v] : items()) out.insert_or_assign(std::move(k), std::move(v));
    return out;
  }

  /// Atomically sets d[k] = fn(d.get(k, dflt)) and returns the new value; no other
  /// operation on the manager interleaves. fn must not use the manager itself. Locally
  /// (including spawned or attaching processes) any callable works; through a TCP
  /// connection the server runs fn, so it must be a captureless lambda or stateless
  /// function object, or a function pointer into the same executable (checked by
  /// build-id), and the server must run the same program.
  template <class F>
  V update(const K& k, F&& fn, const V& dflt) {
    static_assert(std::is_invocable_v<F&, V>, "mproc::DictProxy::update: fn must be callable as fn(V)");
    detail::mgr::request q;
    q.o = op::dict_update, q.id = id_, q.a = detail::mgr::enc(k), q.b = detail::mgr::enc(dflt);
    auto bp = be();
    auto& b = *bp;
    if (b.local()) {
      detail::mgr::updater u = [&fn](const std::string_view* cur, std::string_view d) {
        V v = cur ? detail::mgr::dec<V>(*cur) : detail::mgr::dec<V>(d);
        return detail::mgr::enc(static_cast<V>(std::invoke(fn, std::move(v))));
      };
      return detail::mgr::dec<V>(b.call(q, &u).a);
    }
    using Fn = std::remove_cvref_t<F>;
    if constexpr (std::is_function_v<Fn> ||
                  (std::is_pointer_v<Fn> && std::is_function_v<std::remove_pointer_t<Fn>>)) {
      using P = std::conditional_t<std::is_function_v<Fn>, Fn*, Fn>;
      P ptr = fn;
      auto off = detail::mgr::code_offset(reinterpret_cast<const void*>(ptr));
      if (!off || detail::mgr::own_build_id().empty())
        throw manager_error(
            "mproc::DictProxy::update over TCP: the function must be defined in the executable "
            "(not a shared library) and the executable must carry a build-id");
      q.n = static_cast<std::int64_t>(detail::mgr::fnptr_updater<V, P>::id);
      std::string o(sizeof(std::int64_t), '\0');
      std::memcpy(o.data(), &*off, sizeof(std::int64_t));
      q.list = {std::move(o), detail::mgr::own_build_id()};
      return detail::mgr::dec<V>(b.call(q, nullptr).a);
    } else if constexpr (std::is_empty_v<Fn> && std::is_default_constructible_v<Fn>) {
      q.n = static_cast<std::int64_t>(detail::mgr::registered_updater<V, Fn>::id);
      return detail::mgr::dec<V>(b.call(q, nullptr).a);
    } else {
      throw manager_error(
          "mproc::DictProxy::update over TCP needs a function pointer, captureless lambda or stateless "
          "function object (the server runs it, so it cannot carry state)");
    }
  }

 private:
  friend class Manager;
  using BaseProxy::BaseProxy;
};

/// A list in the manager (Python's ListProxy). Indexes may be negative, as in Python;
/// out-of-range indexes raise std::out_of_range.
template <class T>
class ListProxy : public BaseProxy {
  using op = detail::mgr::op;

 public:
  /// The element type.
  using value_type = T;
  ListProxy() = default;

  /// Appends `v`.
  void append(const T& v) { call(op::list_append, {}, detail::mgr::enc(v)); }
  /// Appends every element of `range`, in one call.
  template <class R>
  void extend(const R& range) {
    detail::mgr::request q;
    q.o = op::list_extend, q.id = id_;
    for (const auto& e : range) q.list.push_back(detail::mgr::enc(static_cast<const T&>(e)));
    be()->call(q, nullptr);
  }
  /// Element `i` (negative counts from the end); std::out_of_range when out of range.
  [[nodiscard]] T get(std::int64_t i) const { return detail::mgr::dec<T>(call(op::list_get, {}, {}, i).a); }
  /// Replaces element `i` (negative counts from the end); std::out_of_range when out of range.
  void set(std::int64_t i, const T& v) { call(op::list_set, {}, detail::mgr::enc(v), i); }
  /// Removes and returns element i (default: the last).
  T pop(std::int64_t i = -1) { return detail::mgr::dec<T>(call(op::list_pop, {}, {}, i).a); }
  /// Number of elements.
  [[nodiscard]] std::size_t size() const { return static_cast<std::size_t>(call(op::list_size).n); }
  /// True when there are no elements.
  [[nodiscard]] bool empty() const { return size() == 0; }
  /// Removes every element.
  void clear() { call(op::list_clear); }
  /// A snapshot of every element, in order.
  [[nodiscard]] std::vector<T> items() const {
    auto r = call(op::list_items);
    std::vector<T> out;
    out.reserve(r.list.size());
    for (auto& e : r.list) out.push_back(detail::mgr::dec<T>(e));
    return out;
  }

  // Python's list methods. Elements compare by their serialized bytes (equal values
  // of one type serialize equally; for floating point, 0.0 and -0.0 differ and a NaN
  // equals a NaN with the same bits).
  /// How many elements equal x.
  [[nodiscard]] std::size_t count(const T& x) const {
    return static_cast<std::size_t>(call(op::list_count, {}, detail::mgr::enc(x)).n);
  }
  /// The first position of x in [start, stop) (Python's slice bounds: negative counts
  /// from the end); value_error when it is not there.
  [[nodiscard]] std::size_t index(const T& x, std::int64_t start = 0,
                                  std::int64_t stop = std::numeric_limits<std::int64_t>::max()) const {
    return static_cast<std::size_t>(call(op::list_index, {}, detail::mgr::enc(x), start, stop).n);
  }
  /// Inserts x before position i (clamped to the list, as Python does).
  void insert(std::int64_t i, const T& x) { call(op::list_insert, {}, detail::mgr::enc(x), i); }
  /// Removes the first element equal to x; value_error when there is none.
  void remove(const T& x) { call(op::list_remove, {}, detail::mgr::enc(x)); }
  /// Reverses the list in place.
  void reverse() { call(op::list_reverse); }
  /// Sorts the list (stable, as Python's) by `comp`. The elements are sorted here and
  /// written back only if no process changed the list meanwhile (else it retries),
  /// so no concurrent change is lost.
  template <class Compare = std::less<>>
  void sort(Compare comp = {}) {
    for (;;) {
      auto r = call(op::list_items);
      std::vector<T> v;
      v.reserve(r.list.size());
      for (auto& e : r.list) v.push_back(detail::mgr::dec<T>(e));
      std::stable_sort(v.begin(), v.end(), comp);
      detail::mgr::request q;
      q.o = op::list_assign_if, q.id = id_, q.n = r.n;
      q.list.reserve(v.size());
      for (auto& e : v) q.list.push_back(detail::mgr::enc(e));
      if (be()->call(q, nullptr).n) return;
    }
  }
  /// Iterates over a snapshot taken when iteration begins.
  [[nodiscard]] detail::mgr::snapshot_iterator<T> begin() const {
    return detail::mgr::snapshot_iterator<T>(std::make_shared<const std::vector<T>>(items()));
  }
  /// The end of the snapshot.
  [[nodiscard]] std::default_sentinel_t end() const noexcept { return {}; }

 private:
  friend class Manager;
  using BaseProxy::BaseProxy;
};

/// Named attributes of any sendable type (Python's Namespace). Each value keeps its
/// type tag: get<T> of a value stored as another type raises serialization_error
/// naming both types; a missing name raises std::out_of_range (AttributeError).
class NamespaceProxy : public BaseProxy {
  using op = detail::mgr::op;

 public:
  NamespaceProxy() = default;

  /// Sets attribute `name` to `value` (C strings are stored as std::string).
  template <class T>
  void set(const std::string& name, const T& value) {
    using W = detail::wire_t<T>;
    const W& w = value;  // C strings are stored as std::string
    std::string bytes(detail::message_size(w), '\0');
    detail::write_message(w, reinterpret_cast<std::byte*>(bytes.data()));
    call(op::dict_set, detail::mgr::enc(name), std::move(bytes));
  }
  /// Attribute `name` as T; std::out_of_range when missing, serialization_error when it holds another type.
  template <class T>
  [[nodiscard]] T get(const std::string& name) const {
    auto r = call(op::dict_get, detail::mgr::enc(name));
    if (!r.n) throw std::out_of_range("mproc::NamespaceProxy: no attribute '" + name + "' (AttributeError)");
    return detail::read_message<T>(
        std::span<const std::byte>(reinterpret_cast<const std::byte*>(r.a.data()), r.a.size()));
  }
  /// True when attribute `name` is set.
  [[nodiscard]] bool has(const std::string& name) const {
    return call(op::dict_contains, detail::mgr::enc(name)).n != 0;
  }
  /// Removes attribute `name`; returns whether it was there.
  bool erase(const std::string& name) { return call(op::dict_erase, detail::mgr::enc(name)).n != 0; }
  /// Attribute names in the order they were first set.
  [[nodiscard]] std::vector<std::string> names() const {
    auto r = call(op::dict_items);
    std::vector<std::string> out;
    for (std::size_t i = 0; i + 1 < r.list.size(); i += 2) out.push_back(detail::mgr::dec<std::string>(r.list[i]));
    return out;
  }

 private:
  friend class Manager;
  using BaseProxy::BaseProxy;
};

/// A FIFO queue in the manager (Python's manager.Queue()); maxsize 0 = unbounded.
template <class T>
class QueueProxy : public BaseProxy {
  using op = detail::mgr::op;

 public:
  QueueProxy() = default;

  /// Puts `v`, waiting while a bounded queue is full.
  void put(const T& v) { call(op::queue_put, {}, detail::mgr::enc(v), 0, -1); }
  /// queue_full if there is no room before the timeout.
  template <class Rep, class Period>
  void put(const T& v, std::chrono::duration<Rep, Period> timeout) {
    call(op::queue_put, {}, detail::mgr::enc(v), 0, detail::to_ns(timeout));
  }
  /// Puts `v`; queue_full if there is no room now.
  void put_nowait(const T& v) { call(op::queue_put, {}, detail::mgr::enc(v), 1, 0); }
  /// Takes the next message, waiting until one arrives.
  [[nodiscard]] T get() { return detail::mgr::dec<T>(call(op::queue_get, {}, {}, 0, -1).a); }
  /// queue_empty if nothing arrives before the timeout.
  template <class Rep, class Period>
  [[nodiscard]] T get(std::chrono::duration<Rep, Period> timeout) {
    return detail::mgr::dec<T>(call(op::queue_get, {}, {}, 0, detail::to_ns(timeout)).a);
  }
  /// Takes the next message; queue_empty if there is none now.
  [[nodiscard]] T get_nowait() { return detail::mgr::dec<T>(call(op::queue_get, {}, {}, 1, 0).a); }
  /// The next message if one is there now; nullopt otherwise.
  [[nodiscard]] std::optional<T> try_get() {
    try {
      return get_nowait();
    } catch (const mproc::queue_empty&) {
      return std::nullopt;
    }
  }
  /// Messages waiting.
  [[nodiscard]] std::size_t qsize() const { return static_cast<std::size_t>(call(op::queue_size).n); }
  /// True when no message waits.
  [[nodiscard]] bool empty() const { return qsize() == 0; }
  /// True when a bounded queue holds maxsize items.
  [[nodiscard]] bool full() const { return call(op::queue_full).n != 0; }

 protected:
  using BaseProxy::BaseProxy;

 private:
  friend class Manager;
};

/// A queue whose consumers confirm each item (Python's manager.JoinableQueue()).
template <class T>
class JoinableQueueProxy : public QueueProxy<T> {
  using op = detail::mgr::op;

 public:
  JoinableQueueProxy() = default;
  /// One item taken from the queue is done; value_error when more are confirmed
  /// than were put.
  void task_done() { this->call(op::queue_task_done); }
  /// Waits until every item put has been confirmed with task_done().
  void join() { this->call(op::queue_join, {}, {}, 0, -1); }
  /// As join(); false if items are still unconfirmed when the timeout passes.
  template <class Rep, class Period>
  [[nodiscard]] bool join(std::chrono::duration<Rep, Period> timeout) {
    return this->call(op::queue_join, {}, {}, 0, detail::to_ns(timeout)).n != 0;
  }

 private:
  friend class Manager;
  using QueueProxy<T>::QueueProxy;
};

/// A lock in the manager (Python's manager.Lock()): any process may release it.
/// Lockable, so std::scoped_lock / std::unique_lock work.
class LockProxy : public BaseProxy {
  using op = detail::mgr::op;

 public:
  LockProxy() = default;

  /// Takes the lock, waiting when `block`; returns whether it was taken.
  bool acquire(bool block = true) { return call(op::lock_acquire, {}, {}, block ? 0 : 1, block ? -1 : 0).n != 0; }
  /// False if the lock could not be taken before the timeout.
  template <class Rep, class Period>
  bool acquire(bool block, std::chrono::duration<Rep, Period> timeout) {
    const std::int64_t ns = detail::to_ns(timeout);  // a NaN is refused even when not blocking
    return call(op::lock_acquire, {}, {}, block ? 0 : 1, block ? ns : 0).n != 0;
  }
  /// state_error if the lock is not held.
  void release() { call(op::lock_release); }
  /// Lockable: acquire(true).
  void lock() { acquire(true); }
  /// Lockable: acquire(false).
  bool try_lock() { return acquire(false); }
  /// Lockable: release().
  void unlock() { release(); }

 private:
  friend class Manager;
  using BaseProxy::BaseProxy;
};

/// A value in the manager (Python's manager.Value()). No lock of its own: use update
/// on a dict, or a manager Lock, for read-modify-write.
template <class T>
class ValueProxy : public BaseProxy {
  using op = detail::mgr::op;

 public:
  ValueProxy() = default;
  /// The value.
  [[nodiscard]] T get() const { return detail::mgr::dec<T>(call(op::value_get).a); }
  /// The value (Python's `.value`).
  [[nodiscard]] T value() const { return get(); }
  /// Replaces the value.
  void set(const T& v) { call(op::value_set, {}, detail::mgr::enc(v)); }

 private:
  friend class Manager;
  using BaseProxy::BaseProxy;
};

/// An event in the manager (Python's manager.Event()).
class EventProxy : public BaseProxy {
  using op = detail::mgr::op;

 public:
  EventProxy() = default;
  /// Sets the flag and wakes every waiter.
  void set() { call(op::event_set); }
  /// Clears the flag.
  void clear() { call(op::event_clear); }
  /// True while the flag is set.
  [[nodiscard]] bool is_set() const { return call(op::event_is_set).n != 0; }
  /// Waits until the flag is set; returns it.
  bool wait() { return call(op::event_wait, {}, {}, 0, -1).n != 0; }
  /// False if the flag is still clear when the timeout passes.
  template <class Rep, class Period>
  bool wait(std::chrono::duration<Rep, Period> timeout) {
    return call(op::event_wait, {}, {}, 0, detail::to_ns(timeout)).n != 0;
  }

 private:
  friend class Manager;
  using BaseProxy::BaseProxy;
};

/// A semaphore in the manager (manager.Semaphore() and manager.BoundedSemaphore();
/// releasing a bounded one above its initial value raises value_error).
class SemaphoreProxy : public BaseProxy {
  using op = detail::mgr::op;

 public:
  SemaphoreProxy() = default;
  /// Decrements the counter, waiting while it is 0 when `block`; true when decremented.
  bool acquire(bool block = true) { return call(op::sem_acquire, {}, {}, block ? 0 : 1, block ? -1 : 0).n != 0; }
  /// As acquire(block), waiting at most `timeout`.
  template <class Rep, class Period>
  bool acquire(bool block, std::chrono::duration<Rep, Period> timeout) {
    return call(op::sem_acquire, {}, {}, block ? 0 : 1, block ? detail::to_ns(timeout) : 0).n != 0;
  }
  /// Adds `n` to the counter (value_error past a BoundedSemaphore's bound, or for n < 1).
  void release(std::int64_t n = 1) { call(op::sem_release, {}, {}, n); }
  /// The counter's value.
  [[nodiscard]] std::int64_t get_value() const { return call(op::sem_value).n; }
  /// Lockable: acquire(true).
  void lock() { acquire(true); }
  /// Lockable: acquire(false).
  bool try_lock() { return acquire(false); }
  /// Lockable: release().
  void unlock() { release(); }

 private:
  friend class Manager;
  using BaseProxy::BaseProxy;
};

/// A recursive lock in the manager (Python's manager.RLock()): the thread holding it
/// may take it again, and only that thread may release it (state_error otherwise).
class RLockProxy : public BaseProxy {
  using op = detail::mgr::op;

 public:
  RLockProxy() = default;
  /// Takes the lock (again, if this thread holds it), waiting when `block`; true when taken.
  bool acquire(bool block = true) {
    return call(op::rlock_acquire, {}, detail::mgr::caller_token(), block ? 0 : 1, block ? -1 : 0).n != 0;
  }
  /// As acquire(block), waiting at most `timeout`.
  template <class Rep, class Period>
  bool acquire(bool block, std::chrono::duration<Rep, Period> timeout) {
    return call(op::rlock_acquire, {}, detail::mgr::caller_token(), block ? 0 : 1,
                block ? detail::to_ns(timeout) : 0).n != 0;
  }
  /// Releases one level; state_error unless the calling thread holds it.
  void release() { call(op::rlock_release, {}, detail::mgr::caller_token()); }
  /// Lockable: acquire(true).
  void lock() { acquire(true); }
  /// Lockable: acquire(false).
  bool try_lock() { return acquire(false); }
  /// Lockable: release().
  void unlock() { release(); }

 protected:
  using BaseProxy::BaseProxy;

 private:
  friend class Manager;
};

/// A condition variable in the manager with its own RLock (Python's
/// manager.Condition()). wait() and notify() need the lock held by the caller.
class ConditionProxy : public RLockProxy {
  using op = detail::mgr::op;

 public:
  ConditionProxy() = default;
  /// Releases the lock, waits for a notify, takes the lock back.
  bool wait() { return call(op::cond_wait, {}, detail::mgr::caller_token(), 0, -1).n != 0; }
  /// As wait(); false when the timeout passed without a notify (the lock is taken
  /// back either way).
  template <class Rep, class Period>
  bool wait(std::chrono::duration<Rep, Period> timeout) {
    return call(op::cond_wait, {}, detail::mgr::caller_token(), 0, detail::to_ns(timeout)).n != 0;
  }
  /// Waits until pred() holds or the timeout passes; returns pred()'s last value.
  template <class Pred, class Rep, class Period>
  bool wait_for(Pred pred, std::chrono::duration<Rep, Period> timeout) {
    const std::int64_t end = detail::monotonic_ns() + std::min<std::int64_t>(detail::to_ns(timeout), INT64_MAX / 2);
    bool ok = pred();
    while (!ok) {
      const std::int64_t left = end - detail::monotonic_ns();
      if (left <= 0) break;
      (void)wait(std::chrono::nanoseconds(left));
      ok = pred();
    }
    return ok;
  }
  /// Waits until pred() holds.
  template <class Pred>
  void wait_for(Pred pred) {
    while (!pred()) (void)wait();
  }
  /// Wakes up to n waiters.
  void notify(std::int64_t n = 1) { call(op::cond_notify, {}, detail::mgr::caller_token(), n); }
  /// Wakes every waiter.
  void notify_all() { call(op::cond_notify, {}, detail::mgr::caller_token(), -1); }

 private:
  friend class Manager;
  using RLockProxy::RLockProxy;
};

/// A barrier in the manager (Python's manager.Barrier(parties, timeout=)); wait()
/// returns the arrival index. A timeout, abort() or reset() while parties wait breaks
/// it: they raise broken_barrier_error.
class BarrierProxy : public BaseProxy {
  using op = detail::mgr::op;

 public:
  BarrierProxy() = default;
  /// Waits for the other parties, or the barrier's default timeout if it has one.
  std::size_t wait() { return static_cast<std::size_t>(call(op::barrier_wait, {}, {}, 0, -2).n); }
  /// As wait(), raising broken_barrier_error when `timeout` passes first.
  template <class Rep, class Period>
  std::size_t wait(std::chrono::duration<Rep, Period> timeout) {
    return static_cast<std::size_t>(call(op::barrier_wait, {}, {}, 0, detail::to_ns(timeout)).n);
  }
  /// Puts the barrier back to its initial state; parties waiting now get broken_barrier_error.
  void reset() { call(op::barrier_reset); }
  /// Breaks the barrier: waits raise broken_barrier_error until reset().
  void abort() { call(op::barrier_abort); }
  /// Parties needed to pass.
  [[nodiscard]] std::size_t parties() const { return static_cast<std::size_t>(call(op::barrier_info).n); }
  /// Parties waiting now.
  [[nodiscard]] std::size_t n_waiting() const {
    return static_cast<std::size_t>(std::stoll(call(op::barrier_info).list.at(0)));
  }
  /// True when the barrier is broken (until reset()).
  [[nodiscard]] bool broken() const { return call(op::barrier_info).list.at(1) != "0"; }

 private:
  friend class Manager;
  using BaseProxy::BaseProxy;
};

/// A fixed-size array in the manager (Python's manager.Array()); indexes may be
/// negative, out-of-range ones raise std::out_of_range (IndexError).
template <class T>
class ArrayProxy : public BaseProxy {
  using op = detail::mgr::op;

 public:
  /// The element type.
  using value_type = T;
  ArrayProxy() = default;
  /// Element `i`; std::out_of_range when out of range.
  [[nodiscard]] T get(std::int64_t i) const { return detail::mgr::dec<T>(call(op::list_get, {}, {}, i).a); }
  /// Replaces element `i`; std::out_of_range when out of range.
  void set(std::int64_t i, const T& v) { call(op::list_set, {}, detail::mgr::enc(v), i); }
  /// Number of elements.
  [[nodiscard]] std::size_t size() const { return static_cast<std::size_t>(call(op::list_size).n); }
  /// A copy of the contents (Python's arr[:]).
  [[nodiscard]] std::vector<T> items() const {
    auto r = call(op::list_items);
    std::vector<T> out;
    out.reserve(r.list.size());
    for (auto& e : r.list) out.push_back(detail::mgr::dec<T>(e));
    return out;
  }
  /// Iterates over a snapshot of the elements.
  [[nodiscard]] detail::mgr::snapshot_iterator<T> begin() const {
    return detail::mgr::snapshot_iterator<T>(std::make_shared<const std::vector<T>>(items()));
  }
  /// The end of the snapshot.
  [[nodiscard]] std::default_sentinel_t end() const noexcept { return {}; }

 private:
  friend class Manager;
  using BaseProxy::BaseProxy;
};

// ------------------------------------------------------------------ Manager

/// Starts (or, with connect(), reaches) a manager and makes proxies to its objects.
/// Objects live until the manager shuts down or destroy() frees them. Movable, not copyable; the process that
/// created the manager shuts its server down on destruction or shutdown().
class Manager {
 public:
  /// Starts a manager for local use: a Unix socket in a private directory, a random key.
  Manager() : Manager(manager_options{}) {}

  /// Starts a manager with `opts` (TCP address, key, capacity, timeouts).
  explicit Manager(manager_options opts) : opts_(std::move(opts)) {
    using namespace detail::mgr;
    if (opts_.authkey.empty()) opts_.authkey = detail::random_bytes(32);
    std::int64_t timeout_ns = detail::to_ns(opts_.timeout);
    if (timeout_ns <= 0) throw value_error("mproc::manager_options: timeout must be positive");
    if (opts_.capacity < (std::size_t(64) << 10))
      throw value_error("mproc::manager_options: capacity must be at least 64 KiB");
    uuid_ = detail::hex(detail::random_bytes(16));

    auto st = store::create(opts_.capacity);
    st->lock_timeout_ns = timeout_ns;

    const char* base = std::getenv("XDG_RUNTIME_DIR");
    std::string tmpl = std::string(base && *base && ::access(base, W_OK) == 0 ? base : "/tmp") + "/mproc-mgr-XXXXXX";
    if (!::mkdtemp(tmpl.data())) detail::throw_errno("mkdtemp(manager socket directory)");
    dir_ = tmpl;  // mkdtemp creates it 0700: only our uid can even reach the socket
    unix_path_ = dir_ + "/manager.sock";
    try {
      detail::unique_fd ufd = listen_unix(unix_path_);
      detail::unique_fd tfd;
      if (!opts_.address.empty()) {
        if (is_unix_address(opts_.address))
          throw value_error("mproc::Manager: address must be host:port (the Unix socket is always made)");
        auto [fd, port] = listen_tcp(opts_.address);
        tfd = std::move(fd);
        port_ = port;
        tcp_address_ = split_host_port(opts_.address).first;
        if (tcp_address_.find(':') != std::string::npos) tcp_address_ = "[" + tcp_address_ + "]";
        tcp_address_ += ":" + std::to_string(port_);
      }
      int pfd[2];
      detail::check(::pipe2(pfd, O_CLOEXEC), "pipe2");
      detail::unique_fd ready_r(pfd[0]), ready_w(pfd[1]);
      server_config cfg{st, opts_.authkey, uuid_, dir_, opts_.max_message, timeout_ns};
      int u = ufd.get(), t = tfd.get(), w = ready_w.get();
      pid_t me = ::getpid();
      server_pid_ = detail::fork_child([&]() -> int { server_main(cfg, me, u, t, w); });
      // Signalled through a pidfd: if someone else reaps the server, its pid may be
      // reused, and a kill(pid) at shutdown would hit an unrelated process.
      server_pidfd_ = detail::pidfd_open(server_pid_);
      ready_w.reset();
      char c;
      pollfd p{ready_r.get(), POLLIN, 0};
      int rc = detail::poll_until(&p, 1, detail::monotonic_ns() + 10'000'000'000);
      if (rc != 1 || detail::retry_eintr([&] { return ::read(ready_r.get(), &c, 1); }) != 1) {
        stop_server();
        throw manager_error("mproc::Manager: the server process failed to start");
      }
    } catch (...) {
      cleanup_dir();
      throw;
    }
    owner_pid_ = ::getpid();
    auto be = std::make_shared<local_backend>(std::move(st));
    {
      std::lock_guard g(registry_mutex());
      local_registry()[uuid_] = be;
    }
    endpoint proto;
    proto.uuid = uuid_, proto.unix_path = unix_path_, proto.tcp_address = tcp_address_;
    proto.authkey = opts_.authkey, proto.timeout_ns = timeout_ns, proto.max_message = opts_.max_message;
    ep_ = shared_endpoint(std::move(proto));
    ep_->set(be);
    detail::log(log_level::info, "manager started: server pid %d at %s", int(server_pid_),
                tcp_address_.empty() ? unix_path_.c_str() : tcp_address_.c_str());
  }

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
    endpoint proto;
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
    if (owner_pid_ != ::getpid()) return;
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
    if (server_pidfd_) ::syscall(SYS_pidfd_send_signal, server_pidfd_.get(), SIGKILL, nullptr, 0);
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
