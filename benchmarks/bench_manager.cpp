// Manager dict throughput: 2 processes x N dict sets (and atomic updates), side by
// side with the limits a shared dict can approach and with Python's Manager
// (benchmarks/python/bench_manager.py). Prints medians of interleaved rounds, ops/s.
//   bench_manager [--rounds N] [--quick] [--json] [--no-python] [--ops N]
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include <pthread.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <mproc/managers.hpp>
#include <mproc/process.hpp>

#include "bench_common.hpp"

namespace {

using bench::clk;

/// Runs body(worker) in two processes; returns total ops / wall seconds (process
/// start-up included, as on the Python side).
template <class Body>
double two_processes(int ops_each, Body body) {
  auto t0 = clk::now();
  std::vector<mproc::Process> ps;
  for (int w = 0; w < 2; ++w) ps.emplace_back(body, w);
  for (auto& p : ps) p.start();
  for (auto& p : ps) {
    p.join();
    if (p.exitcode() != 0) {
      std::cerr << "benchmark worker failed\n";
      std::exit(1);
    }
  }
  double s = std::chrono::duration<double>(clk::now() - t0).count();
  return 2.0 * ops_each / s;
}

std::string key(int w, int i) { return "k" + std::to_string(w) + "-" + std::to_string(i % 100); }

// The floor for any locked shared store: a robust process-shared mutex around a
// small memcpy into shared memory.
struct raw_slot_table {
  pthread_mutex_t m;
  char slots[100][32];
};

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  int ops = 10000;
  auto o = bench::parse_args(argc, argv, 5, 3, "[--rounds N] [--quick] [--json] [--no-python] [--ops N]",
                             [&](std::string_view a, auto& next) {
                               if (a != "--ops") return false;
                               ops = std::max(1, std::atoi(next()));
                               return true;
                             });
  const int rounds = o.rounds;
  bench::samples r;
  const std::string key_tcp = "bench-key";
  mproc::Manager local;
  mproc::Manager tcp({.address = "127.0.0.1:0", .authkey = key_tcp});
  auto table = mproc::detail::shm_region::create(sizeof(raw_slot_table));
  {
    auto* t = table.as<raw_slot_table>();
    pthread_mutexattr_t at;
    pthread_mutexattr_init(&at);
    pthread_mutexattr_setpshared(&at, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&at, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(&t->m, &at);
  }

  for (int round = 0; round < rounds; ++round) {
    bench::note_round("bench_manager", round, rounds);
    auto d = local.dict<std::string, int>();
    r.add("mproc_set", two_processes(ops, [&](int w) {
      for (int i = 0; i < ops; ++i) d.set(key(w, i), i);
    }));
    auto u = local.dict<std::string, int>();
    r.add("mproc_update", two_processes(ops, [&](int) {
      for (int i = 0; i < ops; ++i) u.update("counter", [](int v) { return v + 1; }, 0);
    }));
    if (u.get("counter") != 2 * ops) {
      std::cerr << "update lost increments!\n";
      return 1;
    }
    std::string addr = tcp.address();
    int tcp_ops = std::max(1, ops / 10);  // round trips are slow; fewer of them
    r.add("mproc_tcp_set", two_processes(tcp_ops, [&](int w) {
      auto c = mproc::Manager::connect(addr, key_tcp);
      auto rd = c.dict<std::string, int>("bench");
      for (int i = 0; i < tcp_ops; ++i) rd.set(key(w, i), i);
    }));
    r.add("raw_locked_memcpy", two_processes(ops, [&](int w) {
      auto* t = table.as<raw_slot_table>();
      char buf[32] = {};
      for (int i = 0; i < ops; ++i) {
        std::snprintf(buf, sizeof buf, "k%d-%d=%d", w, i % 100, i);
        pthread_mutex_lock(&t->m);
        std::memcpy(t->slots[i % 100], buf, sizeof buf);
        pthread_mutex_unlock(&t->m);
      }
    }));
    r.add("raw_socket_roundtrip", two_processes(ops, [&](int) {
      // Each worker ping-pongs with an echo process: the cost per operation of any
      // design that asks a server.
      int sv[2];
      ::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv);
      pid_t echo = ::fork();
      if (echo == 0) {
        ::close(sv[0]);  // or its own copy would keep the socket open after the worker closes it
        char b[32];
        for (;;) {
          ssize_t n = ::read(sv[1], b, sizeof b);
          if (n <= 0) ::_exit(0);
          if (::write(sv[1], b, std::size_t(n)) != n) ::_exit(1);
        }
      }
      ::close(sv[1]);
      char b[32] = {};
      for (int i = 0; i < ops; ++i) {
        if (::write(sv[0], b, sizeof b) != sizeof b) std::exit(1);
        std::size_t got = 0;
        while (got < sizeof b) {
          ssize_t n = ::read(sv[0], b + got, sizeof b - got);
          if (n <= 0) std::exit(1);
          got += std::size_t(n);
        }
      }
      ::close(sv[0]);
      ::waitpid(echo, nullptr, 0);
    }));
    if (o.python) {
      auto py = bench::run_python("bench_manager.py", "1 " + std::to_string(ops));
      r.add("python_dict_set", bench::get(py, "python_dict_set"));
      r.add("python_locked_update", bench::get(py, "python_locked_update"));
    }
  }

  auto med = [&](const char* k) { return r.med(k); };
  bench::report rep("manager");
  const std::string params = "2 processes x " + std::to_string(ops) + " ops, start-up included";
  double m = med("mproc_set"), py = med("python_dict_set");
  rep.add({.metric = "Manager dict set, ops/s",
           .params = params,
           .unit = "ops/s",
           .mproc = m,
           .python = py,
           .raw = med("raw_locked_memcpy"),
           .raw_label = "robust mutex + memcpy in shared memory",
           .target = ">= 5x Python's Manager",
           .met = bench::judged(m >= 5 * py, {m, py}),
           .issue = "6"});
  rep.add({.metric = "Manager dict update (atomic read-modify-write), ops/s",
           .params = params + "; Python: get+set under a manager Lock",
           .unit = "ops/s",
           .mproc = med("mproc_update"),
           .python = med("python_locked_update"),
           .raw = med("raw_locked_memcpy"),
           .raw_label = "robust mutex + memcpy in shared memory",
           .target = "report",
           .met = std::nullopt,
           .issue = "6"});
  rep.add({.metric = "Manager dict set over TCP (remote client), ops/s",
           .params = "2 processes x " + std::to_string(std::max(1, ops / 10)) + " ops, start-up included",
           .unit = "ops/s",
           .mproc = med("mproc_tcp_set"),
           .python = py,
           .raw = med("raw_socket_roundtrip"),
           .raw_label = "Unix socket round trip",
           .target = "report",
           .met = std::nullopt,
           .issue = "6"});
  rep.print(o, rounds);
}
