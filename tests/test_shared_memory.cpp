// SharedMemory (create/attach/close/unlink, names, modes, errors, sharing with
// children of every start method) and the resource tracker that removes segments a
// program leaves behind, even when it is SIGKILLed.
#include <catch2/catch.hpp>

#include "spawn_entry.hpp"
#include "test_support.hpp"

#include <mproc/detail/posix/fork.hpp>
#include <mproc/pool.hpp>
#include <mproc/process.hpp>
#include <mproc/shared_memory.hpp>

#include <chrono>
#include <csignal>
#include <cstring>
#include <dirent.h>
#include <poll.h>
#include <set>
#include <spawn.h>
#include <string>
#include <sys/stat.h>
#include <thread>
#include <vector>

#ifndef MPROC_TEST_HELPER_DIR
#error "MPROC_TEST_HELPER_DIR must name the directory holding the test helpers"
#endif

using namespace std::chrono_literals;
namespace d = mproc::detail;

extern char** environ;

using mproc_test::count_fds;
using mproc_test::join_child;
using mproc_test::join_process;
using mproc_test::with_method;

namespace {

void populate_in_child(mproc::SharedMemory shm) {
  // The child faults the shared pages in separately; populate does it in one call.
  if (!shm.populate(4000, 100000)) std::exit(2);
  if (!shm.populate(0, SIZE_MAX) || !shm.populate(5u << 20)) std::exit(3);
  if (shm.as<int>()[1000] != 42) std::exit(4);
  shm.as<int>()[2000] = 7;
}

void expect_tracker(int pid) {
  if (d::resource_tracker::instance().ensure_running() != pid) std::exit(2);
}

void write_by_name_and_handle(mproc::SharedMemory shm, std::string name) {
  mproc::SharedMemory mine(name);  // attach by name, as an unrelated process would
  auto v = mine.as<int>();
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = int(i) * 10;
  shm.as<int>()[0] = 7;  // the handle passed as an argument maps the same memory
}

/// A pool task: creates a segment, leaves it to the caller (no unlink) and reports the
/// name and the tracker its worker uses.
std::pair<std::string, int> make_segment_in_task(int value) {
  mproc::SharedMemory shm(mproc::create, sizeof(int));
  shm.as<int>()[0] = value;
  return {shm.name(), int(d::resource_tracker::instance().ensure_running())};
}

std::set<std::string> list_dir(const char* path) {
  std::set<std::string> out;
  DIR* dir = ::opendir(path);
  while (dirent* e = ::readdir(dir))
    if (e->d_name[0] != '.') out.insert(e->d_name);
  ::closedir(dir);
  return out;
}
bool shm_exists(const std::string& name) {
  struct stat st;
  return ::stat(("/dev/shm/" + name).c_str(), &st) == 0;
}
std::string unique_name(const char* what) {
  static int counter = 0;
  return "mproc_test_" + std::string(what) + "_" + std::to_string(::getpid()) + "_" +
         std::to_string(++counter);
}

/// Reads from fd until `stop` returns true on what was read so far, EOF, or timeout.
template <class Stop>
std::string read_until(int fd, std::chrono::milliseconds timeout, Stop stop) {
  std::string out;
  auto end = std::chrono::steady_clock::now() + timeout;
  while (!stop(out)) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    pollfd p{fd, POLLIN, 0};
    if (d::retry_eintr([&] { return ::poll(&p, 1, static_cast<int>(left.count())); }) <= 0) break;
    char buf[512];
    ssize_t n = d::retry_eintr([&] { return ::read(fd, buf, sizeof buf); });
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

struct helper_run {
  pid_t pid;
  d::unique_fd out, err;
};

helper_run spawn_leaker(const std::string& name, const char* mode) {
  int o[2], e[2];
  REQUIRE(::pipe2(o, O_CLOEXEC) == 0);
  REQUIRE(::pipe2(e, O_CLOEXEC) == 0);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, o[1], 1);
  posix_spawn_file_actions_adddup2(&fa, e[1], 2);
  std::string path = std::string(MPROC_TEST_HELPER_DIR) + "/shm_leaker";
  std::vector<char*> argv{path.data(), const_cast<char*>(name.c_str()), const_cast<char*>(mode), nullptr};
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, path.c_str(), &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  ::close(o[1]);
  ::close(e[1]);
  REQUIRE(rc == 0);
  return {pid, d::unique_fd(o[0]), d::unique_fd(e[0])};
}

}  // namespace

