/// \file
/// The body of the Manager's constructor, the one place a program creates the shared
/// segment and forks the server: included by manager.hpp in the header-only mode,
/// compiled once by src/mproc.cpp otherwise (see MPROC_FUNC), so that a file using
/// proxies only never reads the server or its Boost.Interprocess store.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include <fcntl.h>
#include <poll.h>

#include "../detail/manager_server.hpp"
#include "../detail/manager_store.hpp"
#include "manager.hpp"

namespace mproc {

MPROC_FUNC Manager::Manager(manager_options opts) : opts_(std::move(opts)) {
  using namespace detail::mgr;
  if (opts_.authkey.empty()) opts_.authkey = detail::random_bytes(32);
  std::int64_t timeout_ns = detail::to_ns(opts_.timeout);
  if (timeout_ns <= 0) throw value_error("mproc::manager_options: timeout must be positive");
  if (opts_.capacity < (std::size_t(64) << 10))
    throw value_error("mproc::manager_options: capacity must be at least 64 KiB");
  uuid_ = detail::hex(detail::random_bytes(16));

  auto st = store::create(opts_.capacity);
  st->lock_timeout_ns = timeout_ns;

  // 0700: only our uid can even reach the socket.
  dir_ = detail::make_socket_dir("mproc-mgr-XXXXXX", "manager.sock", "mkdtemp(manager socket directory)");
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
    auto [ready_r, ready_w] = detail::make_pipe(O_CLOEXEC);
    server_config cfg{st, opts_.authkey, uuid_, dir_, opts_.max_message, timeout_ns};
    int u = ufd.get(), t = tfd.get(), w = ready_w.get();
    pid_t me = detail::current_pid();
    server_pid_ = detail::fork_child([&]() -> int { server_main(cfg, me, u, t, w); });
    // Signalled through a pidfd: if someone else reaps the server, its pid may be
    // reused, and a kill(pid) at shutdown would hit an unrelated process.
    server_pidfd_ = detail::pidfd_open(server_pid_);
    ready_w.reset();
    char c;
    pollfd p{ready_r.get(), POLLIN, 0};
    int rc = detail::poll_until(&p, 1, detail::deadline_after(10'000'000'000));
    if (rc != 1 || detail::read_eintr(ready_r.get(), &c, 1) != 1) {
      stop_server();
      throw manager_error("mproc::Manager: the server process failed to start");
    }
  } catch (...) {
    cleanup_dir();
    throw;
  }
  owner_pid_ = detail::current_pid();
  auto be = std::make_shared<local_backend>(std::move(st));
  {
    std::lock_guard g(registry_mutex());
    local_registry()[uuid_] = be;
  }
  endpoint_address proto;
  proto.uuid = uuid_, proto.unix_path = unix_path_, proto.tcp_address = tcp_address_;
  proto.authkey = opts_.authkey, proto.timeout_ns = timeout_ns, proto.max_message = opts_.max_message;
  ep_ = shared_endpoint(std::move(proto));
  ep_->set(be);
  detail::log(log_level::info, "manager started: server pid %d at %s", int(server_pid_),
              tcp_address_.empty() ? unix_path_.c_str() : tcp_address_.c_str());
}

}  // namespace mproc
