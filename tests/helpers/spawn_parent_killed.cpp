// Starts children with spawn and forkserver (one of them from a thread that ends at
// once), prints their pids and the forkserver's pid (one per line), then waits to be
// SIGKILLed by the test, which checks that all of them died with it.
#include <cstdio>
#include <thread>

#include <unistd.h>

#include <mproc/process.hpp>

static void sleep_forever() {
  for (;;) ::pause();
}

static void print_pid(pid_t pid) {
  std::printf("%d\n", int(pid));
  std::fflush(stdout);
}

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  using mproc::start_method;
  mproc::Process s({.name = "s", .daemon = false, .method = start_method::spawn}, sleep_forever);
  s.start();
  mproc::Process f({.name = "f", .daemon = false, .method = start_method::forkserver},
                   sleep_forever);
  f.start();
  mproc::Process t({.name = "t", .daemon = false, .method = start_method::spawn}, sleep_forever);
  std::thread([&] { t.start(); }).join();
  print_pid(s.pid());
  print_pid(f.pid());
  print_pid(t.pid());
  print_pid(mproc::detail::forkserver_state().server_pid);
  sleep_forever();
}
