// Runs a forkserver (with a child of it) and a Manager, prints their directories and
// pids, then waits to be SIGKILLed together with its whole process group by the test,
// which checks that neither directory outlives the program.
// Prints "dir <path>" for the forkserver's and the Manager's socket directories,
// "pid <pid>" for the forkserver, then "ready".
#include <cstdio>
#include <filesystem>
#include <string>

#include <unistd.h>

#include <mproc/mproc.hpp>

namespace {

[[noreturn]] void sleep_forever() {
  for (;;) ::pause();
}

void print(const char* what, const std::string& value) {
  std::printf("%s %s\n", what, value.c_str());
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  mproc::set_start_method(mproc::start_method::forkserver);
  mproc::Process child({.name = "child", .daemon = false, .method = mproc::start_method::forkserver},
                       sleep_forever);
  child.start();
  const auto& fs = mproc::detail::forkserver_state();
  print("dir", fs.addr.dir);
  print("pid", std::to_string(fs.server_pid));
  mproc::Manager manager;
  print("dir", std::filesystem::path(manager.unix_address()).parent_path().string());
  std::printf("ready\n");
  std::fflush(stdout);
  sleep_forever();
}
