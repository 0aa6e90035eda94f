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

void exit_with(int code) { std::exit(code); }

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

TEST_CASE("spawn and forkserver without init raise a clear start_method_error", "[context]") {
  if (mproc::initialized()) SUCCEED("init already ran in this process");
  else {
    auto expect_missing_init = [](auto&& start, const char* method) {
      try {
        start();
        FAIL("no exception");
      } catch (const mproc::start_method_error& e) {
        std::string what = e.what();
        CHECK_THAT(what, Catch::Contains(method));
        CHECK_THAT(what, Catch::Contains("mproc::init(argc, argv)"));
      }
    };
    mproc::Process by_option({.name = "s", .daemon = false, .method = mproc::start_method::spawn},
                             exit_with, 3);
    expect_missing_init([&] { by_option.start(); }, "'spawn'");
    CHECK_THROWS_AS(by_option.pid(), mproc::state_error);  // nothing was started

    mproc::set_start_method(mproc::start_method::forkserver);
    mproc::Process by_default(exit_with, 0);
    expect_missing_init([&] { by_default.start(); }, "'forkserver'");
    mproc::set_start_method(mproc::start_method::fork);
    by_default.start();  // the failed attempt left the object usable
    CHECK(by_default.join(10s));
    CHECK(by_default.exitcode() == 0);
    CHECK(mproc::active_children().empty());
  }
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

// ---- spawn and forkserver
//
// The test executable's main is Catch's, which does not call mproc::init. A child
// spawned from this executable must still enter through init before Catch's main runs:
// this static initializer does it when (and only when) the process is such a child.
// It is defined last, so everything it uses in this file is already constructed.
namespace {

std::vector<std::string> own_cmdline() {
  std::vector<std::string> out;
  std::FILE* f = std::fopen("/proc/self/cmdline", "rb");
  if (!f) return out;
  std::string cur;
  for (int c; (c = std::fgetc(f)) != EOF;) {
    if (c == 0) {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += char(c);
    }
  }
  std::fclose(f);
  return out;
}

void init_from_cmdline() {
  static std::vector<std::string> args = own_cmdline();
  static std::vector<char*> argv;
  argv.clear();
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  mproc::init(int(args.size()), argv.data());
}

const bool spawned_child_entered = [] {
  if (std::getenv("MPROC_SPAWN")) init_from_cmdline();  // never returns in a child
  return false;
}();

}  // namespace