TEST_CASE("SharedMemory with a generated name") {
  auto before = list_dir("/dev/shm");
  {
    mproc::SharedMemory shm(mproc::create, 10000);
    const std::string& n = shm.name();
    CHECK(n.size() == 22);
    CHECK(n.rfind("mproc_", 0) == 0);
    CHECK(n.find_first_not_of("0123456789abcdef", 6) == std::string::npos);
    CHECK(shm.size() == 10000);
    CHECK(shm.buf().size() == 10000);
    CHECK(shm_exists(shm.name()));
    struct stat st;
    REQUIRE(::stat(("/dev/shm/" + shm.name()).c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
    CHECK(std::to_integer<int>(shm.buf()[9999]) == 0);  // zero-filled
    mproc::SharedMemory other(mproc::create, 10);
    CHECK(other.name() != shm.name());
    other.unlink();
    shm.unlink();
    CHECK_FALSE(shm_exists(shm.name()));
    // Still mapped after unlink, as in Python.
    shm.buf()[0] = std::byte{1};
  }
  CHECK(list_dir("/dev/shm") == before);
}

TEST_CASE("SharedMemory create, attach, close, unlink") {
  std::string name = unique_name("basic");
  auto before = list_dir("/dev/shm");
  std::size_t fds = count_fds();
  {
    mproc::SharedMemory created(mproc::create, 40, name);
    CHECK(created.name() == name);
    auto v = created.as<double>();
    REQUIRE(v.size() == 5);
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = 1.1 * double(i + 1);
    created.close();
    CHECK(created.closed());
    CHECK_THROWS_AS(created.buf(), mproc::state_error);
    created.close();  // idempotent

    mproc::SharedMemory attached(name);
    CHECK(attached.size() == 40);
    CHECK(attached.as<double>()[4] == 1.1 * 5);
    mproc::SharedMemory with_slash("/" + name);
    CHECK(with_slash.name() == name);
    CHECK(with_slash.as<double>()[0] == 1.1);

    // A copy is the same mapping: closing it closes both.
    mproc::SharedMemory copy = attached;
    CHECK(copy.buf().data() == attached.buf().data());
    copy.close();
    CHECK(attached.closed());

    created.unlink();  // allowed after close, as in Python
    CHECK_FALSE(shm_exists(name));
    try {
      attached.unlink();
      FAIL("second unlink must fail");
    } catch (const std::system_error& e) {
      CHECK(e.code() == std::errc::no_such_file_or_directory);
      CHECK_THAT(e.what(), Catch::Contains("shm_unlink") && Catch::Contains(name));
    }
  }
  CHECK(count_fds() == fds);
  CHECK(list_dir("/dev/shm") == before);
}

TEST_CASE("SharedMemory errors name the call and the segment") {
  std::string name = unique_name("errors");
  mproc::SharedMemory shm(mproc::create, 4096, name);
  try {
    mproc::SharedMemory again(mproc::create, 4096, name);
    FAIL("creating an existing name must fail");
  } catch (const std::system_error& e) {
    CHECK(e.code() == std::errc::file_exists);
    CHECK_THAT(e.what(), Catch::Contains("shm_open") && Catch::Contains(name));
  }
  shm.unlink();
  shm.close();
  try {
    mproc::SharedMemory missing(name);
    FAIL("attaching a missing name must fail");
  } catch (const std::system_error& e) {
    CHECK(e.code() == std::errc::no_such_file_or_directory);
    CHECK_THAT(e.what(), Catch::Contains("shm_open") && Catch::Contains(name));
  }
  CHECK_THROWS_AS(mproc::SharedMemory(mproc::create, 0), mproc::value_error);
  CHECK_THROWS_AS(mproc::SharedMemory(mproc::create, 16, ""), mproc::value_error);
  CHECK_THROWS_AS(mproc::SharedMemory(mproc::create, 16, "/"), mproc::value_error);
  CHECK_THROWS_AS(mproc::SharedMemory(mproc::create, 16, "a/b"), mproc::value_error);
  CHECK_THROWS_AS(mproc::SharedMemory(mproc::create, 16, std::string(300, 'x')), mproc::value_error);
  CHECK_THROWS_AS(mproc::SharedMemory("no/such"), mproc::value_error);

  CHECK_THROWS_AS(shm.populate(), mproc::state_error);  // unlinked is fine, closed is not
  mproc::SharedMemory odd(mproc::create, 12);
  CHECK_THROWS_AS(odd.as<double>(), mproc::value_error);
  CHECK(odd.as<double>(1).size() == 1);
  CHECK_THROWS_AS(odd.as<double>(2), mproc::value_error);
  CHECK(odd.as<std::uint32_t>().size() == 3);
  odd.unlink();
}

TEST_CASE("SharedMemory populate maps pages without changing them") {
  auto method = MPROC_TEST_EACH_START_METHOD();
  INFO("start method " << mproc::to_string(method));
  mproc_test::ensure_init();
  mproc::SharedMemory shm(mproc::create, 1 << 20);
  shm.as<int>()[1000] = 42;
  mproc::Process k(with_method(method), populate_in_child, shm);
  k.start();
  CHECK(join_process(k) == 0);
  CHECK(shm.as<int>()[2000] == 7);
  shm.unlink();
}

TEST_CASE("SharedMemory shared with a child process") {
  auto method = MPROC_TEST_EACH_START_METHOD();
  INFO("start method " << mproc::to_string(method));
  mproc_test::ensure_init();
  std::string name = unique_name("child");
  mproc::SharedMemory shm(mproc::create, 4 * sizeof(int), name);
  mproc::Process k(with_method(method), write_by_name_and_handle, shm, name);
  k.start();
  CHECK(join_process(k) == 0);
  auto v = shm.as<int>();
  CHECK(v[0] == 7);
  CHECK(v[3] == 30);
  shm.unlink();
}

TEST_CASE("The tracker removes a segment whose creator was SIGKILLed") {
  std::string name = unique_name("killed");
  helper_run h = spawn_leaker(name, "kill");
  std::string out = read_until(h.out.get(), 10s, [](const std::string& s) { return s.find("ready\n") != s.npos; });
  REQUIRE(out == "ready\n");
  CHECK(shm_exists(name));
  ::kill(h.pid, SIGKILL);
  CHECK(join_child(h.pid) == -SIGKILL);
  auto until = std::chrono::steady_clock::now() + 3s;
  while (shm_exists(name) && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(10ms);
  CHECK_FALSE(shm_exists(name));
  std::string err = read_until(h.err.get(), 5s, [](const std::string&) { return false; });
  CHECK_THAT(err, Catch::Contains("leaked shared_memory objects to clean up at shutdown") &&
                      Catch::Contains("/" + name));
  if (shm_exists(name)) ::shm_unlink(("/" + name).c_str());
}

TEST_CASE("The tracker removes a segment left at normal exit, with a warning") {
  std::string name = unique_name("exited");
  helper_run h = spawn_leaker(name, "exit");
  CHECK(join_child(h.pid) == 0);
  // The tracker holds the helper's stderr until it has cleaned up: EOF means done.
  std::string err = read_until(h.err.get(), 5s, [](const std::string&) { return false; });
  CHECK_THAT(err, Catch::Contains("There appear to be 1 leaked shared_memory objects to clean up at shutdown"));
  CHECK_THAT(err, Catch::Contains("'/" + name + "'"));
  CHECK_FALSE(shm_exists(name));
  if (shm_exists(name)) ::shm_unlink(("/" + name).c_str());
}

TEST_CASE("The tracker stays silent about unlinked segments") {
  std::string name = unique_name("clean");
  helper_run h = spawn_leaker(name, "unlink");
  CHECK(join_child(h.pid) == 0);
  std::string err = read_until(h.err.get(), 5s, [](const std::string&) { return false; });
  CHECK(err.empty());
  CHECK_FALSE(shm_exists(name));
}

TEST_CASE("The tracker is not our child and holds only its socket and stdio") {
  auto method = MPROC_TEST_EACH_START_METHOD();
  INFO("start method " << mproc::to_string(method));
  mproc_test::ensure_init();
  pid_t t = d::resource_tracker::instance().ensure_running();
  REQUIRE(t > 0);
  CHECK(::kill(t, 0) == 0);
  int status;
  CHECK(::waitpid(t, &status, WNOHANG) == -1);
  CHECK(errno == ECHILD);
  auto fds = list_dir(("/proc/" + std::to_string(t) + "/fd").c_str());
  CHECK(fds == std::set<std::string>{"0", "1", "2", "3"});
  // A child shares it: no second tracker is started.
  mproc::Process k(with_method(method), expect_tracker, int(t));
  k.start();
  CHECK(join_process(k) == 0);
}

TEST_CASE("A segment a pool task creates outlives its worker: workers share the tracker") {
  auto method = MPROC_TEST_EACH_START_METHOD();
  INFO("start method " << mproc::to_string(method));
  mproc_test::ensure_init();
  std::vector<std::pair<std::string, int>> made;
  {
    mproc::Pool pool({.processes = 2, .method = method, .max_tasks_per_child = 1});
    made = pool.map(make_segment_in_task, std::vector<int>{11, 22, 33});
    pool.close();
    pool.join();  // every worker that made one has exited
  }
  const int tracker = int(d::resource_tracker::instance().ensure_running());
  REQUIRE(made.size() == 3);
  for (std::size_t i = 0; i < made.size(); ++i) {
    CHECK(made[i].second == tracker);
    mproc::SharedMemory seg(made[i].first);  // still there
    CHECK(seg.as<int>()[0] == 11 * int(i + 1));
    seg.unlink();
  }
}
