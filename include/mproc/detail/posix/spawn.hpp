// The spawn and forkserver start methods: the wire between a parent and a child that
// shares no memory with it.
//
// spawn: posix_spawn of this program's own executable with the same argv and the
// environment marker MPROC_SPAWN=<fd>, where <fd> is the child's end of a socketpair.
// mproc::init(argc, argv) in the child sees the marker, acknowledges with one byte,
// receives {entry offset, parent pid, payload, fds} and runs entry(payload, fds); it
// never returns into main. A child that does not acknowledge (its main does not call
// init, so main would simply run again) is killed and the start raises
// start_method_error; such a child also cannot start children of its own by spawn
// (the marker without init refuses), so a missing init is never a fork bomb.
//
// The forkserver (detail/posix/forkserver.hpp) reads requests in the same format.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <sys/types.h>

#include "../../version.hpp"
#include "fd_passing.hpp"
#include "forker.hpp"
#include "posix.hpp"

namespace mproc::detail {

/// What a spawned or forkserver child runs: the payload and the descriptors sent with
/// it (owned by the entry; whatever it does not keep open is closed at exit anyway).
using entry_fn = int (*)(std::span<const std::byte> payload, std::span<const int> fds);

/// The process-wide default start method, as mproc::start_method's value (0 fork,
/// 1 spawn, 2 forkserver). Kept at this level so that a child entering through a spawn
/// or forkserver request takes over the method that started it, as Python's context
/// does: its own children are started the same way unless it says otherwise.
MPROC_FUNC std::atomic<int>& default_start_method_value() noexcept;
inline constexpr int start_method_value_spawn = 1;
inline constexpr int start_method_value_forkserver = 2;

inline constexpr const char* spawn_marker = "MPROC_SPAWN";
inline constexpr std::uint64_t spawn_magic = 0x6d70726f63737077ULL;  // "mprocspw"
// SCM_MAX_FD is 253; one request carries at most this many descriptors.
inline constexpr std::size_t max_passed_fds = 250;
static_assert(max_passed_fds <= max_fds_per_message, "one request is one message");

struct spawn_header {
  std::uint64_t magic = spawn_magic;
  std::int64_t entry_offset = 0;
  std::uint64_t payload_size = 0;
  std::uint32_t nfds = 0;
  std::int32_t parent_pid = 0;
};

/// A request's payload is the child's serialized target and arguments; bulk data
/// belongs in SharedMemory. The cap also bounds what a peer can make a reader allocate.
inline constexpr std::uint64_t max_spawn_payload = std::uint64_t(1) << 30;

/// Why a request header read from a peer is unacceptable, or nullptr.
inline const char* spawn_header_problem(const spawn_header& h) noexcept {
  if (h.magic != spawn_magic) return "not a request (bad magic)";
  if (h.payload_size > max_spawn_payload) return "payload larger than 1 GiB";
  if (h.nfds > max_passed_fds) return "more descriptors than one request carries";
  return nullptr;
}

/// Raises in the parent, before any child exists, what a reader would refuse.
MPROC_FUNC void check_spawn_request_size(std::size_t payload, std::size_t nfds, const char* method);

// ---- socket helpers (blocking, EINTR-safe, SIGPIPE-free)

/// Sends all of data; fds ride on the first byte.
MPROC_FUNC void send_all_fds(int sock, const void* data, std::size_t len, std::span<const int> fds,
                             const char* what);

/// Waits until sock is readable; false on timeout (timeout_ns < 0: forever).
MPROC_FUNC bool wait_readable(int sock, std::int64_t timeout_ns);

/// Receives exactly len bytes, collecting descriptors that arrive with them (set
/// close-on-exec). Returns false on EOF before the first byte; a later EOF, a
/// timeout or an error raises.
MPROC_FUNC bool recv_all_fds(int sock, void* data, std::size_t len, std::vector<int>* fds,
                             std::int64_t timeout_ns, const char* what);

/// Raises if this process may not start spawn/forkserver children.
MPROC_FUNC void check_spawn_allowed(const char* method, bool init_called);

// ---- parent side of spawn

struct spawned {
  pid_t pid = -1;
  unique_fd pidfd;
};

/// Kills and reaps a child that failed to start.
MPROC_FUNC void discard_child(pid_t pid) noexcept;

/// A fresh image started by spawn_begin that has not yet shown it entered init nor
/// received its work (spawn_finish does both). Dropped unfinished, the child is killed
/// and reaped: a half-started child never outlives the start that failed.
struct spawn_start {
  pid_t pid = -1;
  unique_fd pidfd;
  unique_fd sock;  // the bootstrap socket; empty once finished

