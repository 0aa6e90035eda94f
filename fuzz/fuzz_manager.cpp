// libFuzzer target: the Manager server's request parser and dispatcher
// (detail::mgr::handle_request, what serve_connection runs for every frame an
// authenticated client sends) against a real shared-memory store.
//
// Each input is a session: a sequence of request frames (see fuzz_manager.hpp) run in
// order on a fresh store, so one request can create an object that later ones use.
// handle_request must never throw; every reply must encode and decode again, and an
// error reply must rebuild as an exception (the client's re-raise) without throwing.
#include <mproc/managers.hpp>

#include "fuzz_manager.hpp"

#include <cstdlib>
#include <future>
#include <thread>

namespace {

namespace mgr = mproc::detail::mgr;

/// The server blocks a client's thread in queue_put/queue_get/lock_acquire until the
/// queue or lock is ready; the fuzzer has one thread, so those run as their
/// non-blocking variants (the request is parsed first, exactly as the server does).
std::string without_blocking(std::string_view frame) {
  try {
    mgr::request q = mgr::request::decode(frame);
    if (q.o == mgr::op::queue_put || q.o == mgr::op::queue_get || q.o == mgr::op::lock_acquire) {
      q.n = 1;
      q.m = 0;
      return q.encode();
    }
  } catch (const mproc::serialization_error&) {
  }
  return std::string(frame);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  mgr::server_config cfg{mgr::store::create(1 << 20), "authkey", "fuzz-uuid", "/nonexistent", 1 << 20,
                         1'000'000'000};
  // The store counts as served while another thread holds its life lock, as the
  // server's main thread does (held by this thread, glibc's error-checking robust mutex
  // answers EDEADLK and every request was refused as "server gone" before execute()).
  std::promise<void> held, done;
  std::thread server_life([&] {
    cfg.st->hold_life();
    held.set_value();
    done.get_future().wait();
  });
  held.get_future().wait();
  struct release {
    std::promise<void>& done;
    std::thread& t;
    ~release() {
      done.set_value();
      t.join();
    }
  } at_end{done, server_life};
  const bool is_unix = size && (data[0] & 1);
  for (std::string_view f : fuzz::manager::frames(data, size)) {
    const std::string frame = without_blocking(f);
    auto [r, with_fd] = mgr::handle_request(cfg, frame, is_unix);
    if (with_fd && (!is_unix || r.error)) std::abort();
    mgr::response back = mgr::response::decode(r.encode());
    if (back.error.has_value() != r.error.has_value() || back.a != r.a || back.list != r.list || back.n != r.n)
      std::abort();
    if (back.error) {
      // The server's own capture always rebuilds (as the client's re-raise does).
      const auto& e = *back.error;
      if (e.kind != r.error->kind || e.type_name != r.error->type_name || e.what != r.error->what ||
          e.fields != r.error->fields || !back.raised())
        std::abort();
    }
  }
  return 0;
}
