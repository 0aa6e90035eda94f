// mproc-test-timeout: 180
// Chaos and leak tests across the library, under every start method:
// - maps run while a thread SIGKILLs and SIGSEGVs random pool workers: every result
//   not lost to a kill is right, killed items raise worker_died, nothing hangs, and the
//   pool still works afterwards; replacements killed while they start are replaced
//   again (fork and spawn, whose workers a test thread can see appear);
// - a SIGKILLed parent holding a Pool, Queue, SharedMemory, Manager and Processes
//   leaves no process, no /dev/shm segment and no socket directory within 3 s;
// - 1,000 create/destroy cycles of Pool (under each method), Queue, Manager and
//   SharedMemory leave open descriptors, /dev/shm entries and child processes unchanged.
#include <catch2/catch.hpp>

#include "spawn_entry.hpp"
#include "test_support.hpp"

#include <mproc/mproc.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <numeric>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <dirent.h>
#include <poll.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef MPROC_TEST_HELPER_DIR
#error "MPROC_TEST_HELPER_DIR must name the directory holding the test helpers"
#endif

extern char** environ;

using namespace std::chrono_literals;
namespace d = mproc::detail;
using mproc::start_method;

namespace {

// Workers killed with SIGSEGV on purpose must not write core files (the limit is
// inherited by every child, whatever its start method).
const bool no_core_files = [] {
  rlimit rl{};
  if (::getrlimit(RLIMIT_CORE, &rl) == 0) {
    rl.rlim_cur = 0;
    ::setrlimit(RLIMIT_CORE, &rl);
  }
  return true;
}();

// ---------------------------------------------------------------- /proc helpers

struct proc_stat {
  char state = '?';
  pid_t ppid = -1;
  std::uint64_t start = 0;  // start time in clock ticks since boot: pid + start is unique
};

/// State and start time of a process; nullopt when it is gone.
std::optional<proc_stat> stat_of(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(f, line)) return std::nullopt;
  // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
  auto close = line.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream rest(line.substr(close + 1));
  proc_stat s;
  rest >> s.state >> s.ppid;
  std::string skip;
  for (int field = 5; field < 22; ++field) rest >> skip;  // pgrp ... priority, nice, ...
  rest >> s.start;
  if (!rest) return std::nullopt;
  return s;
}

std::vector<pid_t> all_pids() {
  std::vector<pid_t> out;
  DIR* dir = ::opendir("/proc");
  while (dirent* e = ::readdir(dir)) {
    char* end = nullptr;
    long v = std::strtol(e->d_name, &end, 10);
    if (end != e->d_name && *end == 0) out.push_back(pid_t(v));
  }
  ::closedir(dir);
  return out;
}

/// Direct children of this process, from /proc (zombies included).
std::set<pid_t> children() {
  std::set<pid_t> out;
  DIR* dir = ::opendir("/proc/self/task");
  while (dirent* e = ::readdir(dir)) {
    if (e->d_name[0] == '.') continue;
    std::ifstream f(std::string("/proc/self/task/") + e->d_name + "/children");
    for (pid_t p; f >> p;) out.insert(p);
  }
  ::closedir(dir);
  return out;
}
std::size_t child_count() { return children().size(); }

std::set<std::string> dev_shm() {
  std::set<std::string> out;
  DIR* dir = ::opendir("/dev/shm");
  while (dirent* e = ::readdir(dir))
    if (e->d_name[0] != '.') out.insert(e->d_name);
  ::closedir(dir);
  return out;
}

/// /dev/shm entries that appeared since `before` and are still there after up to
/// `grace` (tests running in parallel create and remove segments of their own; a
/// leaked one stays).
std::set<std::string> lasting_new_shm(const std::set<std::string>& before,
                                      std::chrono::milliseconds grace = 5s) {
  auto until = std::chrono::steady_clock::now() + grace;
  for (;;) {
    std::set<std::string> extra;
    for (auto& n : dev_shm())
      if (!before.count(n)) extra.insert(n);
    if (extra.empty() || std::chrono::steady_clock::now() > until) return extra;
    std::this_thread::sleep_for(50ms);
  }
}

bool alive(pid_t pid) {
  auto s = stat_of(pid);
  return s && s->state != 'Z' && s->state != 'X';
}

