// Start methods, side by side (microseconds per start+join of a child that does nothing):
//  - spawn: mproc::Process with start_method::spawn vs a bare posix_spawn()+waitpid() of
//    this same executable (which returns from main before init: the limit for
//    re-executing the program) vs Python's multiprocessing spawn;
//  - forkserver: mproc::Process with start_method::forkserver vs mproc::Process with
//    fork vs Python's multiprocessing forkserver.
// Rounds are interleaved and medians reported, so a noisy machine skews every column
// alike; the best round of each column is shown too.
//
//   bench_start_methods [--rounds N] [--quick] [--json] [--no-python] [--count N]
#include <mproc/process.hpp>

#include "bench_common.hpp"

#include <cstring>
#include <string>
#include <vector>

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

using bench::clk;

namespace {

double us_per_op(clk::time_point t0, int count) { return bench::secs_since(t0) * 1e6 / count; }

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

}  // namespace

int main(int argc, char** argv) {
  // The raw baseline's child returns before init, which would fork the forkserver:
  // a bare exec of this executable, as a spawned child is up to its entry.
  if (argc > 1 && std::strcmp(argv[1], "--raw-child") == 0) return 0;
  mproc::init(argc, argv);
  int count = 50;
  auto o = bench::parse_args(argc, argv, 7, 3, "[--rounds N] [--quick] [--json] [--no-python] [--count N]",
                             [&](std::string_view a, auto& next) {
                               if (a != "--count") return false;
                               count = std::max(1, std::atoi(next()));
                               return true;
                             });
  if (o.quick) count = std::min(count, 30);
  using mproc::start_method;
  // Warm up (the forkserver starts on first use).
  mproc_start_join(start_method::spawn, 5);
  mproc_start_join(start_method::forkserver, 5);
  mproc_start_join(start_method::fork, 5);
  raw_posix_spawn(5);
  // Python's spawn costs tens of ms a child: fewer of them per round.
  const int py_spawn_count = std::max(1, count / 5);
  bench::samples s;
  for (int round = 0; round < o.rounds; ++round) {
    bench::note_round("bench_start_methods", round, o.rounds);
    s.add("spawn", mproc_start_join(start_method::spawn, count));
    s.add("raw_spawn", raw_posix_spawn(count));
    s.add("forkserver", mproc_start_join(start_method::forkserver, count));
    s.add("fork", mproc_start_join(start_method::fork, count));
    if (o.python) {
      s.add("py_spawn", bench::get(bench::run_python("bench_start_methods.py",
                                                     "spawn " + std::to_string(py_spawn_count)),
                                   "start_join_us"));
      s.add("py_forkserver", bench::get(bench::run_python("bench_start_methods.py",
                                                          "forkserver " + std::to_string(count)),
                                        "start_join_us"));
    }
  }
  bench::report rep("start_methods");
  double m = s.med("spawn"), r = s.med("raw_spawn");
  rep.add({.metric = "Process start+join with spawn, us",
           .params = std::to_string(count) + " per round (Python: " + std::to_string(py_spawn_count) + ")",
           .unit = "us",
           .dir = bench::better::lower,
           .mproc = m,
           .python = s.med("py_spawn"),
           .raw = r,
           .raw_label = "posix_spawn+waitpid of the same exe",
           .target = "<= 1.3x raw posix_spawn",
           .met = bench::judged(m <= 1.3 * r, {m, r}),
           .issue = "5"});
  m = s.med("forkserver"), r = s.med("fork");
  rep.add({.metric = "Process start+join with forkserver, us",
           .params = std::to_string(count) + " per round",
           .unit = "us",
           .dir = bench::better::lower,
           .mproc = m,
           .python = s.med("py_forkserver"),
           .raw = r,
           .raw_label = "mproc fork start+join",
           .target = "<= 1.5x fork start+join",
           .met = bench::judged(m <= 1.5 * r, {m, r}),
           .issue = "5"});
  rep.print(o, o.rounds);
}
