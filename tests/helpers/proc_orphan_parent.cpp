// Starts children in several ways, prints their pids (one per line) and waits to be
// SIGKILLed by the test, which then checks that every child died with it.
#include <cstdio>
#include <thread>

#include <unistd.h>

#include <mproc/process.hpp>

static void print_pid(pid_t pid) {
  std::printf("%d\n", int(pid));
  std::fflush(stdout);
}

static void sleep_forever() {
  for (;;) ::pause();
}

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  mproc::Process plain(sleep_forever);
  plain.start();
  mproc::Process daemon({.name = "d", .daemon = true}, sleep_forever);
  daemon.start();
  // A child with a child of its own: the grandchild dies with the child.
  mproc::Process middle([] {
    mproc::Process grandchild(sleep_forever);
    grandchild.start();
    print_pid(grandchild.pid());
    sleep_forever();
  });
  middle.start();
  // Started from a thread that ends at once: the child must still die with the process,
  // not with the thread.
  mproc::Process from_thread(sleep_forever);
  std::thread([&] { from_thread.start(); }).join();

  print_pid(plain.pid());
  print_pid(daemon.pid());
  print_pid(middle.pid());
  print_pid(from_thread.pid());
  sleep_forever();
}