// ---------------------------------------------------------------- tasks

/// A result and the identity of the worker that computed it.
struct tagged_result {
  int value;
  int pid;
  std::uint64_t start;
};

tagged_result triple_plus_one(int x) {
  // Long enough that a signal often lands in the middle of an item.
  auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(50 + x % 200);
  while (std::chrono::steady_clock::now() < until) {
  }
  // Once per worker. A worker copied from this test process (fork, or a forkserver
  // forked from it) would run the test framework's SIGSEGV handler, which reports a
  // failure, before dying: the killer only signals workers that got here, so they die
  // of SIGSEGV as any program would.
  static const std::uint64_t start = [] {
    std::signal(SIGSEGV, SIG_DFL);
    return stat_of(::getpid()).value_or(proc_stat{}).start;
  }();
  return {3 * x + 1, int(::getpid()), start};
}

int square(int x) { return x * x; }

/// Sends SIGKILL or SIGSEGV to random pool workers until stopped. Workers are known
/// by what their results say (pid and start time): wherever a start method puts them
/// in the process tree, a worker is never confused with another process, and the
/// pidfd pins the process between the identity check and the signal.
class worker_killer {
 public:
  worker_killer() : thread_([this] { run(); }) {}
  ~worker_killer() { stop(); }
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  void saw(const tagged_result& r) {
    std::lock_guard g(m_);
    if (r.start) known_[r.pid] = r.start;
  }
  int kills() const { return kills_; }
  int segvs() const { return segvs_; }

 private:
  bool signal_worker(pid_t pid, std::uint64_t start, int sig) {
    int fd = int(::syscall(SYS_pidfd_open, pid, 0));
    if (fd < 0) return false;
    d::unique_fd pfd(fd);
    auto s = stat_of(pid);
    if (!s || s->start != start) return false;  // gone, and the pid used again
    return ::syscall(SYS_pidfd_send_signal, fd, sig, nullptr, 0) == 0;
  }
  void run() {
    std::mt19937 rng(20240611);
    while (!stop_) {
      std::this_thread::sleep_for(std::chrono::milliseconds(30 + rng() % 60));
      std::pair<pid_t, std::uint64_t> victim{-1, 0};
      {
        std::lock_guard g(m_);
        if (known_.empty()) continue;
        auto it = known_.begin();
        std::advance(it, rng() % known_.size());
        victim = *it;
        known_.erase(it);  // dead or about to be
      }
      int sig = rng() % 2 ? SIGKILL : SIGSEGV;
      if (signal_worker(victim.first, victim.second, sig)) {
        ++kills_;
        if (sig == SIGSEGV) ++segvs_;
      }
    }
  }
  std::mutex m_;
  std::map<pid_t, std::uint64_t> known_;
  std::atomic<bool> stop_{false};
  std::atomic<int> kills_{0}, segvs_{0};
  std::thread thread_;
};

}  // namespace

