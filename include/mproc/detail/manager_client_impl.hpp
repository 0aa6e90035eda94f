// The bodies of manager_client.hpp that touch the shared segment: included by it in the
// header-only mode, compiled once by src/mproc.cpp otherwise (see MPROC_FUNC). Only
// these need the store and its Boost.Interprocess containers.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "manager_client.hpp"
#include "manager_execute.hpp"
#include "manager_store.hpp"

namespace mproc::detail::mgr {

MPROC_FUNC response local_backend::call(const request& q, const updater* fn) { return execute(*s_, q, fn); }

MPROC_FUNC std::shared_ptr<local_backend> attach_local(const std::string& path, const std::string& key,
                                                       std::int64_t timeout_ns, std::size_t cap,
                                                       std::string* uuid_out) {
  unique_fd fd = open_connection(path, key, timeout_ns);
  deadline_t d = deadline_after(timeout_ns);
  request q;
  q.o = op::attach;
  write_frame(fd.get(), q.encode(), d);
  auto [payload, memfd] = read_frame_with_fd(fd.get(), cap, d);
  response r = response::decode(payload);
  r.raise_if_error();
  if (!memfd || r.list.size() != 1) throw manager_error("mproc::Manager: server did not send its segment");
  if (auto be = mapped_segment(r.a)) {
    if (uuid_out) *uuid_out = r.a;
    return be;
  }
  auto st = store::attach(std::move(memfd), static_cast<std::size_t>(r.n), r.number(0, "segment root offset"));
  st->lock_timeout_ns = timeout_ns;
  auto be = std::make_shared<local_backend>(std::move(st));
  std::lock_guard g(registry_mutex());
  local_registry()[r.a] = be;
  if (uuid_out) *uuid_out = r.a;
  return be;
}

}  // namespace mproc::detail::mgr
