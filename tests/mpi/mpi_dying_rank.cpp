// A worker rank dies in the middle of a map (argv[1]: exit, kill or abort). The job
// must end with a non-zero status, never hang and never look like success: the
// driver (expect_abort.cmake) checks that the root got as far as waiting and never
// returned from the map.
#include <mproc/mpi.hpp>

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
}  // namespace

int main(int argc, char** argv) {
  mproc::mpi::environment env(argc, argv);
  const std::string mode = argc > 1 ? argv[1] : "exit";
  auto f = mode == "kill" ? die_kill : mode == "abort" ? die_abort : die_exit;
  mproc::mpi::Pool pool;
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