TEST_CASE("maps go on while random workers are SIGKILLed and SIGSEGVed", "[chaos]") {
  auto method = MPROC_TEST_EACH_START_METHOD();
  INFO("start method " << mproc::to_string(method));
  mproc_test::ensure_init();
  mproc::Pool pool({.processes = 2, .method = method});
  REQUIRE(pool.map(square, std::vector<int>{1, 2, 3}) == std::vector<int>{1, 4, 9});

  const auto deadline = std::chrono::steady_clock::now() + 4s;
  int maps_ok = 0, maps_failed = 0, items_ok = 0, items_failed = 0;
  std::mt19937 rng(7);
  worker_killer killer;
  while (std::chrono::steady_clock::now() < deadline) {
    // A map: all results right, or worker_died for an item a kill hit.
    std::vector<int> in(200);  // short enough that many maps see no kill at all
    std::iota(in.begin(), in.end(), int(rng() % 1000));
    try {
      auto out = pool.map_async(triple_plus_one, in, {.chunksize = 1 + rng() % 16}).get(60s);
      REQUIRE(out.size() == in.size());
      for (std::size_t i = 0; i < in.size(); ++i) {
        REQUIRE(out[i].value == 3 * in[i] + 1);
        killer.saw(out[i]);
      }
      ++maps_ok;
    } catch (const mproc::worker_died& e) {
      INFO("worker_died: " << e.what());
      REQUIRE((e.signal() == SIGKILL || e.signal() == SIGSEGV));
      ++maps_failed;
    }
    // Single items: each one right or worker_died on its own.
    std::vector<mproc::AsyncResult<tagged_result>> rs;
    for (int i = 0; i < 200; ++i) rs.push_back(pool.apply_async(triple_plus_one, i));
    for (int i = 0; i < 200; ++i) {
      try {
        tagged_result r = rs[i].get(60s);
        REQUIRE(r.value == 3 * i + 1);
        killer.saw(r);
        ++items_ok;
      } catch (const mproc::worker_died& e) {
        REQUIRE((e.signal() == SIGKILL || e.signal() == SIGSEGV));
        ++items_failed;
      }
    }
  }
  killer.stop();
  INFO("kills " << killer.kills() << " (SIGSEGV " << killer.segvs() << "), maps ok " << maps_ok
                << ", maps failed " << maps_failed << ", items ok " << items_ok
                << ", items failed " << items_failed);
  CHECK(killer.kills() >= 10);
  CHECK(killer.segvs() >= 1);
  CHECK(maps_failed + items_failed <= killer.kills());
  CHECK(maps_ok >= 1);
  CHECK(items_ok >= 1000);
  // Still working afterwards, with both workers.
  std::vector<int> in(1000);
  std::iota(in.begin(), in.end(), 0);
  auto out = pool.map_async(square, in).get(60s);
  for (int i = 0; i < 1000; ++i) REQUIRE(out[i] == i * i);
}

