// Manager dict throughput: 2 processes x N dict sets (and atomic updates), side by
// side with the limits a shared dict can approach and with Python's Manager
// (benchmarks/python/bench_manager.py). Prints medians of interleaved rounds, ops/s.
//   bench_manager [--rounds R] [--ops N] [--no-python]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include <pthread.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <mproc/managers.hpp>
#include <mproc/process.hpp>

#ifndef MPROC_BENCHMARK_PYTHON_DIR
#define MPROC_BENCHMARK_PYTHON_DIR "benchmarks/python"
#endif
#ifndef MPROC_BENCHMARK_PYTHON
#define MPROC_BENCHMARK_PYTHON "python3"
#endif

namespace {

using clk = std::chrono::steady_clock;

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

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

std::map<std::string, double> run_python(int rounds, int ops) {
  std::map<std::string, double> out;
  std::string cmd = std::string(MPROC_BENCHMARK_PYTHON) + " " MPROC_BENCHMARK_PYTHON_DIR "/bench_manager.py " +
                    std::to_string(rounds) + " " + std::to_string(ops) + " 2>/dev/null";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return out;
  char name[64];
  double v;
  while (std::fscanf(p, "%63s %lf", name, &v) == 2) out[name] = v;
  ::pclose(p);
  return out;
}

// The floor for any locked shared store: a robust process-shared mutex around a
// small memcpy into shared memory.
struct raw_slot_table {
  pthread_mutex_t m;
  char slots[100][32];
};

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  int rounds = 5, ops = 10000;
  bool python = true;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--rounds" && i + 1 < argc) rounds = std::stoi(argv[++i]);
    else if (a == "--ops" && i + 1 < argc) ops = std::stoi(argv[++i]);
    else if (a == "--no-python") python = false;
  }

  std::map<std::string, std::vector<double>> r;
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
    auto d = local.dict<std::string, int>();
    r["mproc_set"].push_back(two_processes(ops, [&](int w) {
      for (int i = 0; i < ops; ++i) d.set(key(w, i), i);
    }));
    auto u = local.dict<std::string, int>();
    r["mproc_update"].push_back(two_processes(ops, [&](int) {
      for (int i = 0; i < ops; ++i) u.update("counter", [](int v) { return v + 1; }, 0);
    }));
    if (u.get("counter") != 2 * ops) {
      std::cerr << "update lost increments!\n";
      return 1;
    }
    std::string addr = tcp.address();
    int tcp_ops = std::max(1, ops / 10);  // round trips are slow; fewer of them
    r["mproc_tcp_set"].push_back(two_processes(tcp_ops, [&](int w) {
      auto c = mproc::Manager::connect(addr, key_tcp);
      auto rd = c.dict<std::string, int>("bench");
      for (int i = 0; i < tcp_ops; ++i) rd.set(key(w, i), i);
    }));
    r["raw_locked_memcpy"].push_back(two_processes(ops, [&](int w) {
      auto* t = table.as<raw_slot_table>();
      char buf[32] = {};
      for (int i = 0; i < ops; ++i) {
        std::snprintf(buf, sizeof buf, "k%d-%d=%d", w, i % 100, i);
        pthread_mutex_lock(&t->m);
        std::memcpy(t->slots[i % 100], buf, sizeof buf);
        pthread_mutex_unlock(&t->m);
      }
    }));
    r["raw_socket_roundtrip"].push_back(two_processes(ops, [&](int) {
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
    if (python) {
      for (auto& [k, v] : run_python(1, ops)) r[k].push_back(v);
    }
  }

  auto med = [&](const char* k) { return median(r[k]); };
  std::printf("Manager dict, 2 processes x %d operations each; median of %d rounds (ops/s, start-up included)\n",
              ops, rounds);
  std::printf("  %-52s %12.0f\n", "mproc Manager dict.set (shared segment)", med("mproc_set"));
  std::printf("  %-52s %12.0f\n", "mproc Manager dict.update (atomic RMW)", med("mproc_update"));
  std::printf("  %-52s %12.0f\n", "mproc Manager dict.set over TCP (remote client)", med("mproc_tcp_set"));
  std::printf("  %-52s %12.0f\n", "limit: robust mutex + memcpy in shared memory", med("raw_locked_memcpy"));
  std::printf("  %-52s %12.0f\n", "limit: Unix socket round trip (any server design)", med("raw_socket_roundtrip"));
  if (python) {
    std::printf("  %-52s %12.0f\n", "Python Manager dict[k] = v", med("python_dict_set"));
    std::printf("  %-52s %12.0f\n", "Python Manager get+set under manager Lock", med("python_locked_update"));
    std::printf("Ratios\n");
    std::printf("  %-52s %12.1fx\n", "mproc set / Python set", med("mproc_set") / med("python_dict_set"));
    std::printf("  %-52s %12.1fx\n", "mproc update / Python locked get+set",
                med("mproc_update") / med("python_locked_update"));
    std::printf("  %-52s %12.1fx\n", "mproc TCP set / Python set", med("mproc_tcp_set") / med("python_dict_set"));
  }
  std::printf("  %-52s %12.2f\n", "mproc set / locked-memcpy limit", med("mproc_set") / med("raw_locked_memcpy"));
  std::printf("  %-52s %12.1fx\n", "mproc set / socket round-trip limit",
              med("mproc_set") / med("raw_socket_roundtrip"));
}
