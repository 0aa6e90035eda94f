// mproc-test-timeout: 400
// Signals: Ctrl-C (SIGINT to the whole process group) and SIGTERM (to the program, or
// to the group as a service manager sends it) in the middle of a long Pool.map, under
// every start method, and blocking calls under a storm of signal handlers without
// SA_RESTART. The programs run are tests/helpers/signal_*.cpp, each in its own process
// group; this test process is a child subreaper, so whatever the program leaves behind
// becomes visible (and reapable) here.
#include <catch2/catch.hpp>

#include <mproc/detail/posix/fork.hpp>
#include <mproc/detail/posix/posix.hpp>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

namespace d = mproc::detail;
using namespace std::chrono_literals;

const char* const kMethods[] = {"fork", "spawn", "forkserver"};

/// A helper program running in its own process group, stdout and stderr piped here.
struct helper_run {
  pid_t pid = -1;
  d::unique_fd out, err;
  std::string out_text, err_text;
  bool out_eof = false, err_eof = false;
  int status = -1;
  bool exited = false;

  explicit helper_run(const std::vector<std::string>& args) {
    // Orphans of the helper (workers, a forkserver, the resource tracker) become our
    // children: their fate is observable and they never linger as zombies.
    ::prctl(PR_SET_CHILD_SUBREAPER, 1);
    int o[2], e[2];
    d::check(::pipe2(o, O_CLOEXEC), "pipe2");
    d::check(::pipe2(e, O_CLOEXEC), "pipe2");
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    pid = ::fork();
    if (pid == 0) {
      ::setpgid(0, 0);
      ::dup2(o[1], 1);
      ::dup2(e[1], 2);
      // The test framework's handlers and mask are not the program's business.
      sigset_t none;
      sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      for (int s : {SIGINT, SIGTERM, SIGPIPE, SIGALRM, SIGUSR1}) ::signal(s, SIG_DFL);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::setpgid(pid, pid);  // also here, so a signal to the group cannot race the child's call
    ::close(o[1]);
    ::close(e[1]);
    out.reset(o[0]);
    err.reset(e[0]);
  }
  helper_run(const helper_run&) = delete;
  helper_run& operator=(const helper_run&) = delete;
  ~helper_run() {
    if (!exited && pid > 0) {
      ::kill(-pid, SIGKILL);
      d::waitpid_eintr(pid, &status, 0);
    }
  }

  /// Reads what is available on both pipes for up to `ms`.
  void pump(int ms) {
    pollfd p[2] = {{out_eof ? -1 : out.get(), POLLIN, 0}, {err_eof ? -1 : err.get(), POLLIN, 0}};
    if (d::poll_until(p, 2, d::monotonic_ns() + std::int64_t(ms) * 1'000'000) <= 0) return;
    char buf[4096];
    for (int i = 0; i < 2; ++i) {
      if (!(p[i].revents & (POLLIN | POLLHUP))) continue;
      ssize_t n = d::retry_eintr([&] { return ::read(p[i].fd, buf, sizeof buf); });
      if (n > 0) (i ? err_text : out_text).append(buf, std::size_t(n));
      else (i ? err_eof : out_eof) = true;
    }
  }

  /// Waits until stdout holds `line`; false after `timeout` or at EOF.
  bool wait_for_line(const std::string& line, std::chrono::milliseconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (out_text.find(line + "\n") == std::string::npos) {
      if (out_eof || std::chrono::steady_clock::now() > end) return false;
      pump(100);
    }
    return true;
  }

  /// Waits for the program to exit and for both pipes to close (every process that
  /// inherited them is gone). False on timeout.
  bool finish(std::chrono::milliseconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (!exited) {
      pid_t r = d::waitpid_eintr(pid, &status, WNOHANG);
      if (r == pid) {
        exited = true;
        break;
      }
      if (std::chrono::steady_clock::now() > end) return false;
      pump(20);
    }
    while (!out_eof || !err_eof) {
      if (std::chrono::steady_clock::now() > end) return false;
      pump(100);
    }
    return true;
  }

  [[nodiscard]] std::string shm_name() const {
    auto at = out_text.find("shm ");
    if (at == std::string::npos) return {};
    return out_text.substr(at + 4, out_text.find('\n', at) - at - 4);
  }
};

std::string helper(const char* name) { return std::string(MPROC_TEST_HELPER_DIR) + "/" + name; }

/// Processes still in process group `pgid`, reaping those that ended as our orphans.
std::vector<std::string> group_members(pid_t pgid) {
  int st;
  while (::waitpid(-1, &st, WNOHANG) > 0) {
  }
  std::vector<std::string> found;
  DIR* dir = ::opendir("/proc");
  while (dirent* e = ::readdir(dir)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    std::ifstream f(std::string("/proc/") + e->d_name + "/stat");
    std::string line;
    if (!std::getline(f, line)) continue;
    auto close = line.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(line.substr(close + 2));
    std::string state;
    long ppid = 0, pgrp = 0;
    rest >> state >> ppid >> pgrp;
    if (pgrp == pgid) found.push_back(std::string(e->d_name) + " state " + state + " ppid " + std::to_string(ppid));
  }
  ::closedir(dir);
  return found;
}

/// Waits up to 10 s for the group to be empty and the segment to be removed.
void check_nothing_left(pid_t pgid, const std::string& shm) {
  std::vector<std::string> left;
  bool shm_left = true;
  for (int i = 0; i < 100; ++i) {
    left = group_members(pgid);
    struct stat sb;
    shm_left = !shm.empty() && ::stat(("/dev/shm/" + shm).c_str(), &sb) == 0;
    if (left.empty() && !shm_left) break;
    ::usleep(100'000);
  }
  INFO("processes of the program still present: " << left.size());
  for (auto& l : left) UNSCOPED_INFO(l);
  CHECK(left.empty());
  INFO("segment " << shm);
  CHECK_FALSE(shm_left);
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);)
    if (!l.empty()) out.push_back(l);
  return out;
}

}  // namespace

