// mproc::Process: exit codes, names, lifecycle errors, reaping, death with the parent.
#include <algorithm>
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <dirent.h>
#include <fstream>
#include <memory>
#include <poll.h>
#include <spawn.h>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <mproc/connection.hpp>
#include <mproc/process.hpp>

#ifndef MPROC_TEST_HELPER_DIR
#error "MPROC_TEST_HELPER_DIR must name the directory holding the test helper programs"
#endif

extern char** environ;

using namespace std::chrono_literals;

namespace {

int count_fds() {
  int n = 0;
  DIR* d = ::opendir("/proc/self/fd");
  while (auto* e = ::readdir(d))
    if (e->d_name[0] != '.') ++n;
  ::closedir(d);
  return n - 1;  // the DIR's own descriptor
}

/// State letter from /proc/<pid>/stat, or 0 when the process does not exist.
char proc_state(pid_t pid, pid_t* ppid = nullptr) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string s;
  if (!std::getline(f, s)) return 0;
  auto rp = s.rfind(')');
  if (rp == std::string::npos) return 0;
  std::istringstream rest(s.substr(rp + 2));
  char state = 0;
  int pp = 0;
  rest >> state >> pp;
  if (ppid) *ppid = pp;
  return state;
}

bool is_dead(pid_t pid) {
  char st = proc_state(pid);
  return st == 0 || st == 'Z' || st == 'X';
}

bool wait_dead(pid_t pid, std::chrono::milliseconds limit) {
  auto end = std::chrono::steady_clock::now() + limit;
  while (!is_dead(pid)) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(10ms);
  }
  return true;
}

/// Children of this process (zombies only, if asked).
std::vector<pid_t> children(bool zombies_only) {
  std::vector<pid_t> out;
  DIR* d = ::opendir("/proc");
  while (auto* e = ::readdir(d)) {
    pid_t pid = std::atoi(e->d_name);
    if (pid <= 0) continue;
    pid_t ppid = 0;
    char st = proc_state(pid, &ppid);
    if (ppid == ::getpid() && (!zombies_only || st == 'Z')) out.push_back(pid);
  }
  ::closedir(d);
  return out;
}

std::vector<pid_t> zombie_children() { return children(true); }

struct raw_pipe {
  int r = -1, w = -1;
  raw_pipe() { REQUIRE(::pipe2(&r, O_CLOEXEC) == 0); }
  ~raw_pipe() { close_r(); close_w(); }
  void close_r() { if (r >= 0) ::close(std::exchange(r, -1)); }
  void close_w() { if (w >= 0) ::close(std::exchange(w, -1)); }
};

/// Reads everything from fd until EOF or the time limit.
std::string read_all(int fd, std::chrono::milliseconds limit) {
  std::string out;
  auto end = std::chrono::steady_clock::now() + limit;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
    if (left <= 0ms) break;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, int(left.count())) <= 0) continue;
    char buf[4096];
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, std::size_t(n));
  }
  return out;
}

/// Reads lines until `count` are complete or the time limit.
std::vector<std::string> read_lines(int fd, std::size_t count, std::chrono::milliseconds limit) {
  std::string buf;
  std::vector<std::string> lines;
  auto end = std::chrono::steady_clock::now() + limit;
  while (lines.size() < count) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
    if (left <= 0ms) break;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, int(left.count())) <= 0) continue;
    char c[256];
    ssize_t n = ::read(fd, c, sizeof c);
    if (n <= 0) break;
    buf.append(c, std::size_t(n));
    std::size_t pos;
    while ((pos = buf.find('\n')) != std::string::npos) {
      lines.push_back(buf.substr(0, pos));
      buf.erase(0, pos + 1);
    }
  }
  return lines;
}

/// Launches a helper program with its stdout on a pipe.
pid_t launch_helper(const std::string& name, int* out_fd) {
  raw_pipe p;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, p.w, 1);
  std::string path = std::string(MPROC_TEST_HELPER_DIR) + "/" + name;
  char* argv[] = {path.data(), nullptr};
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, path.c_str(), &fa, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  REQUIRE(rc == 0);
  *out_fd = std::exchange(p.r, -1);
  return pid;
}

