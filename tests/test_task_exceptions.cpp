// mproc-test-timeout: 600
// Exceptions thrown by Pool tasks keep their type, message and fields on the way back,
// under every start method: the program's own types registered with
// MPROC_REGISTER_EXCEPTION, std::system_error, and every mproc error.
#include <mproc/mproc.hpp>

#include <catch2/catch.hpp>

#include "spawn_entry.hpp"

#include <csignal>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <unistd.h>

using namespace std::chrono_literals;

// Registered *after* spawn_entry.hpp: a spawned or forkserver worker of this test
// enters mproc::init from that header's static initializer, before these
// registrations run in it. The types must come back all the same: only the
// receiving side needs the registration.
namespace app {
struct quota_exceeded : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct no_message_ctor : std::exception {
  const char* what() const noexcept override { return "fixed text"; }
};
struct unregistered_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
}  // namespace app
MPROC_REGISTER_EXCEPTION(app::quota_exceeded);
MPROC_REGISTER_EXCEPTION(app::no_message_ctor);

namespace {

int throw_quota(int n) { throw app::quota_exceeded("quota of " + std::to_string(n) + " exceeded"); }
int throw_fixed(int) { throw app::no_message_ctor(); }
int throw_unregistered(int) { throw app::unregistered_error("not registered"); }
int throw_system(int code) {
  throw std::system_error(code, std::system_category(), "open(/nonexistent)");
}
int throw_generic(int code) { throw std::system_error(std::make_error_code(std::errc(code))); }
int real_system_error(int) {
  // A genuine failing call, reported the way the library reports its own.
  mproc::detail::throw_errno("close(-1)", EBADF);
}

// Each mproc error, raised for real where a task can make it happen.
int raise_mproc_error(int which) {
  switch (which) {
    case 0: {
      mproc::Lock l;
      l.release();  // not held: lock_error
      return 0;
    }
    case 1: {
      mproc::Barrier b(2);
      b.wait(10ms);  // nobody else comes: broken_barrier_error
      return 0;
    }
    case 2: {
      mproc::Queue<int> q;
      return q.get(10ms);  // queue_empty
    }
    case 3: throw mproc::timeout_error("task gave up");
    case 4: throw mproc::manager_error("manager gone");
    case 5: throw mproc::state_error("used twice");
    case 6: throw mproc::worker_died("inner worker 77 died", 77, -9, 9);
    case 7: throw mproc::cancelled_error("inner task cancelled");
    case 8: throw mproc::serialization_error("corrupt");
    case 9: throw mproc::pool_not_running("closed");
    case 10: throw mproc::eof_error("peer closed");
    case 11: throw mproc::authentication_error("bad key");
    case 12: throw mproc::start_method_error("no init");
    case 13: throw mproc::queue_full("full");
    case 14: throw mproc::error("plain");
    case 15: throw mproc::value_error("bad value");
    default: return which;
  }
}

// A task that runs a pool of its own (fork: a worker's own children) and passes on
// what its task raised.
int nested_pool(int which) {
  mproc::Pool inner({.processes = 1, .method = mproc::start_method::fork});
  if (which == 0) return inner.apply(throw_quota, 3);
  if (which == 1) return inner.apply(throw_unregistered, 0);
  return inner.apply(+[](int) -> int {
    ::raise(SIGKILL);
    return 0;
  }, 0);
}

template <class E>
E caught(auto&& call) {
  try {
    call();
  } catch (const E& e) {
    CHECK(typeid(e) == typeid(E));
    return e;
  } catch (const std::exception& e) {
    FAIL("caught " << mproc::detail::demangle(typeid(e)) << ": " << e.what());
  }
  FAIL("nothing thrown");
  throw std::logic_error("unreachable");
}

}  // namespace