TEST_CASE("a signal's default action ends a program in the middle of Pool.map, leaving nothing",
          "[signals]") {
  struct scenario {
    int sig;
    bool group;
  };
  for (const char* method : kMethods) {
    for (scenario sc : {scenario{SIGINT, true}, scenario{SIGTERM, false}}) {
      INFO(method << ": " << ::sigabbrev_np(sc.sig) << (sc.group ? " to the process group" : " to the program"));
      helper_run run({helper("signal_map"), method, "default"});
      REQUIRE(run.wait_for_line("ready", 60s));
      const std::string shm = run.shm_name();
      REQUIRE(!shm.empty());
      ::kill(sc.group ? -run.pid : run.pid, sc.sig);
      REQUIRE(run.finish(20s));
      INFO("stdout:\n" << run.out_text << "stderr:\n" << run.err_text);
      CHECK(WIFSIGNALED(run.status));
      CHECK(WTERMSIG(run.status) == sc.sig);
      CHECK(run.out_text.find("map finished") == std::string::npos);
      // The only lines: the resource tracker's notice that it removed the segment the
      // program could not unlink. No line from any worker.
      auto err = lines_of(run.err_text);
      CHECK(err.size() <= 2);
      for (auto& l : err) CHECK(l.rfind("mproc resource_tracker:", 0) == 0);
      check_nothing_left(run.pid, shm);
    }
  }
}

