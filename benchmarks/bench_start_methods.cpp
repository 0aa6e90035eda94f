// Start methods, side by side (microseconds per start+join of a child that does nothing):
//  - spawn: mproc::Process with start_method::spawn vs a bare posix_spawn()+waitpid() of
//    this same executable (which returns from main right after init: the limit for
//    re-executing the program) vs Python's multiprocessing spawn;
//  - forkserver: mproc::Process with start_method::forkserver vs mproc::Process with
//    fork vs Python's multiprocessing forkserver.
// Rounds are interleaved and medians reported, so a noisy machine skews every column
// alike; the best round of each column is shown too.
//
//   bench_start_methods [--rounds N] [--count N] [--no-python]
#include <mproc/process.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef MPROC_BENCHMARK_PYTHON_DIR
#define MPROC_BENCHMARK_PYTHON_DIR "benchmarks/python"
#endif
#ifndef MPROC_BENCHMARK_PYTHON
#define MPROC_BENCHMARK_PYTHON "python3"
#endif

extern char** environ;

using clk = std::chrono::steady_clock;

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

double best(const std::vector<double>& v) {
  return v.empty() ? 0 : *std::min_element(v.begin(), v.end());
}

double us_per_op(clk::time_point t0, int count) {
  return std::chrono::duration<double, std::micro>(clk::now() - t0).count() / count;
}

void nothing() {}

double mproc_start_join(mproc::start_method m, int count) {
  auto t0 = clk::now();
  for (int i = 0; i < count; ++i) {
    mproc::Process p({.name = "", .daemon = false, .method = m}, nothing);
    p.start();
    p.join();
  }
  return us_per_op(t0, count);
}

double raw_posix_spawn(int count) {
  std::string exe = mproc::detail::bootstrap().executable;
  char arg1[] = "--raw-child";
  char* argv[] = {exe.data(), arg1, nullptr};
  auto t0 = clk::now();
  for (int i = 0; i < count; ++i) {
    pid_t pid = -1;
    if (::posix_spawn(&pid, exe.c_str(), nullptr, nullptr, argv, environ) != 0) return 0;
    int st;
    ::waitpid(pid, &st, 0);
  }
  return us_per_op(t0, count);
}

/// Runs the Python twin; returns the number in its JSON line (0 on failure).
double python_result(const char* method, int count) {
  std::string cmd = std::string(MPROC_BENCHMARK_PYTHON[0] ? MPROC_BENCHMARK_PYTHON : "python3") +
                    " " MPROC_BENCHMARK_PYTHON_DIR "/bench_start_methods.py " + method + " " +
                    std::to_string(count);
  FILE* f = ::popen(cmd.c_str(), "r");
  if (!f) return 0;
  char line[512] = {};
  bool got = std::fgets(line, sizeof line, f) != nullptr;
  ::pclose(f);
  if (!got) return 0;
  const char* p = std::strstr(line, "start_join_us");
  return p ? std::strtod(p + std::strlen("start_join_us") + 3, nullptr) : 0;
}

void line(const char* what, const std::vector<double>& v) {
  std::printf("  %-34s %10.1f  [%.1f]\n", what, median(v), best(v));
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  if (argc > 1 && std::strcmp(argv[1], "--raw-child") == 0) return 0;
  int rounds = 7, count = 50;
  bool python = true;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--rounds" && i + 1 < argc) rounds = std::atoi(argv[++i]);
    else if (a == "--count" && i + 1 < argc) count = std::atoi(argv[++i]);
    else if (a == "--no-python") python = false;
  }
  using mproc::start_method;
  // Warm up (the forkserver starts on first use).
  mproc_start_join(start_method::spawn, 5);
  mproc_start_join(start_method::forkserver, 5);
  mproc_start_join(start_method::fork, 5);
  raw_posix_spawn(5);
  std::vector<double> sp, raw, pysp, fs, fk, pyfs;
  for (int round = 0; round < rounds; ++round) {
    sp.push_back(mproc_start_join(start_method::spawn, count));
    raw.push_back(raw_posix_spawn(count));
    fs.push_back(mproc_start_join(start_method::forkserver, count));
    fk.push_back(mproc_start_join(start_method::fork, count));
    if (python) {
      pysp.push_back(python_result("spawn", std::max(1, count / 5)));
      pyfs.push_back(python_result("forkserver", count));
    }
  }
  std::printf("Start methods, start+join of a child doing nothing, %d per round, median of %d\n"
              "rounds in us (best round in brackets: on a busy machine the medians carry\n"
              "scheduling noise)\n",
              count, rounds);
  std::printf("spawn\n");
  line("mproc::Process (spawn)", sp);
  line("raw posix_spawn+waitpid (same exe)", raw);
  if (python) line("python mp.Process (spawn)", pysp);
  double r1 = median(sp) / median(raw);
  std::printf("  ratio mproc/raw     %6.2fx  (target <= 1.3x: %s; best rounds %.2fx)\n", r1,
              r1 <= 1.3 ? "met" : "NOT met", best(sp) / best(raw));
  if (python && median(pysp) > 0)
    std::printf("  ratio python/mproc  %6.2fx\n", median(pysp) / median(sp));
  std::printf("forkserver\n");
  line("mproc::Process (forkserver)", fs);
  line("mproc::Process (fork)", fk);
  if (python) line("python mp.Process (forkserver)", pyfs);
  double r2 = median(fs) / median(fk);
  std::printf("  ratio forkserver/fork %5.2fx  (target <= 1.5x: %s; best rounds %.2fx)\n", r2,
              r2 <= 1.5 ? "met" : "NOT met", best(fs) / best(fk));
  if (python && median(pyfs) > 0)
    std::printf("  ratio python/mproc  %6.2fx\n", median(pyfs) / median(fs));
}