/// waitpid with a time limit; kills the process when the limit passes.
int wait_with_limit(pid_t pid, std::chrono::milliseconds limit) {
  auto end = std::chrono::steady_clock::now() + limit;
  int status = 0;
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > end) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return -1000;
    }
    std::this_thread::sleep_for(5ms);
  }
  return mproc::detail::exitcode_from_status(status);
}

/// Kills and joins p unless it already finished, so a failed check never leaves it behind.
void cleanup(mproc::Process& p) {
  try {
    if (!p.join(0ms)) {
      p.kill();
      p.join(5s);
    }
  } catch (...) {
  }
}

/// In a child: waits until the parent closes the gate's write end. The child closes
/// its own copy first (fork copied it). Catch's handlers are inherited too: SIGTERM
/// gets its default action back so terminate() ends the child quietly.
void block_on(raw_pipe& gate) {
  std::signal(SIGTERM, SIG_DFL);
  gate.close_w();
  char c;
  while (::read(gate.r, &c, 1) < 0 && errno == EINTR) {
  }
}

}  // namespace

namespace {
int g_atexit_fd = -1;
void atexit_probe() {
  if (g_atexit_fd >= 0) [[maybe_unused]] auto n = ::write(g_atexit_fd, "X", 1);
}
const int g_atexit_registered = std::atexit(atexit_probe);

}  // namespace

TEST_CASE("exit codes follow Python's convention", "[process]") {
  SECTION("return gives 0") {
    mproc::Process p([] {});
    p.start();
    REQUIRE(p.join(10s));
    CHECK(p.exitcode() == 0);
  }
  SECTION("std::exit(N) gives N") {
    mproc::Process p([] { std::exit(3); });
    p.start();
    REQUIRE(p.join(10s));
    CHECK(p.exitcode() == 3);
  }
  SECTION("an uncaught exception gives 1") {
    mproc::Process p([] { throw std::runtime_error("boom"); });
    raw_pipe err;  // keep the expected report out of the test log
    int saved = ::dup(2);
    ::dup2(err.w, 2);
    p.start();
    ::dup2(saved, 2);
    ::close(saved);
    REQUIRE(p.join(10s));
    CHECK(p.exitcode() == 1);
  }
  SECTION("killed by a signal gives -signum") {
    mproc::Process p([] { ::raise(SIGKILL); });
    p.start();
    REQUIRE(p.join(10s));
    CHECK(p.exitcode() == -SIGKILL);
  }
  SECTION("terminate() gives -SIGTERM, kill() gives -SIGKILL") {
    raw_pipe gate;
    mproc::Process t([&] { block_on(gate); });
    mproc::Process k([&] { block_on(gate); });
    // Children inherit signal handlers (as with fork in Python): give them SIGTERM's
    // default action from the start, not Catch's reporting handler.
    auto old = std::signal(SIGTERM, SIG_DFL);
    t.start();
    k.start();
    std::signal(SIGTERM, old);
    t.terminate();
    k.kill();
    REQUIRE(t.join(10s));
    REQUIRE(k.join(10s));
    CHECK(t.exitcode() == -SIGTERM);
    CHECK(k.exitcode() == -SIGKILL);
    t.terminate();  // after the child is gone: no-op, never a stray signal
    k.kill();
  }
  CHECK(zombie_children().empty());
}

TEST_CASE("an uncaught exception is reported with the process name, type and what()",
          "[process]") {
  raw_pipe err;
  int w = err.w;
  mproc::Process p({.name = "thrower"}, [w] {
    ::dup2(w, 2);
    throw std::invalid_argument("bad input");
  });
  p.start();
  REQUIRE(p.join(10s));
  err.close_w();
  CHECK(read_all(err.r, 5s) == "Process thrower:\nstd::invalid_argument: bad input\n");
  CHECK(p.exitcode() == 1);

  raw_pipe err2;
  int w2 = err2.w;
  mproc::Process q({.name = "int-thrower"}, [w2] {
    ::dup2(w2, 2);
    throw 42;
  });
  q.start();
  REQUIRE(q.join(10s));
  err2.close_w();
  CHECK(read_all(err2.r, 5s) == "Process int-thrower:\nint\n");
}

