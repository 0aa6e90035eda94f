// Pipe, side by side: mproc::Pipe vs the raw limit vs Python's multiprocessing.Pipe
// (benchmarks/python/bench_pipe.py), between a parent and a forked child:
//   ping-pong  an int sent and echoed back (+1), per round trip; raw = a bare
//              socketpair with 4-byte write()/read()
//   stream     64 KiB blocks from child to parent (send_bytes/recv_bytes); raw = a
//              bare pipe with 64 KiB write()/read() loops
// Peers (benchmarks/bench_ipc_peers.hpp): Boost.Interprocess message_queue and ZeroMQ
// PUSH/PULL over ipc://, the ping-pong through a pair of each, the stream as 64 KiB
// messages.
// Rounds are interleaved and medians reported, so a noisy machine skews every
// column alike.
//
//   bench_pipe [--rounds N] [--quick] [--json] [--no-python] [--trips N] [--blocks N]
#include <mproc/connection.hpp>
#include <mproc/process.hpp>

#include "bench_common.hpp"
#include "bench_ipc_peers.hpp"

#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

using bench::clk;
using bench::secs_since;
using namespace std::chrono_literals;

namespace {

constexpr std::size_t block = 64 * 1024;

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

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  int trips = 20000, blocks = 8192;
  auto o = bench::parse_args(argc, argv, 7, 3,
                             "[--rounds N] [--quick] [--json] [--no-python] [--trips N] [--blocks N]",
                             [&](std::string_view a, auto& next) {
                               if (a == "--trips") trips = std::max(1, std::atoi(next()));
                               else if (a == "--blocks") blocks = std::max(1, std::atoi(next()));
                               else return false;
                               return true;
                             });
  if (o.quick) trips = std::min(trips, 10000), blocks = std::min(blocks, 4096);
  bench::samples s;
  mproc_pingpong(1000);  // warm up
  raw_pingpong(1000);
  for (int round = 0; round < o.rounds; ++round) {
    bench::note_round("bench_pipe", round, o.rounds);
    s.add("m_pp", mproc_pingpong(trips));
    s.add("r_pp", raw_pingpong(trips));
    s.add("m_st", mproc_stream(blocks));
    s.add("r_st", raw_stream(blocks));
    s.add("bmq_pp", bench::peers::boost_mq_pingpong(trips));
    s.add("zmq_pp", bench::peers::zmq_pingpong(trips));
    s.add("bmq_st", double(block) * blocks / (1 << 20) / bench::peers::boost_mq_transfer(block, blocks, 64));
    s.add("zmq_st", double(block) * blocks / (1 << 20) / bench::peers::zmq_transfer(block, blocks));
    if (o.python) {
      auto py = bench::run_python("bench_pipe.py", std::to_string(trips) + " " + std::to_string(blocks));
      s.add("p_pp", bench::get(py, "pingpong_us"));
      s.add("p_st", bench::get(py, "stream_mib_s"));
    }
  }
  bench::report rep("pipe");
  double m = s.med("m_pp"), r = s.med("r_pp");
  rep.add({.metric = "Pipe ping-pong round trip, us",
           .params = std::to_string(trips) + " round trips of an int",
           .unit = "us",
           .dir = bench::better::lower,
           .mproc = m,
           .python = s.med("p_pp"),
           .raw = r,
           .raw_label = "socketpair",
           .target = "<= 1.2x raw socketpair",
           .met = bench::judged(m <= 1.2 * r, {m, r}),
           .issue = "2",
           .peers = {{"Boost.Interprocess message_queue", s.med("bmq_pp")},
                     {"ZeroMQ ipc:// PUSH/PULL", s.med("zmq_pp")}}});
  m = s.med("m_st"), r = s.med("r_st");
  rep.add({.metric = "Pipe stream of 64 KiB blocks, MiB/s",
           .params = std::to_string(blocks) + " blocks, send_bytes/recv_bytes",
           .unit = "MiB/s",
           .dir = bench::better::higher,
           .mproc = m,
           .python = s.med("p_st"),
           .raw = r,
           .raw_label = "pipe write/read",
           .target = ">= 0.9x raw pipe",
           .met = bench::judged(m >= 0.9 * r, {m, r}),
           .issue = "2",
           .peers = {{"Boost.Interprocess message_queue", s.med("bmq_st")},
                     {"ZeroMQ ipc:// PUSH/PULL", s.med("zmq_st")}}});
  rep.print(o, o.rounds);
}
