// Start methods and start policies.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <string>

#include <mproc/context.hpp>
#include <mproc/process.hpp>

using namespace std::chrono_literals;

namespace {

/// A user-written policy: counts and logs each launch, then forks like fork_policy.
struct counting_fork_policy {
  static inline std::atomic<int> launches{0};
  static inline std::string last_name;
  static mproc::launched_child launch(const mproc::launch_request& r) {
    ++launches;
    last_name = std::string(r.name);
    mproc::detail::log(mproc::log_level::info, "launching %s", last_name.c_str());
    return mproc::fork_policy::launch(r);
  }
};

/// A policy that starts its child with its own fork() call.
struct raw_fork_policy {
  static mproc::launched_child launch(const mproc::launch_request& r) {
    pid_t pid = mproc::detail::fork_child(r.child_main);
    return {pid, {}};  // no pidfd: the library opens one
  }
};

struct not_a_policy {};

}  // namespace

static_assert(mproc::start_policy<mproc::fork_policy>);
static_assert(mproc::start_policy<mproc::dynamic_policy>);
static_assert(mproc::start_policy<counting_fork_policy>);
static_assert(!mproc::start_policy<not_a_policy>);
static_assert(!mproc::start_policy<int>);

TEST_CASE("start method setting", "[context]") {
  CHECK(mproc::get_start_method() == mproc::start_method::fork);
  auto all = mproc::get_all_start_methods();
  REQUIRE_FALSE(all.empty());
  CHECK(all.front() == mproc::start_method::fork);
  mproc::set_start_method(mproc::start_method::spawn);
  CHECK(mproc::get_start_method() == mproc::start_method::spawn);
  mproc::set_start_method(mproc::start_method::fork);
  CHECK(mproc::get_start_method() == mproc::start_method::fork);
  CHECK(std::string(mproc::to_string(mproc::start_method::forkserver)) == "forkserver");
}

TEST_CASE("init records the command line", "[context]") {
  char arg0[] = "prog";
  char arg1[] = "--flag";
  char* argv[] = {arg0, arg1, nullptr};
  mproc::init(2, argv);
  CHECK(mproc::initialized());
  CHECK(mproc::detail::bootstrap().argv == std::vector<std::string>{"prog", "--flag"});
  CHECK_FALSE(mproc::detail::bootstrap().executable.empty());
}

TEST_CASE("spawn and forkserver raise a clear start_method_error, never a silent fallback",
          "[context]") {
  auto expect_unavailable = [](auto&& start, const char* method) {
    try {
      start();
      FAIL("no exception");
    } catch (const mproc::start_method_error& e) {
      std::string what = e.what();
      CHECK_THAT(what, Catch::Contains(method));
      CHECK_THAT(what, Catch::Contains("mproc::init(argc, argv)"));
      CHECK_THAT(what, Catch::Contains("not available in this build"));
    }
  };
  mproc::Process by_option({.name = "s", .daemon = false, .method = mproc::start_method::spawn},
                           [] {});
  expect_unavailable([&] { by_option.start(); }, "'spawn'");
  CHECK_THROWS_AS(by_option.pid(), mproc::state_error);  // nothing was started

  mproc::set_start_method(mproc::start_method::forkserver);
  mproc::Process by_default([] {});
  expect_unavailable([&] { by_default.start(); }, "'forkserver'");
  mproc::set_start_method(mproc::start_method::fork);
  by_default.start();  // the failed attempt left the object usable
  CHECK(by_default.join(10s));
  CHECK(by_default.exitcode() == 0);

  mproc::basic_process<mproc::spawn_policy> fixed([] {});
  expect_unavailable([&] { fixed.start(); }, "'spawn'");
  mproc::basic_process<mproc::forkserver_policy> fixed2([] {});
  expect_unavailable([&] { fixed2.start(); }, "'forkserver'");
  CHECK(mproc::active_children().empty());
}

TEST_CASE("compile-time fork_policy and an explicit fork option", "[context]") {
  mproc::basic_process<mproc::fork_policy> p([] { std::exit(4); });
  p.start();
  REQUIRE(p.join(10s));
  CHECK(p.exitcode() == 4);
  mproc::Process q({.name = "", .daemon = false, .method = mproc::start_method::fork},
                   [] { std::exit(5); });
  q.start();
  REQUIRE(q.join(10s));
  CHECK(q.exitcode() == 5);
}

TEST_CASE("a user-written start policy plugs in", "[context]") {
  counting_fork_policy::launches = 0;
  mproc::basic_process<counting_fork_policy> p({.name = "custom"}, [](int code) { std::exit(code); },
                                               6);
  p.start();
  REQUIRE(p.join(10s));
  CHECK(p.exitcode() == 6);
  CHECK(counting_fork_policy::launches == 1);
  CHECK(counting_fork_policy::last_name == "custom");

  mproc::basic_process<raw_fork_policy> r([] { std::exit(8); });
  r.start();
  CHECK(r.sentinel() >= 0);
  REQUIRE(r.join(10s));
  CHECK(r.exitcode() == 8);
}
