// The registry of a process's children and of its own place in the process tree
// (Python's _children, _identity, _parent_pid): what Process keeps per process. The
// bodies are in process_impl.hpp; this layer knows nothing of the Process class.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <sys/types.h>

#include "posix/posix.hpp"
#include "../version.hpp"

namespace mproc::detail {

/// The parent as this process knows it (parent_process() reports it).
struct parent_record {
  pid_t pid = 0;
  std::string name;
};

/// One started child, shared between its Process object and the registry.
struct process_state {
  std::mutex m;  // serialises reaping and signalling
  pid_t pid = -1;
  pid_t owner = -1;  // the process that started it: the only one that may wait for it
  // Kept open after reaping, as the sentinel stays valid until close(); once the child
  // is reaped without ever having had one, an always-readable eventfd stands in.
  std::atomic<int> pidfd{-1};
  // A child that is not ours (forkserver) reports its exit code on this socket.
  std::atomic<int> status_fd{-1};
  std::optional<int> exitcode;  // set when reaped
  // A forkserver child reports its own exit code just before it exits (so that it
  // arrives even if the server was killed): held here until its pidfd shows the exit.
  std::optional<int> reported_code;
  std::atomic<bool> code_reported{false};
  bool lost = false;            // reaped by someone else (SIGCHLD ignored, waitpid(-1))
  std::string name;
  bool daemon = false;

  process_state() = default;
  process_state(const process_state&) = delete;
  process_state& operator=(const process_state&) = delete;
  ~process_state() {
    close_fd(pidfd.exchange(-1));
    close_fd(status_fd.exchange(-1));
  }
  [[nodiscard]] bool finished() const noexcept { return exitcode.has_value() || lost; }
};

struct process_globals {
  std::mutex m;  // guards the fields below; never held across a blocking call or fork
  std::vector<std::shared_ptr<process_state>> children;  // started and not yet reaped
  std::vector<int> identity;  // empty in the main process, e.g. {2} in Process-2
  int counter = 0;            // last number handed out to a child of this process
  pid_t self_pid = current_pid();
  std::optional<parent_record> parent;
  // Becomes readable when the parent ends: a pidfd (received from the parent, or
  // opened on first need), or an eventfd once the parent is known to be gone.
  int parent_fd = -1;
  // A forked or spawned child's parent is its real parent (getppid); a forkserver
  // child's real parent is the server.
  bool parent_is_ppid = false;
  bool daemon = false;
  std::atomic<bool> exit_handler_registered{false};
};

MPROC_FUNC process_globals& process_registry();
MPROC_FUNC void registry_before_fork() noexcept;
MPROC_FUNC void registry_after_fork_parent() noexcept;
MPROC_FUNC void registry_after_fork_child() noexcept;
MPROC_FUNC std::string identity_suffix(const std::vector<int>& id);

/// The identity of the next child of this process (Python's _identity): the parent's
/// identity plus the next counter value. Pool workers use it too.
MPROC_FUNC std::vector<int> next_process_identity();
MPROC_FUNC void unregister_child(const process_state* s);
MPROC_FUNC void log_exit(const process_state& s);

/// Reaps the child if it has exited; true when it is finished.
MPROC_FUNC bool reap_nohang(process_state& s);

/// The child's pidfd, opened on first need (a join without deadline never needs one,
/// so a plain start+join costs no pidfd). Opened under the state's lock while the
/// child is unreaped, so its pid cannot have been reused.
MPROC_FUNC int ensure_pidfd(process_state& s);

/// A descriptor that is readable once the child has ended, valid until the state's
/// descriptors are released: the pidfd, else the status socket of a forkserver child,
/// else (the child reaped before anyone asked) an eventfd that is always readable.
MPROC_FUNC int sentinel_fd(process_state& s);

/// Releases the child's descriptors (Process::close()); the child is reaped.
MPROC_FUNC void release_fds(process_state& s) noexcept;

/// Waits up to timeout_ns (-1: forever) for the child to exit and reaps it.
MPROC_FUNC bool wait_child(process_state& s, std::int64_t timeout_ns);

/// Sends sig unless the child is already reaped. Through the pidfd when there is one,
/// so a recycled pid can never be hit.
MPROC_FUNC void signal_child(process_state& s, int sig);
MPROC_FUNC std::vector<std::shared_ptr<process_state>> children_snapshot();

/// Reaps finished children (Python's _cleanup). With only_abandoned, just those whose
/// Process object is gone (the registry holds the last reference): the others are
/// reaped by their owners, and polling every running child on each start would make
/// starting N processes cost O(N^2) waitpid calls.
MPROC_FUNC void reap_finished(bool only_abandoned = false);

/// At exit (of the program, or of a child process when its target ends): daemon
/// children are terminated, all children are joined. A daemon that ignores SIGTERM
/// is killed after a grace period so exit never hangs on it.
MPROC_FUNC void join_children_at_exit() noexcept;
MPROC_FUNC void exit_handler() noexcept;
MPROC_FUNC void ensure_exit_handler();

/// The library's per-process state in a freshly started child.
MPROC_FUNC void enter_child(const std::string& name, std::vector<int> identity, bool daemon);

/// std::exit() in a child must not run the parent's atexit handlers and static
/// destructors (they belong to the parent); on_exit sees the status, so the child's
/// own exit duties are done here and the process leaves with _exit(status).
MPROC_FUNC void child_exit_hook(int status, void*);

/// Python prints "Process <name>:" and the traceback; we print the exception's type
/// and what(). Called from inside a catch block.
MPROC_FUNC void report_uncaught(const std::string& name) noexcept;

}  // namespace mproc::detail