TEST_CASE("task exceptions keep their type under every start method", "[pool][exceptions]") {
  const auto method = GENERATE(mproc::start_method::fork, mproc::start_method::spawn,
                               mproc::start_method::forkserver);
  INFO("start method " << mproc::to_string(method));
  mproc_test::ensure_init();
  mproc::Pool pool({.processes = 2, .method = method});

  SECTION("registered types") {
    auto q = caught<app::quota_exceeded>([&] { pool.apply(throw_quota, 5); });
    CHECK(std::string(q.what()) == "quota of 5 exceeded");
    auto f = caught<app::no_message_ctor>([&] { pool.apply(throw_fixed, 0); });
    CHECK(std::string(f.what()) == "fixed text");
    // in a map too, and through as_completed
    caught<app::quota_exceeded>([&] { pool.map(throw_quota, std::vector<int>{1, 2, 3}); });
    std::vector<mproc::AsyncResult<int>> rs;
    rs.push_back(pool.apply_async(throw_quota, 9));
    for (auto& r : mproc::as_completed(rs, 60s))
      caught<app::quota_exceeded>([&] { (void)r.get(); });
  }
  SECTION("unregistered types arrive as remote_error with their type name") {
    auto e = caught<mproc::remote_error>([&] { pool.apply(throw_unregistered, 0); });
    CHECK(e.type_name() == "app::unregistered_error");
    CHECK(std::string(e.what()) == "not registered");
    CHECK(e.pid() > 0);
    CHECK(e.pid() != ::getpid());
  }
  SECTION("std::system_error keeps its code, category and message") {
    auto s = caught<std::system_error>([&] { pool.apply(throw_system, ENOENT); });
    CHECK(s.code().value() == ENOENT);
    CHECK(s.code().category() == std::system_category());
    CHECK(std::string(s.what()) ==
          std::system_error(ENOENT, std::system_category(), "open(/nonexistent)").what());
    auto g = caught<std::system_error>([&] { pool.apply(throw_generic, int(std::errc::io_error)); });
    CHECK(g.code() == std::errc::io_error);
    CHECK(g.code().category() == std::generic_category());
    auto r = caught<std::system_error>([&] { pool.apply(real_system_error, 0); });
    CHECK(r.code().value() == EBADF);
    CHECK(std::string(r.what()).find("close(-1)") != std::string::npos);
  }
  SECTION("every mproc error keeps its type and fields") {
    caught<mproc::lock_error>([&] { pool.apply(raise_mproc_error, 0); });
    caught<mproc::broken_barrier_error>([&] { pool.apply(raise_mproc_error, 1); });
    caught<mproc::queue_empty>([&] { pool.apply(raise_mproc_error, 2); });
    CHECK(std::string(caught<mproc::timeout_error>([&] { pool.apply(raise_mproc_error, 3); }).what()) ==
          "task gave up");
    caught<mproc::manager_error>([&] { pool.apply(raise_mproc_error, 4); });
    caught<mproc::state_error>([&] { pool.apply(raise_mproc_error, 5); });
    auto d = caught<mproc::worker_died>([&] { pool.apply(raise_mproc_error, 6); });
    CHECK(d.pid() == 77);
    CHECK(d.exitcode() == -9);
    CHECK(d.signal() == 9);
    CHECK(std::string(d.what()) == "inner worker 77 died");
    caught<mproc::cancelled_error>([&] { pool.apply(raise_mproc_error, 7); });
    caught<mproc::serialization_error>([&] { pool.apply(raise_mproc_error, 8); });
    caught<mproc::pool_not_running>([&] { pool.apply(raise_mproc_error, 9); });
    caught<mproc::eof_error>([&] { pool.apply(raise_mproc_error, 10); });
    caught<mproc::authentication_error>([&] { pool.apply(raise_mproc_error, 11); });
    caught<mproc::start_method_error>([&] { pool.apply(raise_mproc_error, 12); });
    caught<mproc::queue_full>([&] { pool.apply(raise_mproc_error, 13); });
    caught<mproc::error>([&] { pool.apply(raise_mproc_error, 14); });
    caught<mproc::value_error>([&] { pool.apply(raise_mproc_error, 15); });
  }
  SECTION("errors from a task's own pool pass through with their type and fields") {
    caught<app::quota_exceeded>([&] { pool.apply(nested_pool, 0); });
    auto u = caught<mproc::remote_error>([&] { pool.apply(nested_pool, 1); });
    CHECK(u.type_name() == "app::unregistered_error");
    auto d = caught<mproc::worker_died>([&] { pool.apply(nested_pool, 2); });
    CHECK(d.signal() == SIGKILL);
    CHECK(d.exitcode() == -SIGKILL);
    CHECK(d.pid() > 0);
    CHECK(d.pid() != ::getpid());
  }
  REQUIRE(pool.apply(raise_mproc_error, 99) == 99);  // the pool is fine
}
