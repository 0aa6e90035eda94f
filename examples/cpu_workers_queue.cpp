// Mirrors seed 001, code example "Basic Process creation".
// Four worker processes each run a CPU-bound task and put (task_id, result) on a
// shared result queue; the parent joins them, then collects and prints the results.
// Joining before getting is safe here: put() returns once the result is in shared
// memory, so a finished worker holds nothing back.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <tuple>
#include <unistd.h>
#include <vector>

#include <mproc/process.hpp>
#include <mproc/queue.hpp>

using result_t = std::tuple<int, double>;

double cpu_intensive_task(long n) {
  double total = 0;
  for (long i = 0; i < n; ++i) total += std::sqrt(double(i));
  return total;
}

// Each line leaves in one write so lines from different workers never mix; their
// order is up to the scheduler, as in the Python original.
void say(const std::string& line) {
  std::string s = line + '\n';
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fflush(stdout);
}

void worker(int task_id, long n, mproc::Queue<result_t> result_queue) {
  const int pid = int(::getpid());
  say("Worker " + std::to_string(task_id) + " started (PID=" + std::to_string(pid) + ")");
  double result = cpu_intensive_task(n);
  result_queue.put(result_t{task_id, result});
  say("Worker " + std::to_string(task_id) + " finished (PID=" + std::to_string(pid) + ")");
}

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  mproc::Queue<result_t> result_queue;
  std::vector<mproc::Process> processes;

  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 4; ++i) {
    processes.emplace_back(worker, i, 5'000'000L, result_queue);
    processes.back().start();
  }
  for (auto& p : processes) p.join();

  std::vector<result_t> results;
  for (int i = 0; i < 4; ++i) results.push_back(result_queue.get());
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  std::sort(results.begin(), results.end());
  for (auto [task_id, result] : results) std::printf("Task %d: %.2f\n", task_id, result);
  std::printf("Total time: %.2fs (4 processes)\n", elapsed);
}