TEST_CASE("std::exit in a child does not run the parent's atexit handlers", "[process]") {
  REQUIRE(g_atexit_registered == 0);
  raw_pipe probe;
  int w = probe.w;
  mproc::Process p([w] {
    g_atexit_fd = w;  // the child's copy; the parent's stays -1
    std::exit(5);
  });
  p.start();
  REQUIRE(p.join(10s));
  probe.close_w();
  CHECK(p.exitcode() == 5);
  CHECK(read_all(probe.r, 5s).empty());
}

TEST_CASE("join with a timeout, is_alive, exitcode while running", "[process]") {
  raw_pipe gate;
  mproc::Process p([&] { block_on(gate); });
  CHECK_FALSE(p.is_alive());
  CHECK_FALSE(p.exitcode().has_value());
  p.start();
  CHECK(p.is_alive());
  CHECK_FALSE(p.join(50ms));
  CHECK_FALSE(p.join(std::chrono::duration<double>(0.01)));
  CHECK_FALSE(p.exitcode().has_value());
  CHECK(p.pid() > 0);
  CHECK(p.sentinel() >= 0);
  gate.close_w();
  REQUIRE(p.join(std::chrono::hours::max()));  // "forever", not an overflowed deadline
  CHECK_FALSE(p.is_alive());
  CHECK(p.exitcode() == 0);
  CHECK(p.join(0s));
  p.join();  // joining again is fine
  cleanup(p);
}

TEST_CASE("names, current_process and parent_process", "[process]") {
  CHECK(mproc::current_process().name == "MainProcess");
  CHECK(mproc::current_process().pid == ::getpid());
  CHECK_FALSE(mproc::parent_process().has_value());

  mproc::Process a([] {});
  mproc::Process b([] {});
  REQUIRE(a.name().rfind("Process-", 0) == 0);
  int na = std::stoi(a.name().substr(8));
  CHECK(b.name() == "Process-" + std::to_string(na + 1));
  mproc::Process named({.name = "worker-x"}, [] {});
  CHECK(named.name() == "worker-x");
  mproc::Process c([] {});  // a named process still takes a number, as in Python
  CHECK(c.name() == "Process-" + std::to_string(na + 3));

  // In the child: its own name, its parent, and names of its own children.
  auto [rx, tx] = mproc::Pipe(false);
  mproc::Process d([tx = tx]() mutable {
    auto me = mproc::current_process();
    auto parent = mproc::parent_process();
    mproc::Process grandchild([] {});
    mproc::Process grandchild2([tx]() mutable { tx.send(mproc::current_process().name); });
    grandchild2.start();
    grandchild2.join();
    tx.send(std::tuple{me.name, int(me.pid), parent ? parent->name : std::string("none"),
                       parent ? int(parent->pid) : -1, grandchild.name()});
  });
  d.start();
  const std::string dn = d.name();
  auto gc2 = rx.recv<std::string>(10s);
  auto [name, pid, pname, ppid, gcname] = rx.recv<std::tuple<std::string, int, std::string, int, std::string>>(10s);
  REQUIRE(d.join(10s));
  CHECK(d.exitcode() == 0);
  CHECK(name == dn);
  CHECK(pid == d.pid());
  CHECK(pname == "MainProcess");
  CHECK(ppid == ::getpid());
  CHECK(gcname == dn.substr(8).insert(0, "Process-") + ":1");
  CHECK(gc2 == dn + ":2");
}