TEST_CASE("a pool survives replacement workers killed while they start", "[chaos]") {
  // Workers of these methods are this process's own children, so a thread can see each
  // replacement appear and kill it at once: before it reaches mproc::init (spawn), or
  // before it finished starting. The other worker did start, so the pool keeps
  // replacing rather than giving up as it does when no worker can start.
  auto method = GENERATE(start_method::fork, start_method::spawn);
  INFO("start method " << mproc::to_string(method));
  mproc_test::ensure_init();
  const auto others = children();
  mproc::Pool pool({.processes = 2, .method = method});
  REQUIRE(pool.map(square, std::vector<int>{1, 2, 3}) == std::vector<int>{1, 4, 9});
  std::set<pid_t> spared = children();
  const tagged_result victim_id = pool.apply(triple_plus_one, 0);
  const pid_t victim = victim_id.pid;
  REQUIRE(spared.count(victim));
  REQUIRE_FALSE(others.count(victim));
  spared.erase(victim);

  constexpr int replacements_to_kill = 6;
  std::atomic<int> sniped{0};
  std::atomic<bool> stop{false};
  std::thread sniper([&] {
    while (!stop && sniped < replacements_to_kill) {
      for (pid_t c : children()) {
        if (spared.count(c) || c == victim) continue;
        int fd = int(::syscall(SYS_pidfd_open, c, 0));
        if (fd < 0) continue;
        d::unique_fd pfd(fd);
        auto st = stat_of(c);
        if (!st || st->ppid != ::getpid() || st->state == 'Z') continue;  // reaped, or not ours
        if (::syscall(SYS_pidfd_send_signal, fd, SIGKILL, nullptr, 0) == 0) {
          spared.insert(c);  // dead now; never counted twice
          ++sniped;
        }
      }
      std::this_thread::sleep_for(200us);
    }
  });
  ::kill(victim, SIGKILL);
  auto until = std::chrono::steady_clock::now() + 30s;
  while (sniped < replacements_to_kill && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(1ms);
  stop = true;
  sniper.join();
  CHECK(sniped == replacements_to_kill);
  std::vector<int> in(500);
  std::iota(in.begin(), in.end(), 0);
  auto out = pool.map_async(square, in).get(60s);
  for (int i = 0; i < 500; ++i) REQUIRE(out[i] == i * i);
  // The victim was replaced (pids may be reused: the start time tells processes apart).
  std::set<std::pair<int, std::uint64_t>> workers;
  // The AsyncResult is kept: get() returns a reference into it, which a temporary
  // would take with it before the loop runs (ASan: heap-use-after-free).
  auto replaced = pool.map_async(triple_plus_one, std::vector<int>(200, 1), {.chunksize = 1});
  for (const auto& r : replaced.get(60s)) workers.insert({r.pid, r.start});
  CHECK_FALSE(workers.count({victim_id.pid, victim_id.start}));
}

// ---------------------------------------------------------------- SIGKILLed parent

namespace {

/// Processes whose environment holds `entry`: a program and everything it started,
/// whichever way (forked, spawned, double-forked away like the resource tracker).
std::vector<pid_t> tagged_processes(const std::string& entry) {
  std::vector<pid_t> out;
  for (pid_t p : all_pids()) {
    std::ifstream f("/proc/" + std::to_string(p) + "/environ", std::ios::binary);
    std::string env((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (env.find(entry + '\0') != std::string::npos && alive(p)) out.push_back(p);
  }
  return out;
}

struct started_helper {
  pid_t pid = -1;
  d::unique_fd out;
};

started_helper spawn_helper(const std::string& name, std::vector<std::string> args,
                            const std::string& extra_env) {
  int o[2];
  REQUIRE(::pipe2(o, O_CLOEXEC) == 0);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, o[1], 1);
  std::string path = std::string(MPROC_TEST_HELPER_DIR) + "/" + name;
  std::vector<char*> argv{path.data()};
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_store{extra_env};
  std::vector<char*> envp{env_store[0].data()};
  for (char** e = environ; *e; ++e) envp.push_back(*e);
  envp.push_back(nullptr);
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, path.c_str(), &fa, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  ::close(o[1]);
  REQUIRE(rc == 0);
  return {pid, d::unique_fd(o[0])};
}

/// Lines from fd until one equals `last`, EOF, or the timeout.
std::vector<std::string> read_lines_until(int fd, const std::string& last, std::chrono::milliseconds timeout) {
  std::string buf;
  std::vector<std::string> lines;
  auto end = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    std::size_t nl;
    while ((nl = buf.find('\n')) != std::string::npos) {
      lines.push_back(buf.substr(0, nl));
      buf.erase(0, nl + 1);
      if (lines.back() == last) return lines;
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
    if (left.count() <= 0) return lines;
    pollfd p{fd, POLLIN, 0};
    if (d::retry_eintr([&] { return ::poll(&p, 1, int(left.count())); }) <= 0) return lines;
    char chunk[512];
    ssize_t n = d::retry_eintr([&] { return ::read(fd, chunk, sizeof chunk); });
    if (n <= 0) return lines;
    buf.append(chunk, std::size_t(n));
  }
}

}  // namespace

TEST_CASE("a SIGKILLed parent leaves no process and no /dev/shm segment within 3 s", "[chaos]") {
  auto method = MPROC_TEST_EACH_START_METHOD();
  const std::string m = mproc::to_string(method);
  INFO("start method " << m);
  static int round = 0;
  const std::string tag = "MPROC_CHAOS_TAG=" + std::to_string(::getpid()) + "-" + std::to_string(++round);
  started_helper h = spawn_helper("resources_parent_killed", {m}, tag);
  auto lines = read_lines_until(h.out.get(), "ready", 60s);
  std::vector<pid_t> pids;
  std::vector<std::string> segments, dirs;
  for (auto& l : lines) {
    if (l.rfind("pid ", 0) == 0) pids.push_back(pid_t(std::atoi(l.c_str() + 4)));
    if (l.rfind("shm ", 0) == 0) segments.push_back(l.substr(4));
    if (l.rfind("dir ", 0) == 0) dirs.push_back(l.substr(4));
  }
  auto family = tagged_processes(tag);
  INFO("helper said:\n" << [&] {
    std::string s;
    for (auto& l : lines) s += l + "\n";
    return s;
  }() << "processes of its own: " << family.size());
  if (lines.empty() || lines.back() != "ready") {
    ::kill(h.pid, SIGKILL);
    mproc_test::join_child(h.pid);
    FAIL("the helper did not get ready");
  }
  REQUIRE(pids.size() == 4);  // tracker, idle, daemon, creator
  REQUIRE(segments.size() == 2);
  REQUIRE(dirs.size() == 1);
  // The helper, its tracker, 3 Processes, 2 pool workers, the Manager's server (and a
  // forkserver under that method).
  CHECK(family.size() >= 8);
  for (pid_t p : pids) CHECK(alive(p));
  for (auto& s : segments) CHECK(std::filesystem::exists("/dev/shm/" + s));

  ::kill(h.pid, SIGKILL);
  CHECK(mproc_test::join_child(h.pid) == -SIGKILL);
  const auto killed_at = std::chrono::steady_clock::now();
  auto all_gone = [&] {
    if (!tagged_processes(tag).empty()) return false;
    for (pid_t p : pids)
      if (alive(p)) return false;
    for (auto& s : segments)
      if (std::filesystem::exists("/dev/shm/" + s)) return false;
    for (auto& dir : dirs)
      if (std::filesystem::exists(dir)) return false;
    return true;
  };
  while (!all_gone() && std::chrono::steady_clock::now() - killed_at < 3s)
    std::this_thread::sleep_for(20ms);
  INFO("cleaned up after "
       << std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - killed_at)
              .count()
       << " ms");
  auto left = tagged_processes(tag);
  CHECK(left.empty());
  for (pid_t p : pids) CHECK_FALSE(alive(p));
  for (auto& s : segments) CHECK_FALSE(std::filesystem::exists("/dev/shm/" + s));
  for (auto& dir : dirs) CHECK_FALSE(std::filesystem::exists(dir));
  // Leave nothing behind for the next test even when a check failed.
  for (pid_t p : left) ::kill(p, SIGKILL);
  for (auto& s : segments) ::shm_unlink(("/" + s).c_str());
}

// ---------------------------------------------------------------- create/destroy cycles

namespace {

/// Waits until `pred()` or the timeout.
template <class Pred>
bool settles(Pred pred, std::chrono::milliseconds timeout = 5s) {
  auto until = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(10ms);
  }
  return true;
}

struct resource_snapshot {
  std::size_t fds = mproc_test::count_fds();
  std::set<std::string> shm = dev_shm();
  std::size_t children = child_count();

  void check_unchanged(const char* what) const {
    INFO("after 1,000 cycles of " << what);
    CHECK(settles([&] { return child_count() == children; }));
    CHECK(child_count() == children);
    CHECK(mproc_test::count_fds() == fds);
    CHECK(lasting_new_shm(shm).empty());
  }
};

}  // namespace

