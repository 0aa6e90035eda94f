// The forkserver start method.
//
// mproc::init forks the server while the program is still single-threaded: a copy of
// the program at the first line of main, holding no threads, locks or state of later.
// It is forked twice over, so it is nobody's child: a wait() loop in the program never
// waits for it and active_children() never lists it.
//
// The server listens on a Unix socket in a private directory made by mkdtemp (mode
// 0700) under $XDG_RUNTIME_DIR, $TMPDIR or /tmp. It admits a connection when
// SO_PEERCRED shows its own uid and the peer answers a random 32-byte challenge with
// HMAC-SHA256 under a 32-byte key drawn by init, which only the program and what it
// forks hold. Each request (the spawn request format; sizes capped, read with time
// limits) makes the server fork a child that runs the entry; the reply carries the
// child's pid, a pidfd for it and one end of a status socket on which the server writes
// the exit code when it reaps the child.
//
// The server watches a pidfd of the program: when the program ends, by exit or by
// SIGKILL, it kills its children, removes its socket and directory and exits. Its
// children die with the program, never with the server: they do not follow the server
// (no PR_SET_PDEATHSIG), and a keeper process forked by the server holds a pidfd of
// each of them, so that children whose server was killed still end with the program.
// Like the pool's workers both ignore SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to the
// process group: the program decides, and the server follows it. A program whose init
// ran with threads already running, or whose server was killed (SIGKILL), gets one
// spawned on first use instead (same protocol). The server has a process group of its
// own (its children join the program's), so a SIGKILL of the program's whole group
// leaves it alive to see the program's end and remove its directory.
#pragma once

#include <cstddef>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include <sys/types.h>

#include "../../version.hpp"
#include "posix.hpp"
#include "spawn.hpp"

namespace mproc::detail {

struct forkserver_child {
  pid_t pid = -1;
  unique_fd pidfd;
  unique_fd status;
};

struct forkserver_address {
  std::string dir, path, key;
  [[nodiscard]] bool empty() const noexcept { return path.empty(); }
};

// ---- the program's side: where the server is, and this process's connection
// (declared here, not in the bodies, for the tests that look at the server)

struct forkserver_client {
  std::mutex m;
  forkserver_address addr;  // empty: no server known yet
  pid_t conn_owner = -1;    // the process that owns `sock`
  unique_fd sock;           // an admitted connection
  pid_t server_pid = -1;    // the server behind `sock`
  pid_t spawned_server = -1;  // a server spawned on first use is this process's child
};

/// This process's client state (one per process; a forked child resets its connection).
MPROC_FUNC forkserver_client& forkserver_state();

/// From init: forks the server (twice over) if this process is single-threaded and
/// has none yet. Failure is quiet: the first forkserver start spawns one instead.
MPROC_FUNC void forkserver_start_from_init() noexcept;

/// Asks the server to fork a child running entry(payload, fds).
MPROC_FUNC forkserver_child forkserver_launch(const std::string& executable,
                                              const std::vector<std::string>& args, entry_fn entry,
                                              std::span<const std::byte> payload,
                                              std::span<const int> fds);

}  // namespace mproc::detail

#if MPROC_HEADER_ONLY
#include "forkserver_impl.hpp"
#endif
