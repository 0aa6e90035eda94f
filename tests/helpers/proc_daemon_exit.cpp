// Returns from main with a daemon child that would sleep forever and a non-daemon
// child still working: at exit the daemon is terminated and the other one joined.
#include <chrono>
#include <csignal>
#include <cstdio>
#include <thread>

#include <unistd.h>

#include <mproc/process.hpp>

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  mproc::Process daemon({.daemon = true}, [] {
    for (;;) ::pause();
  });
  daemon.start();
  // A daemon that ignores SIGTERM is killed after a grace period: exit never hangs.
  mproc::Process stubborn({.daemon = true}, [] {
    std::signal(SIGTERM, SIG_IGN);
    for (;;) ::pause();
  });
  stubborn.start();
  {
    // Destroyed while running: the registry still joins it at exit.
    mproc::Process worker([] {
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      std::printf("worker done\n");
    });
    worker.start();
  }
  std::printf("%d\n%d\n", int(daemon.pid()), int(stubborn.pid()));
  std::fflush(stdout);
  return 0;
}
