// Process start+join, side by side: mproc::Process vs a bare fork()+waitpid() (the
// limit) vs Python's multiprocessing.Process with fork (benchmarks/python/bench_process.py).
// Rounds are interleaved and medians reported, so a noisy machine skews every column
// alike.
//
//   bench_process [--rounds N] [--count N] [--no-python]
#include <mproc/process.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#ifndef MPROC_BENCHMARK_PYTHON_DIR
#define MPROC_BENCHMARK_PYTHON_DIR "benchmarks/python"
#endif
#ifndef MPROC_BENCHMARK_PYTHON
#define MPROC_BENCHMARK_PYTHON "python3"
#endif

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

double mproc_start_join(int count) {
  auto t0 = clk::now();
  for (int i = 0; i < count; ++i) {
    mproc::Process p([] {});
    p.start();
    p.join();
  }
  return us_per_op(t0, count);
}

double raw_fork_waitpid(int count) {
  auto t0 = clk::now();
  for (int i = 0; i < count; ++i) {
    pid_t pid = ::fork();
    if (pid == 0) ::_exit(0);
    int st;
    ::waitpid(pid, &st, 0);
  }
  return us_per_op(t0, count);
}

/// Runs the Python twin; returns the number after `"key":` in its JSON line (0 on failure).
double python_result(const std::string& args, const char* key) {
  std::string cmd = std::string(MPROC_BENCHMARK_PYTHON[0] ? MPROC_BENCHMARK_PYTHON : "python3") +
                    " " MPROC_BENCHMARK_PYTHON_DIR "/bench_process.py " + args;
  FILE* f = ::popen(cmd.c_str(), "r");
  if (!f) return 0;
  char line[512] = {};
  bool got = std::fgets(line, sizeof line, f) != nullptr;
  ::pclose(f);
  if (!got) return 0;
  const char* p = std::strstr(line, key);
  return p ? std::strtod(p + std::strlen(key) + 3, nullptr) : 0;
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  int rounds = 7, count = 200;
  bool python = true;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--rounds" && i + 1 < argc) rounds = std::atoi(argv[++i]);
    else if (a == "--count" && i + 1 < argc) count = std::atoi(argv[++i]);
    else if (a == "--no-python") python = false;
  }
  std::vector<double> m, r, py;
  mproc_start_join(20);  // warm up
  raw_fork_waitpid(20);
  for (int round = 0; round < rounds; ++round) {
    m.push_back(mproc_start_join(count));
    r.push_back(raw_fork_waitpid(count));
    if (python) py.push_back(python_result(std::to_string(count), "start_join_us"));
  }
  double mm = median(m), rm = median(r), pm = median(py);
  std::printf("Process start+join, %d per round, median of %d rounds (us per start+join;\n"
              "best round in brackets: on a busy machine the medians carry scheduling noise)\n",
              count, rounds);
  std::printf("  %-28s %10.1f  [%.1f]\n", "mproc::Process", mm, best(m));
  std::printf("  %-28s %10.1f  [%.1f]\n", "raw fork+waitpid", rm, best(r));
  if (python) std::printf("  %-28s %10.1f  [%.1f]\n", "python mp.Process (fork)", pm, best(py));
  std::printf("  ratio mproc/raw     %6.2fx  (target <= 1.3x; best rounds %.2fx)\n", mm / rm,
              best(m) / best(r));
  if (python && pm > 0) std::printf("  ratio python/mproc  %6.2fx\n", pm / mm);
}
