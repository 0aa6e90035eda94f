// A program interrupted in the middle of a long Pool.map, for test_signals.
// Usage: signal_map <fork|spawn|forkserver> <default|terminate>
//   default:   no signal handling of its own: SIGINT/SIGTERM end it by their default
//              action, as they end any program.
//   terminate: the documented way to stop a map on a signal: SIGINT and SIGTERM are
//              blocked, a thread waits for them with sigwait and calls
//              pool.terminate(); the map then raises pool_not_running. Exits 3 with
//              "stopped by signal N" on stdout, then runs a short map on a new pool
//              ("after 10") to show the program can go on.
// Prints "shm <name>" (a named SharedMemory segment it never unlinks in default mode)
// and "ready" once the workers are running tasks; "map finished" if the map ran to
// the end (it should not: it lasts about 30 s).
#include <mproc/mproc.hpp>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

namespace {

int slow_identity(int x) {
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  return x;
}

void say(const std::string& line) {
  std::string s = line + "\n";
  [[maybe_unused]] auto rc = ::write(1, s.data(), s.size());
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s <fork|spawn|forkserver> <default|terminate>\n", argv[0]);
    return 2;
  }
  const std::string method_name = argv[1];
  const std::string mode = argv[2];
  mproc::start_method method = method_name == "spawn"        ? mproc::start_method::spawn
                               : method_name == "forkserver" ? mproc::start_method::forkserver
                                                             : mproc::start_method::fork;
  const bool graceful = mode == "terminate";

  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  // Blocked before any thread exists, so every thread (the pool's too) inherits it and
  // only the sigwait thread below ever takes these signals.
  if (graceful) ::pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  mproc::SharedMemory shm(mproc::create, 4096);
  say("shm " + shm.name());

  std::atomic<bool> announced{false};
  mproc::Pool pool({.processes = 2, .method = method});
  std::atomic<int> caught{0};
  std::thread waiter;
  if (graceful) {
    waiter = std::thread([&] {
      int sig = 0;
      if (::sigwait(&stop_signals, &sig) == 0) {
        caught = sig;
        pool.terminate();
      }
    });
  }

  std::vector<int> inputs(3000);
  for (int i = 0; i < 3000; ++i) inputs[std::size_t(i)] = i;
  int code = 0;
  try {
    auto out = pool.map(slow_identity, inputs,
                        {.chunksize = 1, .on_progress = [&](std::size_t done, std::size_t) {
                           if (done >= 4 && !announced.exchange(true)) say("ready");
                         }});
    say("map finished " + std::to_string(out.size()));
  } catch (const mproc::pool_not_running& e) {
    say(std::string("map stopped: ") + e.what());
    code = 3;
  }
  if (graceful) {
    waiter.join();
    say("stopped by signal " + std::to_string(caught.load()));
    shm.unlink();
    // The program goes on: a new pool of the same start method works.
    mproc::Pool again({.processes = 2, .method = method});
    int sum = 0;
    for (int v : again.map(slow_identity, std::vector<int>{1, 2, 3, 4})) sum += v;
    say("after " + std::to_string(sum));
  }
  return code;
}