TEST_CASE("misuse raises state_error", "[process]") {
  mproc::Process p([] {});
  CHECK_THROWS_AS(p.join(), mproc::state_error);
  CHECK_THROWS_AS(p.join(1s), mproc::state_error);
  CHECK_THROWS_AS(p.pid(), mproc::state_error);
  CHECK_THROWS_AS(p.terminate(), mproc::state_error);
  p.start();
  CHECK_THROWS_AS(p.start(), mproc::state_error);
  CHECK_THROWS_AS(p.set_daemon(true), mproc::state_error);
  REQUIRE(p.join(10s));
  p.close();
  p.close();  // idempotent
  CHECK_THROWS_AS(p.join(), mproc::state_error);
  CHECK_THROWS_AS(p.is_alive(), mproc::state_error);
  CHECK_THROWS_AS(p.exitcode(), mproc::state_error);
  CHECK_THROWS_AS(p.start(), mproc::state_error);
  CHECK_THROWS_WITH(p.kill(), Catch::Contains("closed"));

  raw_pipe gate;
  mproc::Process running([&] { block_on(gate); });
  running.start();
  CHECK_THROWS_AS(running.close(), mproc::state_error);
  CHECK_THROWS_WITH(running.close(), Catch::Contains("still running"));
  gate.close_w();
  REQUIRE(running.join(10s));
  running.close();

  mproc::Process src([] {});
  mproc::Process dst = std::move(src);
  CHECK_THROWS_WITH(src.start(), Catch::Contains("moved-from"));  // NOLINT(bugprone-use-after-move)
  dst.start();
  CHECK(dst.join(10s));
}

TEST_CASE("a child cannot join its parent's other children", "[process]") {
  raw_pipe gate;
  mproc::Process sibling([&] { block_on(gate); });
  sibling.start();
  raw_pipe result;
  int w = result.w;
  mproc::Process checker([&sibling, w] {
    char verdict = 'n';
    try {
      sibling.join(10ms);
    } catch (const mproc::state_error&) {
      verdict = 'y';
    }
    [[maybe_unused]] auto n = ::write(w, &verdict, 1);
  });
  checker.start();
  REQUIRE(checker.join(10s));
  result.close_w();
  CHECK(read_all(result.r, 5s) == "y");
  gate.close_w();
  REQUIRE(sibling.join(10s));
}

TEST_CASE("any callable with copied arguments; handles are shared with the child",
          "[process]") {
  auto [a, b] = mproc::Pipe();
  std::vector<int> data{1, 2, 3};
  std::string label = "sum";
  struct functor {
    int base;
    void operator()(mproc::Connection c, const std::vector<int>& v, const std::string& l) {
      int s = base;
      for (int x : v) s += x;
      c.send(std::pair{l, s});
    }
  };
  mproc::Process p(functor{10}, b, data, label);
  data.push_back(100);  // copied at construction: the child never sees this
  p.start();
  auto got = a.recv<std::pair<std::string, int>>(10s);
  CHECK(got.first == "sum");
  CHECK(got.second == 16);
  REQUIRE(p.join(10s));
  CHECK(p.exitcode() == 0);

  auto lambda_with_capture = [data] { std::exit(int(data.size())); };
  mproc::Process q(lambda_with_capture);
  q.start();
  REQUIRE(q.join(10s));
  CHECK(q.exitcode() == 4);
}

TEST_CASE("move-only arguments reach a target taking them by value", "[process]") {
  auto code = std::make_unique<int>(21);
  mproc::Process p([](std::unique_ptr<int> c) { std::exit(*c); }, std::move(code));
  p.start();
  REQUIRE(p.join(10s));
  CHECK(p.exitcode() == 21);
}

TEST_CASE("with SIGCHLD ignored the kernel reaps children: join returns, the code is unknown",
          "[process]") {
  auto old = std::signal(SIGCHLD, SIG_IGN);
  mproc::Process p([] { std::exit(3); });
  p.start();
  bool joined = p.join(10s);
  auto code = p.exitcode();
  bool alive = p.is_alive();
  std::signal(SIGCHLD, old);
  CHECK(joined);
  CHECK_FALSE(code.has_value());
  CHECK_FALSE(alive);
  CHECK(mproc::active_children().empty());
}