TEST_CASE("a program that takes SIGINT/SIGTERM with sigwait stops the map with pool.terminate()",
          "[signals]") {
  struct scenario {
    int sig;
    bool group;
  };
  for (const char* method : kMethods) {
    for (scenario sc : {scenario{SIGINT, true}, scenario{SIGTERM, false}, scenario{SIGTERM, true}}) {
      INFO(method << ": " << ::sigabbrev_np(sc.sig) << (sc.group ? " to the process group" : " to the program"));
      helper_run run({helper("signal_map"), method, "terminate"});
      REQUIRE(run.wait_for_line("ready", 60s));
      const std::string shm = run.shm_name();
      ::kill(sc.group ? -run.pid : run.pid, sc.sig);
      REQUIRE(run.finish(30s));
      INFO("stdout:\n" << run.out_text << "stderr:\n" << run.err_text);
      CHECK(WIFEXITED(run.status));
      CHECK(WEXITSTATUS(run.status) == 3);
      // The map raised pool_not_running (not worker_died: workers ignore the signal).
      CHECK(run.out_text.find("map stopped: Pool: terminated") != std::string::npos);
      CHECK(run.out_text.find("stopped by signal " + std::to_string(sc.sig) + "\n") != std::string::npos);
      CHECK(run.out_text.find("after 10\n") != std::string::npos);
      CHECK(run.err_text.empty());
      check_nothing_left(run.pid, shm);
    }
  }
}

TEST_CASE("blocking calls under a no-op handler firing every millisecond (no SA_RESTART)",
          "[signals][eintr]") {
  for (const char* method : kMethods) {
    INFO(method);
    helper_run run({helper("signal_storm"), method});
    REQUIRE(run.finish(90s));
    INFO("stdout:\n" << run.out_text << "stderr:\n" << run.err_text);
    CHECK(WIFEXITED(run.status));
    CHECK(WEXITSTATUS(run.status) == 0);
    CHECK(run.out_text.find("FAIL") == std::string::npos);
    CHECK(run.out_text.find("ok Pool.map\n") != std::string::npos);
    CHECK(run.out_text.find("ok Process.join() untimed\n") != std::string::npos);
    auto at = run.out_text.find("signals ");
    REQUIRE(at != std::string::npos);
    CHECK(std::stol(run.out_text.substr(at + 8)) > 200);  // the storm did happen
    CHECK(run.err_text.empty());
    check_nothing_left(run.pid, "");
  }
}

TEST_CASE("SIGKILL to the whole process group leaves no forkserver or Manager directory",
          "[signals][leftovers]") {
  helper_run run({helper("group_killed")});
  REQUIRE(run.wait_for_line("ready", 60s));
  std::vector<std::string> dirs;
  std::vector<pid_t> servers;
  for (auto& l : lines_of(run.out_text)) {
    if (l.rfind("dir ", 0) == 0) dirs.push_back(l.substr(4));
    if (l.rfind("pid ", 0) == 0) servers.push_back(pid_t(std::stol(l.substr(4))));
  }
  INFO("stdout:\n" << run.out_text);
  REQUIRE(dirs.size() == 2);
  for (auto& dir : dirs) REQUIRE(std::filesystem::is_directory(dir));
  ::kill(-run.pid, SIGKILL);  // the program and everything in its group, at once
  REQUIRE(run.finish(20s));
  CHECK(WIFSIGNALED(run.status));
  auto dirs_left = [&] {
    std::vector<std::string> left;
    for (auto& dir : dirs)
      if (std::filesystem::exists(dir)) left.push_back(dir);
    return left;
  };
  for (int i = 0; i < 100 && !dirs_left().empty(); ++i) ::usleep(100'000);
  for (auto& dir : dirs_left()) {
    CHECK(dir == "");  // named in the failure
    std::filesystem::remove_all(dir);
  }
  check_nothing_left(run.pid, "");
  // The servers, out of the group so that they can clean up, are gone too (as our
  // orphans they are reaped here).
  for (pid_t p : servers) {
    if (p <= 0) continue;
    bool gone = false;
    for (int i = 0; i < 100 && !gone; ++i) {
      d::waitpid_eintr(p, nullptr, WNOHANG);
      gone = ::kill(p, 0) != 0;
      if (!gone) ::usleep(100'000);
    }
    CHECK(gone);
  }
}
