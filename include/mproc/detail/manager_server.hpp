// The manager's server process: it owns the segment, hands its descriptor to local
// processes that did not inherit it, and runs requests for TCP clients. One loop
// accepts connections and runs every handshake without blocking; an authenticated
// connection then gets a thread of its own (a request may block).
#pragma once

#include <algorithm>
#include <csignal>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include "../errors.hpp"
#include "log.hpp"
#include "manager_execute.hpp"
#include "manager_messages.hpp"
#include "manager_protocol.hpp"
#include "manager_store.hpp"
#include "manager_updaters.hpp"
#include "posix/posix.hpp"
#include "posix/process_calls.hpp"
#include "posix/sockets.hpp"

namespace mproc::detail::mgr {

/// Closes every descriptor but `keep` (the server must not hold the user's pipes
/// open, or their readers would never see end-of-file).
inline void close_all_but(std::vector<int> keep) {
  std::sort(keep.begin(), keep.end());
  unsigned next = 0;
  for (int k : keep) {
    if (k < 0) continue;
    if (unsigned(k) > next) close_fd_range(next, unsigned(k) - 1);
    next = unsigned(k) + 1;
  }
  close_fd_range(next, ~0u);
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
    const ssize_t r = recv_eintr(h.fd.get(), at, want, MSG_DONTWAIT);
    if (r == 0) throw eof_error("manager: the peer closed during the handshake");
    if (r < 0) {
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
      int c = accept_connection(listen_fd, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (c < 0) {
        if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
          // Out of descriptors: make room by dropping the oldest handshake, else
          // refuse this peer through the reserve, else wait a moment.
          if (drop_oldest(listener)) continue;
          if (spare_) {
            spare_.reset();
            int refused = accept_connection(listen_fd, SOCK_CLOEXEC);
            close_fd(refused);
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

  /// Until when poll may sleep: the next handshake deadline or the end of an accept
  /// pause; no_deadline when nothing is due.
  [[nodiscard]] deadline_t wake_deadline() const {
    deadline_t next = -1;
    for (const auto& h : pending_)
      if (next < 0 || h.deadline < next) next = h.deadline;
    for (deadline_t p : paused_until_)
      if (p > 0 && (next < 0 || p < next)) next = p;
    return next;
  }
  /// False while accepting on `listener` is paused (descriptors ran out).
  [[nodiscard]] bool accepting(int listener) {
    if (paused_until_[listener] && monotonic_ns() >= paused_until_[listener]) paused_until_[listener] = 0;
    return paused_until_[listener] == 0;
  }
  [[nodiscard]] std::size_t pending() const noexcept { return pending_.size(); }

 private:
  void reserve_fd() noexcept { spare_ = open_readonly("/dev/null"); }

  void admit(unique_fd fd, int listener) {
    const bool is_unix = listener == 0;
    if (is_unix) {
      uid_t uid;
      if (!peer_uid(fd.get(), &uid) || uid != effective_uid()) {
        detail::log(log_level::warning, "manager: refused a Unix connection from uid %d", int(uid));
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
    set_nonblocking(h.fd.get(), false);
    const int c = h.fd.release();
    const bool is_unix = h.is_unix;
    const server_config& cfg = cfg_;
    try {
      std::thread([&cfg, c, is_unix] { serve_connection(cfg, unique_fd(c), is_unix); }).detach();
    } catch (...) {
      close_fd(c);
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
  exit_now(0);
}

[[noreturn]] inline void server_main(server_config cfg, pid_t owner, int unix_fd, int tcp_fd, int ready_fd) {
  ignore_signal(SIGINT);  // a Ctrl-C is the owner's to act on; the owner shuts us down
  ignore_signal(SIGPIPE);
  detail::process_name_storage() = "SyncManager";
  close_all_but({0, 1, 2, cfg.st->fd(), unix_fd, tcp_fd, ready_fd});
  // The owner removes the socket directory at shutdown; if it is killed instead, the
  // parent-death signal becomes SIGTERM (received here through a signalfd) so the
  // directory does not outlive it. Shutdown itself uses SIGKILL.
  int sfd = signalfd_for(SIGTERM);  // before any thread: they inherit the mask
  set_parent_death_signal(SIGTERM);
  // Out of the program's process group: a SIGKILL of the whole group must leave the
  // server alive to get the parent-death signal and remove the directory.
  own_process_group();
  if (parent_pid() != owner) server_orphaned(cfg);
  cfg.st->hold_life();
  const char one = 1;
  write_fully(ready_fd, &one, 1);
  close_fd(ready_fd);
  // Accepting drains a listener until it would block.
  for (int l : {unix_fd, tcp_fd})
    if (l >= 0) set_nonblocking(l, true);
  handshake_stage stage(cfg);
  std::vector<pollfd> p;
  for (;;) {
    p.clear();
    p.push_back({stage.accepting(0) ? unix_fd : -1, POLLIN, 0});
    p.push_back({sfd, POLLIN, 0});
    p.push_back({tcp_fd >= 0 && stage.accepting(1) ? tcp_fd : -1, POLLIN, 0});
    stage.add_pollfds(p);
    if (poll_until(p.data(), p.size(), stage.wake_deadline()) == -1) exit_now(3);
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

}  // namespace mproc::detail::mgr