TEST_CASE("std::vector<Process> of movable processes", "[process]") {
  std::vector<mproc::Process> ps;
  for (int i = 0; i < 5; ++i) ps.emplace_back([i] { std::exit(i + 10); });
  for (auto& p : ps) p.start();
  auto more = std::move(ps);
  for (std::size_t i = 0; i < more.size(); ++i) {
    REQUIRE(more[i].join(10s));
    CHECK(more[i].exitcode() == int(i) + 10);
  }
}

TEST_CASE("no zombies: dropped processes are reaped; active_children", "[process]") {
  raw_pipe gate;
  pid_t dropped_pid;
  {
    mproc::Process p([&] { block_on(gate); });
    p.start();
    dropped_pid = p.pid();
    bool listed = false;
    for (auto& c : mproc::active_children()) listed |= c.pid == dropped_pid && c.name == p.name();
    CHECK(listed);
  }  // destroyed while running
  CHECK(proc_state(dropped_pid) != 0);
  CHECK_FALSE(is_dead(dropped_pid));
  gate.close_w();
  // It exits on its own; active_children() reaps it.
  auto end = std::chrono::steady_clock::now() + 10s;
  bool gone = false;
  while (!gone && std::chrono::steady_clock::now() < end) {
    auto kids = mproc::active_children();
    gone = std::none_of(kids.begin(), kids.end(), [&](auto& c) { return c.pid == dropped_pid; });
    if (!gone) std::this_thread::sleep_for(5ms);
  }
  CHECK(gone);
  CHECK(proc_state(dropped_pid) == 0);  // reaped, not a zombie
  CHECK(zombie_children().empty());
}

