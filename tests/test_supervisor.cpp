// Supervisor: restarts after abnormal exits, counts them, stops at max_restarts.
#include <catch2/catch.hpp>

#include <mproc/supervisor.hpp>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <cstdlib>
#include <string>
#include <thread>

#include <filesystem>
#include <system_error>

#include <unistd.h>

using namespace std::chrono_literals;

namespace {

// Files live in a private mkdtemp directory: a predictable name in /tmp could be
// pre-created (or be a symlink) by another user. Removed when the test process ends.
struct private_dir {
  std::string path;
  pid_t owner = ::getpid();
  private_dir() {
    char t[] = "/tmp/mproc-sup-XXXXXX";
    if (!::mkdtemp(t)) throw std::system_error(errno, std::generic_category(), "mkdtemp");
    path = t;
  }
  ~private_dir() {
    std::error_code ec;
    if (::getpid() == owner) std::filesystem::remove_all(path, ec);
  }
};

std::string unique_path(const char* tag) {
  static private_dir dir;
  static std::atomic<int> n{0};
  return dir.path + "/" + std::string(tag) + "-" + std::to_string(n++);
}

// Counts runs in a file so the count survives each child's exit.
int bump(const std::string& path) {
  int n = 0;
  {
    std::ifstream in(path);
    in >> n;
  }
  ++n;
  std::ofstream(path) << n;
  return n;
}

int read_count(const std::string& path) {
  int n = 0;
  std::ifstream in(path);
  in >> n;
  return n;
}

std::size_t live_children() {
  std::ifstream in("/proc/self/task/" + std::to_string(::getpid()) + "/children");
  std::size_t n = 0;
  std::string pid;
  while (in >> pid) ++n;
  return n;
}

void fails_k_times(std::string path, int k) {
  if (bump(path) <= k) std::exit(3);
}

}  // namespace

TEST_CASE("a target that succeeds first time needs no restart", "[supervisor]") {
  auto path = unique_path("ok");
  mproc::Supervisor sup({.max_restarts = 10, .backoff = 1ms}, fails_k_times, path, 0);
  auto out = sup.run();
  CHECK(out.succeeded);
  CHECK(out.restarts == 0);
  CHECK(out.exitcode == 0);
  CHECK(read_count(path) == 1);
  CHECK(live_children() == 0);
  std::remove(path.c_str());
}

TEST_CASE("a target failing k times is restarted k times, then succeeds", "[supervisor]") {
  auto path = unique_path("k");
  mproc::Supervisor sup({.max_restarts = 10, .backoff = 1ms}, fails_k_times, path, 4);
  auto out = sup.run();
  CHECK(out.succeeded);
  CHECK(out.restarts == 4);
  CHECK(out.exitcode == 0);
  CHECK(read_count(path) == 5);
  CHECK(live_children() == 0);
  std::remove(path.c_str());
}

TEST_CASE("a target that always fails stops after max_restarts", "[supervisor]") {
  auto path = unique_path("always");
  mproc::Supervisor sup({.max_restarts = 3, .backoff = 1ms, .backoff_multiplier = 2.0}, fails_k_times, path,
                        1000);
  auto out = sup.run();
  CHECK_FALSE(out.succeeded);
  CHECK(out.restarts == 3);
  CHECK(out.exitcode == 3);
  CHECK(read_count(path) == 4);  // the first run plus three restarts
  std::remove(path.c_str());
}

TEST_CASE("an uncaught exception counts as abnormal (exit code 1)", "[supervisor]") {
  mproc::Supervisor sup({.max_restarts = 2, .backoff = 1ms}, [] { throw std::runtime_error("boom"); });
  auto out = sup.run();
  CHECK_FALSE(out.succeeded);
  CHECK(out.restarts == 2);
  CHECK(out.exitcode == 1);
}

TEST_CASE("death by signal counts as abnormal", "[supervisor]") {
  auto path = unique_path("sig");
  mproc::Supervisor sup({.max_restarts = 5, .backoff = 1ms},
                        [](std::string p) {
                          if (bump(p) <= 2) ::raise(SIGKILL);
                        },
                        path);
  auto out = sup.run();
  CHECK(out.succeeded);
  CHECK(out.restarts == 2);
  CHECK(read_count(path) == 3);
  std::remove(path.c_str());

  mproc::Supervisor always({.max_restarts = 1, .backoff = 0ms}, [] {
    std::signal(SIGTERM, SIG_DFL);  // the test framework installs its own handler
    ::raise(SIGTERM);
  });
  auto o2 = always.run();
  CHECK_FALSE(o2.succeeded);
  CHECK(o2.restarts == 1);
  CHECK(o2.exitcode == -SIGTERM);
}

TEST_CASE("a run overrunning run_timeout is killed and counts as abnormal", "[supervisor]") {
  mproc::Supervisor sup({.max_restarts = 1, .backoff = 0ms, .run_timeout = 100ms},
                        [] { std::this_thread::sleep_for(20s); });
  auto out = sup.run();
  CHECK_FALSE(out.succeeded);
  CHECK(out.timed_out);
  CHECK(out.restarts == 1);
  CHECK(out.exitcode == -SIGKILL);
  CHECK(live_children() == 0);
}

TEST_CASE("invalid options are rejected", "[supervisor]") {
  CHECK_THROWS_AS(mproc::Supervisor({.max_restarts = -1}, [] {}), mproc::value_error);
  CHECK_THROWS_AS(mproc::Supervisor({.max_restarts = 1, .backoff = 1ms, .backoff_multiplier = 0.5}, [] {}),
                  mproc::value_error);
}

TEST_CASE("giving up is logged as 'Max restarts (N) exceeded'", "[supervisor]") {
  // Capture this process's stderr in a file while the supervisor runs.
  char path[] = "/tmp/mproc-sup-log-XXXXXX";
  int fd = ::mkstemp(path);
  REQUIRE(fd >= 0);
  std::fflush(stderr);
  int saved = ::dup(2);
  ::dup2(fd, 2);
  mproc::log_to_stderr(mproc::log_level::warning);
  mproc::Supervisor sup({.max_restarts = 2, .backoff = 0ms}, [] { std::exit(7); });
  auto out = sup.run();
  mproc::log_to_stderr(mproc::log_level::off);
  ::dup2(saved, 2);
  ::close(saved);
  ::close(fd);
  std::ifstream in(path);
  std::string log((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ::unlink(path);
  CHECK_FALSE(out.succeeded);
  CHECK(out.exitcode == 7);
  CHECK(log.find("Max restarts (2) exceeded") != std::string::npos);
  CHECK(log.find("restart 1 of 2") != std::string::npos);
  CHECK(log.find("restart 2 of 2") != std::string::npos);
}
