// Holds one of everything that starts processes or names segments, under the start
// method given on the command line, then waits to be SIGKILLed by the test, which
// checks that none of its processes and none of its /dev/shm segments outlive it.
// Usage: resources_parent_killed fork|spawn|forkserver
// Prints "shm <name>" for each named segment (its own and one a child created),
// "pid <pid>" for each process it knows of (children, the resource tracker), "dir
// <path>" for the Manager's socket directory, then "ready".
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>

#include <unistd.h>

#include <mproc/mproc.hpp>

namespace {

[[noreturn]] void sleep_forever() {
  for (;;) ::pause();
}

/// A child that names a segment of its own (never unlinked) and keeps running.
[[noreturn]] void create_segment(mproc::Connection c) {
  mproc::SharedMemory own(mproc::create, 4096);
  c.send(own.name());
  sleep_forever();
}

int sleep_ms(int ms) {
  ::usleep(useconds_t(ms) * 1000);
  return ms;
}

void print(const char* what, const std::string& value) {
  std::printf("%s %s\n", what, value.c_str());
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s fork|spawn|forkserver\n", argv[0]);
    return 2;
  }
  mproc::start_method m = mproc::start_method::fork;
  if (std::strcmp(argv[1], "spawn") == 0) m = mproc::start_method::spawn;
  else if (std::strcmp(argv[1], "forkserver") == 0) m = mproc::start_method::forkserver;
  else if (std::strcmp(argv[1], "fork") != 0) return 2;
  mproc::set_start_method(m);  // also the Manager's and anything else's default

  mproc::SharedMemory shm(mproc::create, 1 << 16);
  print("shm", shm.name());
  print("pid", std::to_string(mproc::detail::resource_tracker::instance().ensure_running()));

  mproc::Queue<int> q;
  q.put(1);
  mproc::Pool pool({.processes = 2, .method = m});
  auto busy = pool.apply_async(sleep_ms, 60000);  // a worker in the middle of a task
  mproc::Manager manager;
  auto d = manager.dict<std::string, int>();
  d.set("k", 1);
  print("dir", std::filesystem::path(manager.unix_address()).parent_path().string());

  mproc::Process idle({.name = "idle", .daemon = false, .method = m}, sleep_forever);
  idle.start();
  print("pid", std::to_string(idle.pid()));
  mproc::Process daemon({.name = "daemon", .daemon = true, .method = m}, sleep_forever);
  daemon.start();
  print("pid", std::to_string(daemon.pid()));

  auto [mine, theirs] = mproc::Pipe();
  mproc::Process creator({.name = "creator", .daemon = false, .method = m}, create_segment, theirs);
  creator.start();
  theirs.close();
  print("pid", std::to_string(creator.pid()));
  print("shm", mine.recv<std::string>(std::chrono::seconds(30)));

  std::printf("ready\n");
  std::fflush(stdout);
  sleep_forever();
}
