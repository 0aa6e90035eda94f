/// \file
/// BaseProxy, what every manager proxy is: a manager's endpoint and an object's id,
/// which is all a proxy carries to another process. The proxies themselves are in
/// data_proxies.hpp and sync_proxies.hpp.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "../detail/manager_client.hpp"
#include "../detail/manager_messages.hpp"
#include "../serialization/boost.hpp"  // proxies travel through their Boost serialize()
#include "../errors.hpp"

namespace mproc {

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
    detail::mgr::endpoint_address e;
    if (ep_) e = *ep_;
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
  /// An acquire of a lock or semaphore: when `block`, waits up to `wait_ns` (-1: for
  /// ever); else only tries. True when it was taken.
  bool acquire_op(detail::mgr::op o, bool block, std::int64_t wait_ns, std::string token = {}) const {
    return call(o, {}, std::move(token), block ? 0 : 1, block ? wait_ns : 0).n != 0;
  }

  std::shared_ptr<detail::mgr::endpoint> ep_;
  std::uint64_t id_ = 0;
};

}  // namespace mproc
