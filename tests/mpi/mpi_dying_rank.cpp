// A worker rank dies in the middle of a map (argv[1]: exit, kill or abort in a task run
// by the rank itself; rank: killed by a task in one of its local processes). The job
// must end with a non-zero status, never hang and never look like success: the
// driver (expect_abort.cmake) checks that the root got as far as waiting and never
// returned from the map.
#include <mproc/mpi.hpp>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

namespace {
int die_exit(int x) {
  if (x == 5) ::_exit(3);
  return x;
}
int die_kill(int x) {
  if (x == 5) ::raise(SIGKILL);
  return x;
}
int die_abort(int x) {
  if (x == 5) std::abort();
  return x;
}
/// From a local process: its rank is killed, as when its host is lost.
int kill_rank(int x) {
  if (x == 5) ::kill(std::atoi(std::getenv("MPROC_TEST_RANK_PID")), SIGKILL);
  std::this_thread::sleep_for(std::chrono::seconds(30));
  return x;
}
}  // namespace

int main(int argc, char** argv) {
  // Before the environment: the local processes inherit it from the forkserver.
  ::setenv("MPROC_TEST_RANK_PID", std::to_string(::getpid()).c_str(), 1);
  mproc::mpi::environment env(argc, argv);
  const std::string mode = argc > 1 ? argv[1] : "exit";
  auto f = mode == "kill" ? die_kill : mode == "abort" ? die_abort : mode == "rank" ? kill_rank : die_exit;
  // exit/kill/abort: the task runs in the rank and takes it down; rank: the task runs
  // in a local process and kills its rank.
  mproc::mpi::Pool pool({.local_processes = mode == "rank" ? 0 : -1});
  std::printf("MPROC_ROOT_WAITING\n");
  std::fflush(stdout);
  try {
    auto v = pool.map(f, std::vector<int>(40, 5), 1);
    std::printf("MPROC_ROOT_RETURNED %zu\n", v.size());
  } catch (const std::exception& e) {
    // Also acceptable (the rank's death reported as an error), but this must not be
    // reached with exit status 0.
    std::printf("MPROC_ROOT_CAUGHT %s\n", e.what());
    return 2;
  }
  return 0;
}