TEST_CASE("1,000 create/destroy cycles leave descriptors, /dev/shm and children unchanged",
          "[chaos][leaks]") {
  mproc_test::ensure_init();
  {  // library singletons (tracker, forkserver connection) exist from here on
    mproc::Pool p(1);
    mproc::Manager m;
    mproc::SharedMemory s(mproc::create, 64);
    s.unlink();
  }
  constexpr int cycles = 1000;
  SECTION("Pool") {
    auto method = MPROC_TEST_EACH_START_METHOD();
    INFO("start method " << mproc::to_string(method));
    { mproc::Pool warm({.processes = 1, .method = method}); }  // start-method singletons
    resource_snapshot before;
    for (int i = 0; i < cycles; ++i) {
      mproc::Pool pool({.processes = 1, .method = method});
      if (i % 10 == 0) REQUIRE(pool.apply(square, i) == i * i);  // a used pool, now and then
    }
    before.check_unchanged("Pool");
  }
  SECTION("Queue") {
    resource_snapshot before;
    for (int i = 0; i < cycles; ++i) {
      mproc::Queue<std::string> q;
      q.put(std::string(100, 'q'));
      REQUIRE(q.get(5s).size() == 100);
      mproc::Queue<int> left_full(1);
      left_full.put(i);  // destroyed holding a message
    }
    before.check_unchanged("Queue");
  }
  SECTION("Manager") {
    resource_snapshot before;
    for (int i = 0; i < cycles; ++i) {
      mproc::Manager m;
      if (i % 10 == 0) {
        auto dict = m.dict<int, int>();
        dict.set(i, i);
        REQUIRE(dict.get(i) == i);
      }
    }
    before.check_unchanged("Manager");
  }
  SECTION("SharedMemory") {
    resource_snapshot before;
    for (int i = 0; i < cycles; ++i) {
      mproc::SharedMemory created(mproc::create, 4096);
      created.as<int>()[0] = i;
      mproc::SharedMemory attached(created.name());
      REQUIRE(attached.as<int>()[0] == i);
      created.unlink();
    }
    before.check_unchanged("SharedMemory");
  }
}
