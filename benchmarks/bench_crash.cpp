// What happens when things go wrong, found by doing it: for mproc::Pool and for each
// Python executor (benchmarks/python/bench_crash.py), one row per scenario with what
// the caller gets, after how long, how many results are lost and whether the pool is
// usable afterwards.
//   kill:    the worker running item 500 of a 1,000-item imap with chunksize 10 is
//            SIGKILLed (it kills itself, once); results taken as the lazy ordered map
//            yields them, going on past errors; the caller waits at most 10 s.
//   timeout: a task that would run 20 s, bounded to 1 s by the pool's own means
//            (pool_options::task_timeout); usable: 2 x 0.2 s tasks then take < 0.35 s.
//   sigint:  Ctrl-C (SIGINT to the process group) 0.5 s into a map of 1,000 x 10 ms.
// Each scenario runs in a child process with a hard time limit, so a hang is reported,
// never suffered. Behaviour, not speed: one run each, no medians.
//
//   bench_crash [--json] [--no-python] [--quick] [--rounds N (ignored)]
#include <mproc/mproc.hpp>

#include "bench_common.hpp"

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <csignal>
#include <dirent.h>
#include <fcntl.h>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

using bench::clk;
using bench::secs_since;
using namespace std::chrono_literals;

namespace {

constexpr double kWaitLimit = 10.0;
std::string g_marker;  // creating this file claims the one kill (inherited by forked workers)
int g_kill_item = 500;  // MPROC_CRASH_ITEM overrides: another position in its chunk

int die_at_500(int x) {
  if (x == g_kill_item) {
    int fd = ::open(g_marker.c_str(), O_CREAT | O_EXCL | O_WRONLY, 0600);
    if (fd >= 0) {
      ::close(fd);
      ::kill(::getpid(), SIGKILL);
    }
  }
  std::this_thread::sleep_for(1ms);
  return x;
}
int identity(int x) { return x; }
int nap_ms(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ms;
}

struct record {
  std::string got;
  double seconds = NAN;
  std::string lost = "-";
  std::string usable = "-";
};

std::string json_record(const record& r) {
  return "{\"got\": " + bench::json_string(r.got) + ", \"seconds\": " + bench::json_number(r.seconds) +
         ", \"lost\": " + bench::json_string(r.lost) + ", \"usable\": " + bench::json_string(r.usable) + "}";
}

std::string what_of(const std::exception& e) {
  std::string s = e.what();
  return s.size() > 40 ? std::string() : ": " + s;
}

template <class E>
std::string type_of(const E& e) {
  if (dynamic_cast<const mproc::worker_died*>(&e)) return "mproc::worker_died";
  if (dynamic_cast<const mproc::timeout_error*>(&e)) return "mproc::timeout_error";
  return "std::exception";
}

/// A small map finishes within 5 s: "yes" / "no".
std::string usable(mproc::Pool& pool) {
  auto a = pool.map_async(identity, std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
  try {
    auto v = a.get(5s);
    return v.size() == 10 && v[9] == 9 ? "yes" : "no (wrong results)";
  } catch (const std::exception& e) {
    return std::string("no (") + type_of(e) + ")";
  }
}

record scenario_kill() {
  mproc::Pool pool(2);
  (void)pool.map(identity, std::vector<int>{1, 2, 3, 4});  // workers up
  std::vector<int> in(1000);
  for (int i = 0; i < 1000; ++i) in[i] = i;
  struct shared_state {
    std::mutex m;
    std::condition_variable cv;
    std::set<int> values;
    int errors = 0;
    std::string first_error;
    double first_error_at = NAN;
    bool done = false;
  };
  auto st = std::make_shared<shared_state>();
  const auto t0 = clk::now();
  // The caller's loop in a thread: a hang is observed from here, bounded.
  std::thread consumer([&pool, &in, st, t0] {
    auto results = pool.imap(die_at_500, in, 10);
    auto note_error = [&](const std::exception& e) {
      std::lock_guard l(st->m);
      if (st->errors++ == 0) {
        st->first_error = type_of(e) + what_of(e);
        st->first_error_at = secs_since(t0);
      }
    };
    try {
      auto it = results.begin();
      if (it != std::default_sentinel) {
        std::lock_guard l(st->m);
        st->values.insert(*it);
      }
      while (it != std::default_sentinel) {
        try {
          ++it;
        } catch (const std::exception& e) {
          note_error(e);
          continue;
        }
        if (it == std::default_sentinel) break;
        std::lock_guard l(st->m);
        st->values.insert(*it);
      }
    } catch (const std::exception& e) {
      note_error(e);
    }
    std::lock_guard l(st->m);
    st->done = true;
    st->cv.notify_all();
  });
  bool hung;
  record r;
  {
    std::unique_lock l(st->m);
    hung = !st->cv.wait_for(l, std::chrono::duration<double>(kWaitLimit), [&] { return st->done; });
    const int ok = static_cast<int>(st->values.size());
    if (hung) {
      r.got = "hangs after " + std::to_string(ok + st->errors) + " results (bounded by the 10 s wait)";
      r.seconds = kWaitLimit;
    } else if (st->errors) {
      r.got = st->first_error + (st->errors > 1 ? " (" + std::to_string(st->errors) + " errors)" : "");
      r.seconds = st->first_error_at;
    } else {
      r.got = "every result, no error";
      r.seconds = secs_since(t0);
    }
    r.lost = std::to_string(std::max(0, 999 - ok + (ok == 1000 ? 1 : 0)));
  }
  if (hung) {
    // The pool cannot be shut down cleanly with a map stuck in it; the parent of this
    // scenario kills what is left.
    std::fflush(nullptr);
    r.usable = "not checked (the map is stuck)";
    consumer.detach();
    return r;
  }
  consumer.join();
  r.usable = usable(pool);
  return r;
}

record scenario_timeout() {
  mproc::Pool pool({.processes = 2, .task_timeout = 1s});
  (void)pool.map(identity, std::vector<int>{1, 2});
  record r;
  const auto t0 = clk::now();
  try {
    (void)pool.apply(nap_ms, 20000);
    r.got = "the result (no timeout)";
  } catch (const std::exception& e) {
    r.got = type_of(e) + " (the worker is killed and replaced)";
  }
  r.seconds = secs_since(t0);
  std::this_thread::sleep_for(100ms);
  const auto t = clk::now();
  try {
    auto v = pool.map_async(nap_ms, std::vector<int>{200, 200}, 1).get(5s);
    const double took = secs_since(t);
    char buf[96];
    std::snprintf(buf, sizeof buf, "one worker only (2 x 0.2 s took %.2f s)", took);
    r.usable = took < 0.35 ? "yes, both workers" : buf;
  } catch (const std::exception& e) {
    r.usable = std::string("no (") + type_of(e) + ")";
  }
  return r;
}

/// The program that gets Ctrl-C: an ordinary C++ program with no SIGINT handler.
int sigint_child(const std::string& out_path) {
  mproc::Pool pool(2);
  (void)pool.map(nap_ms, std::vector<int>(1000, 10), 1);
  std::ofstream(out_path) << "nothing: the map completed";
  return 0;
}

std::string read_file(const std::string& p) {
  std::ifstream f(p);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

/// Processes of the group still running. Zombies do not count: they are dead, and
/// where PID 1 does not reap (a container) an orphan stays one.
int group_alive(pid_t pgid) {
  int n = 0;
  if (DIR* d = ::opendir("/proc")) {
    while (dirent* e = ::readdir(d)) {
      if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
      std::string stat = read_file(std::string("/proc/") + e->d_name + "/stat");
      std::size_t close = stat.rfind(')');
      if (close == std::string::npos) continue;
      char state = 0;
      int ppid = 0, pgrp = 0;
      if (std::sscanf(stat.c_str() + close + 1, " %c %d %d", &state, &ppid, &pgrp) == 3 && pgrp == pgid &&
          state != 'Z')
        ++n;
    }
    ::closedir(d);
  }
  return n;
}

/// Waits for `pid` up to `limit` seconds; its wait status, or nullopt on timeout.
std::optional<int> wait_for(pid_t pid, double limit) {
  const auto t0 = clk::now();
  while (true) {
    int st = 0;
    pid_t r = ::waitpid(pid, &st, WNOHANG);
    if (r == pid) return st;
    if (r < 0 && errno != EINTR) return 0;
    if (secs_since(t0) >= limit) return std::nullopt;
    std::this_thread::sleep_for(5ms);
  }
}

/// Starts this program again with `args` in a new process group.
pid_t start_self(const std::vector<std::string>& args) {
  std::fflush(nullptr);
  pid_t pid = ::fork();
  if (pid == 0) {
    ::setpgid(0, 0);
    int devnull = ::open("/dev/null", O_WRONLY);
    if (devnull >= 0) {
      ::dup2(devnull, 1);
      ::dup2(devnull, 2);
    }
    std::vector<char*> argv;
    std::string self = "/proc/self/exe";
    argv.push_back(self.data());
    std::vector<std::string> copy = args;
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv("/proc/self/exe", argv.data());
    ::_exit(127);
  }
  ::setpgid(pid, pid);  // either side may run first
  return pid;
}

std::string temp_path() {
  char buf[] = "/tmp/mproc-crash-XXXXXX";
  int fd = ::mkstemp(buf);
  if (fd >= 0) ::close(fd);
  return buf;
}

record scenario_sigint() {
  const std::string out = temp_path();
  pid_t pid = start_self({"--sigint-child", out});
  std::this_thread::sleep_for(500ms);
  ::kill(-pid, SIGINT);
  const auto t0 = clk::now();
  record r;
  auto st = wait_for(pid, kWaitLimit);
  if (!st) {
    r.got = "hangs: still running 10 s after Ctrl-C";
    r.seconds = kWaitLimit;
  } else {
    r.seconds = secs_since(t0);
    std::string caught = read_file(out);
    if (WIFSIGNALED(*st))
      r.got = std::string("killed by ") + (WTERMSIG(*st) == SIGINT ? "SIGINT" : strsignal(WTERMSIG(*st))) +
              " (no handler: the default action)";
    else
      r.got = (caught.empty() ? "nothing caught" : caught) + "; exit status " + std::to_string(WEXITSTATUS(*st));
  }
  std::this_thread::sleep_for(1s);
  const int left = group_alive(pid);
  r.usable = left ? std::to_string(left) + " processes left running" : "all processes gone";
  if (group_alive(pid)) ::kill(-pid, SIGKILL);
  if (!st) ::waitpid(pid, nullptr, 0);
  ::unlink(out.c_str());
  return r;
}

/// Runs one scenario in a child process group, bounded; kills whatever it leaves.
record run_one(const std::string& scenario) {
  const std::string out = temp_path();
  pid_t pid = start_self({"--one", scenario, out});
  auto st = wait_for(pid, 60);
  record r;
  std::string text = read_file(out);
  if (!st || text.empty()) {
    r.got = st ? "the scenario failed to report" : "the harness itself did not finish in 60 s";
  } else {
    auto get = [&](const std::string& key) {
      // The child wrote json_record(): "key": "value" or a number.
      std::size_t k = text.find("\"" + key + "\": ");
      if (k == std::string::npos) return std::string();
      k += key.size() + 4;
      if (text[k] == '"') {
        std::string v;
        for (std::size_t i = k + 1; i < text.size() && text[i] != '"'; ++i) {
          if (text[i] == '\\' && i + 1 < text.size()) ++i;
          v += text[i];
        }
        return v;
      }
      return text.substr(k, text.find_first_of(",}", k) - k);
    };
    r.got = get("got");
    std::string s = get("seconds");
    r.seconds = s == "null" || s.empty() ? NAN : std::strtod(s.c_str(), nullptr);
    r.lost = get("lost");
    r.usable = get("usable");
  }
  if (group_alive(pid)) ::kill(-pid, SIGKILL);
  if (!st) ::waitpid(pid, nullptr, 0);
  ::unlink(out.c_str());
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  if (argc >= 3 && std::string_view(argv[1]) == "--sigint-child") return sigint_child(argv[2]);
  if (argc >= 4 && std::string_view(argv[1]) == "--one") {
    const std::string scenario = argv[2];
    if (const char* item = std::getenv("MPROC_CRASH_ITEM")) g_kill_item = std::atoi(item);
    g_marker = temp_path();
    ::unlink(g_marker.c_str());
    record r = scenario == "kill" ? scenario_kill() : scenario == "timeout" ? scenario_timeout() : scenario_sigint();
    std::ofstream(argv[3]) << json_record(r);
    ::unlink(g_marker.c_str());
    std::fflush(nullptr);
    ::_exit(0);  // a stuck pool is not waited for: the parent kills the process group
  }
  auto o = bench::parse_args(argc, argv, 1, 1, "[--json] [--no-python] [--quick]");

  struct row {
    std::string impl, scenario;
    record r;
  };
  std::vector<row> rows;
  for (const char* sc : {"kill", "timeout", "sigint"}) {
    std::fprintf(stderr, "bench_crash: mproc::Pool, %s\n", sc);
    rows.push_back({"mproc::Pool", sc, run_one(sc)});
  }
  if (o.python) {
    std::fprintf(stderr, "bench_crash: the Python executors (about a minute) ...\n");
    const std::string cmd = bench::python_interpreter() + " " MPROC_BENCHMARK_PYTHON_DIR "/bench_crash.py";
    std::fflush(nullptr);
    FILE* f = ::popen(cmd.c_str(), "r");
    std::string text;
    if (f) {
      char buf[4096];
      while (std::fgets(buf, sizeof buf, f)) text += buf;
      const int st = ::pclose(f);
      if (st != 0) std::fprintf(stderr, "python twin failed (%s)\n", cmd.c_str());
    } else {
      std::fprintf(stderr, "cannot run %s\n", cmd.c_str());
    }
    // Passed through as they are: the twin writes the same fields.
    std::istringstream lines(text);
    for (std::string line; std::getline(lines, line);) {
      if (line.empty() || line[0] != '{') continue;
      if (o.json) {
        std::printf("{\"kind\": \"crash\", \"bench\": \"crash\", %s\n", line.c_str() + 1);
      } else {
        rows.push_back({"", "", record{line}});
      }
    }
  }
  for (const auto& x : rows) {
    if (x.impl.empty()) continue;
    if (o.json) {
      std::string rec = json_record(x.r);
      std::printf("{\"kind\": \"crash\", \"bench\": \"crash\", \"impl\": %s, \"scenario\": %s, %s\n",
                  bench::json_string(x.impl).c_str(), bench::json_string(x.scenario).c_str(), rec.c_str() + 1);
    }
  }
  if (!o.json) {
    std::printf("| pool | scenario | the caller gets | after, s | results lost | usable afterwards |\n"
                "|---|---|---|---|---|---|\n");
    for (const auto& x : rows) {
      if (x.impl.empty()) {
        std::printf("(Python) %s\n", x.r.got.c_str());
        continue;
      }
      std::printf("| %s | %s | %s | %s | %s | %s |\n", x.impl.c_str(), x.scenario.c_str(), x.r.got.c_str(),
                  bench::fmt(x.r.seconds).c_str(), x.r.lost.c_str(), x.r.usable.c_str());
    }
  }
  return 0;
}
