// Pipe, side by side: mproc::Pipe vs the raw limit vs Python's multiprocessing.Pipe
// (benchmarks/python/bench_pipe.py), between a parent and a forked child:
//   ping-pong  an int sent and echoed back (+1), per round trip; raw = a bare
//              socketpair with 4-byte write()/read()
//   stream     64 KiB blocks from child to parent (send_bytes/recv_bytes); raw = a
//              bare pipe with 64 KiB write()/read() loops
// Rounds are interleaved and medians reported, so a noisy machine skews every
// column alike.
//
//   bench_pipe [--rounds N] [--trips N] [--blocks N] [--no-python]
#include <mproc/connection.hpp>
#include <mproc/process.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef MPROC_BENCHMARK_PYTHON_DIR
#define MPROC_BENCHMARK_PYTHON_DIR "benchmarks/python"
#endif
#ifndef MPROC_BENCHMARK_PYTHON
#define MPROC_BENCHMARK_PYTHON "python3"
#endif

using clk = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

constexpr std::size_t block = 64 * 1024;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}
double best(const std::vector<double>& v, bool larger_is_better) {
  if (v.empty()) return 0;
  return larger_is_better ? *std::max_element(v.begin(), v.end()) : *std::min_element(v.begin(), v.end());
}
double secs_since(clk::time_point t0) { return std::chrono::duration<double>(clk::now() - t0).count(); }

void read_full(int fd, void* p, std::size_t n) {
  auto* c = static_cast<char*>(p);
  while (n) {
    ssize_t r = ::read(fd, c, n);
    if (r <= 0) {
      if (r < 0 && errno == EINTR) continue;
      std::fprintf(stderr, "read failed\n");
      std::exit(1);
    }
    c += r;
    n -= std::size_t(r);
  }
}
void write_full(int fd, const void* p, std::size_t n) {
  auto* c = static_cast<const char*>(p);
  while (n) {
    ssize_t w = ::write(fd, c, n);
    if (w <= 0) {
      if (w < 0 && errno == EINTR) continue;
      std::fprintf(stderr, "write failed\n");
      std::exit(1);
    }
    c += w;
    n -= std::size_t(w);
  }
}

/// Microseconds per round trip.
double mproc_pingpong(int trips) {
  auto [a, b] = mproc::Pipe();
  mproc::Process p(
      [](mproc::Connection c) {
        for (;;) {
          int v = c.recv<int>();
          if (v < 0) return;
          c.send(v + 1);
        }
      },
      b);
  p.start();
  b.close();
  a.send(0);
  (void)a.recv<int>();
  auto t0 = clk::now();
  int v = 0;
  for (int i = 0; i < trips; ++i) {
    a.send(v);
    v = a.recv<int>();
  }
  double s = secs_since(t0);
  a.send(-1);
  p.join();
  if (v != trips) std::abort();
  return s / trips * 1e6;
}

double raw_pingpong(int trips) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) std::abort();
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(sv[0]);
    for (;;) {
      int v;
      read_full(sv[1], &v, sizeof v);
      if (v < 0) ::_exit(0);
      ++v;
      write_full(sv[1], &v, sizeof v);
    }
  }
  ::close(sv[1]);
  int v = 0;
  write_full(sv[0], &v, sizeof v);
  read_full(sv[0], &v, sizeof v);
  v = 0;
  auto t0 = clk::now();
  for (int i = 0; i < trips; ++i) {
    write_full(sv[0], &v, sizeof v);
    read_full(sv[0], &v, sizeof v);
  }
  double s = secs_since(t0);
  int stop = -1;
  write_full(sv[0], &stop, sizeof stop);
  ::waitpid(pid, nullptr, 0);
  ::close(sv[0]);
  if (v != trips) std::abort();
  return s / trips * 1e6;
}

/// MiB/s.
double mproc_stream(int blocks) {
  auto [rx, tx] = mproc::Pipe(false);
  auto [go_a, go_b] = mproc::Pipe();
  mproc::Process p(
      [blocks](mproc::Connection go, mproc::Connection out) {
        std::vector<std::byte> payload(block, std::byte{1});
        (void)go.recv<int>();
        for (int i = 0; i < blocks; ++i) out.send_bytes(std::span<const std::byte>(payload));
      },
      go_b, tx);
  p.start();
  tx.close();
  std::this_thread::sleep_for(20ms);
  auto t0 = clk::now();
  go_a.send(1);
  std::size_t total = 0;
  for (int i = 0; i < blocks; ++i) total += rx.recv_bytes().size();
  double s = secs_since(t0);
  p.join();
  if (total != block * std::size_t(blocks)) std::abort();
  return double(total) / s / (1 << 20);
}

