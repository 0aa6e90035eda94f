// Process start+join, side by side: mproc::Process vs a bare fork()+waitpid() (the
// limit) vs Python's multiprocessing.Process with fork (benchmarks/python/bench_process.py).
// Rounds are interleaved and medians reported, so a noisy machine skews every column
// alike.
//
//   bench_process [--rounds N] [--quick] [--json] [--no-python] [--count N]
#include <mproc/process.hpp>

#include "bench_common.hpp"

#include <string>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

using bench::clk;

namespace {

double us_per_op(clk::time_point t0, int count) { return bench::secs_since(t0) * 1e6 / count; }

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

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  int count = 200;
  auto o = bench::parse_args(argc, argv, 7, 3, "[--rounds N] [--quick] [--json] [--no-python] [--count N]",
                             [&](std::string_view a, auto& next) {
                               if (a != "--count") return false;
                               count = std::max(1, std::atoi(next()));
                               return true;
                             });
  if (o.quick) count = std::min(count, 100);
  bench::samples s;
  mproc_start_join(20);  // warm up
  raw_fork_waitpid(20);
  for (int round = 0; round < o.rounds; ++round) {
    bench::note_round("bench_process", round, o.rounds);
    s.add("mproc", mproc_start_join(count));
    s.add("raw", raw_fork_waitpid(count));
    if (o.python) s.add("python", bench::get(bench::run_python("bench_process.py", std::to_string(count)), "start_join_us"));
  }
  bench::report rep("process");
  const double m = s.med("mproc"), r = s.med("raw");
  rep.add({.metric = "Process start+join, us",
           .params = std::to_string(count) + " per round, child does nothing",
           .unit = "us",
           .dir = bench::better::lower,
           .mproc = m,
           .python = s.med("python"),
           .raw = r,
           .raw_label = "fork+waitpid",
           .target = "<= 1.3x raw fork+waitpid",
           .met = bench::judged(m <= 1.3 * r, {m, r}),
           .issue = "2"});
  rep.print(o, o.rounds);
}