  spawn_start() = default;
  spawn_start(spawn_start&& o) noexcept
      : pid(std::exchange(o.pid, -1)), pidfd(std::move(o.pidfd)), sock(std::move(o.sock)) {}
  spawn_start& operator=(spawn_start&& o) noexcept {
    if (this != &o) {
      discard();
      pid = std::exchange(o.pid, -1);
      pidfd = std::move(o.pidfd);
      sock = std::move(o.sock);
    }
    return *this;
  }
  ~spawn_start() { discard(); }
  void discard() noexcept {
    if (pid > 0 && sock) discard_child(pid);
    pid = -1;
    sock.reset();
  }
};

/// posix_spawn of `executable` with argv: the child starts with the bootstrap socket.
/// Only this step needs the long-lived thread (the child's death signal follows the
/// thread that started it); spawn_finish may run anywhere, later, so that several
/// images start up at once.
MPROC_FUNC spawn_start spawn_begin(const std::string& executable, const std::vector<std::string>& args);

/// The bootstrap exchange with a child from spawn_begin: waits for its word that it
/// entered init, then sends it entry, payload and fds. On failure the child is killed
/// and reaped and start_method_error (or the socket's error) is raised.
MPROC_FUNC spawned spawn_finish(spawn_start& s, entry_fn entry, std::span<const std::byte> payload,
                                std::span<const int> fds);

/// posix_spawn of `executable` with argv, then the bootstrap exchange. The caller has
/// checked that init was called.
MPROC_FUNC spawned spawn_entry(const std::string& executable, const std::vector<std::string>& args,
                               entry_fn entry, std::span<const std::byte> payload,
                               std::span<const int> fds);

// ---- reading a request (spawned child and forkserver alike)

/// One request as read from a peer. The descriptors are owned until taken.
struct spawn_request {
  spawn_header header{};
  std::vector<std::byte> payload;
  std::vector<int> fds;
  entry_fn entry = nullptr;

  spawn_request() = default;
  spawn_request(const spawn_request&) = delete;
  spawn_request& operator=(const spawn_request&) = delete;
  ~spawn_request() { close_fds(); }
  void close_fds() noexcept {
    for (int f : fds) ::close(f);
    fds.clear();
  }
};

/// Reads one request {header, fds, payload} from sock. Returns false on EOF before the
/// first byte. A malformed, oversized or truncated request raises (start_method_error,
/// eof_error or timeout_error naming `what`); once the header is in, the rest must
/// follow within body_timeout_ns. The payload grows as bytes arrive, so a header that
/// merely claims a large payload costs nothing.
MPROC_FUNC bool read_spawn_request(int sock, spawn_request& out, std::int64_t header_timeout_ns,
                                   std::int64_t body_timeout_ns, const char* what);

/// Runs a request's entry: the descriptors pass to it. Returns its exit code; a
/// failure before the target runs (the entry reports the target's own exceptions) is
/// reported on stderr as `who` could not start.
MPROC_FUNC int run_spawn_request(spawn_request& req, const char* who) noexcept;

// ---- child side (from init)

/// Called by init() first thing: if this process was started by spawn, become the
/// child and never return.
MPROC_FUNC void enter_if_spawned();

}  // namespace mproc::detail

#if MPROC_HEADER_ONLY
#include "spawn_impl.hpp"
#endif