double raw_stream(int blocks) {
  int fds[2], go[2];
  if (::pipe2(fds, O_CLOEXEC) != 0 || ::pipe2(go, O_CLOEXEC) != 0) std::abort();
  pid_t pid = ::fork();
  if (pid == 0) {
    std::vector<char> payload(block, 1);
    char c;
    read_full(go[0], &c, 1);
    for (int i = 0; i < blocks; ++i) write_full(fds[1], payload.data(), block);
    ::_exit(0);
  }
  ::close(fds[1]);
  std::vector<char> buf(block);
  std::this_thread::sleep_for(20ms);
  auto t0 = clk::now();
  write_full(go[1], "g", 1);
  for (int i = 0; i < blocks; ++i) read_full(fds[0], buf.data(), block);
  double s = secs_since(t0);
  ::waitpid(pid, nullptr, 0);
  ::close(fds[0]);
  ::close(go[0]);
  ::close(go[1]);
  return double(block) * blocks / s / (1 << 20);
}

/// Runs the Python twin once; fills its two results (0 on failure).
void python_round(int trips, int blocks, double& pingpong_us, double& stream_mib_s) {
  std::string cmd = std::string(MPROC_BENCHMARK_PYTHON[0] ? MPROC_BENCHMARK_PYTHON : "python3") +
                    " " MPROC_BENCHMARK_PYTHON_DIR "/bench_pipe.py " + std::to_string(trips) + " " +
                    std::to_string(blocks);
  pingpong_us = stream_mib_s = 0;
  FILE* f = ::popen(cmd.c_str(), "r");
  if (!f) return;
  char line[512] = {};
  bool got = std::fgets(line, sizeof line, f) != nullptr;
  ::pclose(f);
  if (!got) return;
  auto field = [&](const char* key) {
    const char* p = std::strstr(line, key);
    return p ? std::strtod(p + std::strlen(key) + 3, nullptr) : 0.0;
  };
  pingpong_us = field("pingpong_us");
  stream_mib_s = field("stream_mib_s");
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  int rounds = 7, trips = 20000, blocks = 8192;
  bool python = true;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--rounds" && i + 1 < argc) rounds = std::atoi(argv[++i]);
    else if (a == "--trips" && i + 1 < argc) trips = std::atoi(argv[++i]);
    else if (a == "--blocks" && i + 1 < argc) blocks = std::atoi(argv[++i]);
    else if (a == "--no-python") python = false;
  }
  std::vector<double> mp, rp, pp, ms, rs, ps;
  mproc_pingpong(1000);  // warm up
  raw_pingpong(1000);
  for (int round = 0; round < rounds; ++round) {
    mp.push_back(mproc_pingpong(trips));
    rp.push_back(raw_pingpong(trips));
    ms.push_back(mproc_stream(blocks));
    rs.push_back(raw_stream(blocks));
    if (python) {
      double a, b;
      python_round(trips, blocks, a, b);
      pp.push_back(a);
      ps.push_back(b);
    }
  }
  std::printf("Pipe, median of %d rounds (best round in brackets: on a busy machine the\n"
              "medians carry scheduling noise, the best rounds show the code's own cost)\n", rounds);
  std::printf("ping-pong (int, %d round trips), us per round trip\n", trips);
  std::printf("  %-30s %10.2f  [%.2f]\n", "mproc::Pipe", median(mp), best(mp, false));
  std::printf("  %-30s %10.2f  [%.2f]\n", "raw socketpair", median(rp), best(rp, false));
  if (python) std::printf("  %-30s %10.2f  [%.2f]\n", "python mp.Pipe", median(pp), best(pp, false));
  std::printf("  ratio mproc/raw      %6.2fx  (target <= 1.2x; best rounds %.2fx)\n",
              median(mp) / median(rp), best(mp, false) / best(rp, false));
  if (python && median(pp) > 0) std::printf("  ratio python/mproc   %6.2fx\n", median(pp) / median(mp));
  std::printf("stream (64 KiB blocks, %d per round), MiB/s\n", blocks);
  std::printf("  %-30s %10.0f  [%.0f]\n", "mproc::Pipe send_bytes", median(ms), best(ms, true));
  std::printf("  %-30s %10.0f  [%.0f]\n", "raw pipe write/read", median(rs), best(rs, true));
  if (python) std::printf("  %-30s %10.0f  [%.0f]\n", "python mp.Pipe send_bytes", median(ps), best(ps, true));
  std::printf("  ratio mproc/raw      %6.2fx  (target >= 0.9x; best rounds %.2fx)\n",
              median(ms) / median(rs), best(ms, true) / best(rs, true));
  if (python && median(ps) > 0) std::printf("  ratio mproc/python   %6.2fx\n", median(ms) / median(ps));
}