TEST_CASE("a dropped process that exited is reaped by the next start", "[process]") {
  pid_t dropped;
  {
    mproc::Process p([] {});
    p.start();
    dropped = p.pid();
  }
  // Waits until it can be reaped (WNOWAIT leaves that to start()). Not until /proc
  // shows 'Z': the leader thread is a zombie before the rest of its thread group is
  // gone (a sanitizer's thread in the child), and waitpid sees nothing until then.
  const auto reapable = [&] {
    siginfo_t info{};
    return ::waitid(P_PID, id_t(dropped), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == dropped;
  };
  auto end = std::chrono::steady_clock::now() + 10s;
  while (!reapable() && std::chrono::steady_clock::now() < end) std::this_thread::sleep_for(2ms);
  REQUIRE(reapable());
  REQUIRE(proc_state(dropped) == 'Z');  // exited, not yet reaped
  mproc::Process next([] {});
  next.start();
  CHECK(proc_state(dropped) == 0);
  REQUIRE(next.join(10s));
}

TEST_CASE("no descriptor leaks across start/join/close", "[process]") {
  { mproc::Process warm([] {}); warm.start(); warm.join(); }
  int before = count_fds();
  for (int i = 0; i < 5; ++i) {
    mproc::Process p([] {});
    p.start();
    REQUIRE(p.join(10s));
    p.close();
  }
  {
    auto [a, b] = mproc::Pipe();
    mproc::Process p([](mproc::Connection c) { c.send(1); }, b);
    p.start();
    CHECK(a.recv<int>(10s) == 1);
    REQUIRE(p.join(10s));
  }
  CHECK(count_fds() == before);
}

TEST_CASE("starting from many threads; a child outlives the thread that started it",
          "[process]") {
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([t, &ok] {
      for (int i = 0; i < 5; ++i) {
        int code = t * 10 + i;
        mproc::Process p([code] { std::exit(code); });
        p.start();
        if (p.join(20s) && p.exitcode() == code) ++ok;
      }
    });
  for (auto& th : threads) th.join();
  CHECK(ok == 20);

  // PR_SET_PDEATHSIG follows the forking thread: the library forks from a thread that
  // lives as long as the process, so the end of the starting thread kills nothing.
  raw_pipe gate;
  mproc::Process p([&] { block_on(gate); std::exit(9); });
  std::thread([&] { p.start(); }).join();
  std::this_thread::sleep_for(100ms);
  CHECK(p.is_alive());
  gate.close_w();
  REQUIRE(p.join(10s));
  CHECK(p.exitcode() == 9);
  CHECK(zombie_children().empty());
}

TEST_CASE("lifecycle is logged through log_to_stderr", "[process]") {
  raw_pipe err;
  int saved = ::dup(2);
  ::dup2(err.w, 2);
  mproc::log_to_stderr(mproc::log_level::info);
  mproc::Process p({.name = "logged"}, [] {});
  p.start();
  bool joined = p.join(10s);
  mproc::Process k({.name = "killed-one"}, [] { ::pause(); });
  k.start();
  k.kill();
  bool joined_k = k.join(10s);
  mproc::log_to_stderr(mproc::log_level::off);
  ::dup2(saved, 2);
  ::close(saved);
  err.close_w();
  std::string log = read_all(err.r, 5s);
  CHECK(joined);
  CHECK(joined_k);
  CHECK_THAT(log, Catch::Contains("started logged (pid "));
  CHECK_THAT(log, Catch::Contains("child process calling target"));
  CHECK_THAT(log, Catch::Contains("logged (pid " + std::to_string(p.pid()) + ") exited with exitcode 0"));
  CHECK_THAT(log, Catch::Contains("was killed by signal 9"));
}

TEST_CASE("cpu_count", "[process]") {
  CHECK(mproc::cpu_count() >= 1);
}

TEST_CASE("at exit, daemon children are terminated and others joined", "[process][helper]") {
  int out = -1;
  pid_t helper = launch_helper("proc_daemon_exit", &out);
  std::string text = read_all(out, 15s);
  ::close(out);
  int code = wait_with_limit(helper, 15s);
  CHECK(code == 0);
  CHECK_THAT(text, Catch::Contains("worker done"));
  std::istringstream in(text);
  pid_t daemon_pid = 0, stubborn_pid = 0;
  in >> daemon_pid >> stubborn_pid;
  REQUIRE(daemon_pid > 0);
  REQUIRE(stubborn_pid > 0);
  CHECK(wait_dead(daemon_pid, 3000ms));
  CHECK(wait_dead(stubborn_pid, 3000ms));
}

TEST_CASE("children die with a SIGKILLed parent (also grandchildren and thread-started ones)",
          "[process][helper]") {
  // Orphans are reparented to the nearest subreaper; becoming one lets the test reap
  // them (an init that never waits would otherwise keep them as zombies).
  REQUIRE(::prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
  const auto earlier = children(false);  // what earlier cases left running (a forkserver)
  const auto new_children = [&] {
    auto now = children(false);
    std::erase_if(now, [&](pid_t p) { return std::find(earlier.begin(), earlier.end(), p) != earlier.end(); });
    return now;
  };
  int out = -1;
  pid_t helper = launch_helper("proc_orphan_parent", &out);
  auto lines = read_lines(out, 5, 15s);
  ::close(out);
  REQUIRE(lines.size() == 5);
  std::vector<pid_t> kids;
  for (auto& l : lines) kids.push_back(std::atoi(l.c_str()));
  for (pid_t k : kids) CHECK_FALSE(is_dead(k));
  // What the helper double-forked (its forkserver) was adopted by this subreaper: it
  // must end with the helper too.
  for (pid_t adopted : children(false))
    if (adopted != helper && std::find(kids.begin(), kids.end(), adopted) == kids.end())
      kids.push_back(adopted);
  ::kill(helper, SIGKILL);
  CHECK(wait_with_limit(helper, 10s) == -SIGKILL);
  for (pid_t k : kids) CHECK(wait_dead(k, 3000ms));
  // A dead grandchild becomes this subreaper's child only once its own parent is gone
  // too, so reap until no child is left: one that stays alive is a survivor.
  const auto reap_until = std::chrono::steady_clock::now() + 5s;
  while (!new_children().empty() && std::chrono::steady_clock::now() < reap_until) {
    for (pid_t z : zombie_children()) ::waitpid(z, nullptr, WNOHANG);
    std::this_thread::sleep_for(10ms);
  }
  ::prctl(PR_SET_CHILD_SUBREAPER, 0);
  CHECK(new_children().empty());
}
