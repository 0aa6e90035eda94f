// The IPC libraries a user would pick instead of mproc::Queue and Pipe, doing the
// same transfers between a parent and a forked child: Boost.Interprocess
// message_queue (a bounded queue in shared memory with a process-shared mutex and
// condition variables) and ZeroMQ PUSH/PULL over ipc:// (a Unix socket and an I/O
// thread on each side). Each is timed as bench_queue and bench_pipe time mproc: from
// the producer's go signal to the last message received.
#pragma once

#include "bench_common.hpp"

#include <boost/interprocess/ipc/message_queue.hpp>

#ifdef MPROC_BENCH_HAVE_ZMQ
#include <zmq.hpp>
#endif

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

namespace bench::peers {

namespace bip = boost::interprocess;

inline std::string unique_name(const char* what) {
  static int n = 0;
  return std::string("mproc-bench-") + what + "-" + std::to_string(::getpid()) + "-" + std::to_string(++n);
}

/// A pipe the child waits on before producing, so its setup stays off the clock.
struct go_signal {
  int fds[2]{-1, -1};
  go_signal() {
    if (::pipe(fds) != 0) std::abort();
  }
  void wait() {
    char c;
    if (::read(fds[0], &c, 1) != 1) ::_exit(3);
  }
  void fire() {
    if (::write(fds[1], "g", 1) != 1) std::abort();
  }
  ~go_signal() {
    ::close(fds[0]);
    ::close(fds[1]);
  }
};

inline void reap(pid_t pid) {
  int st = 0;
  ::waitpid(pid, &st, 0);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) std::fprintf(stderr, "peer benchmark child failed\n");
}

// ------------------------------------------------------------- Boost.Interprocess

/// Seconds to move `count` messages of `size` bytes through a message_queue holding
/// up to `depth` of them.
inline double boost_mq_transfer(std::size_t size, long count, std::size_t depth) {
  const std::string name = unique_name("bmq");
  bip::message_queue::remove(name.c_str());
  auto q = std::make_unique<bip::message_queue>(bip::create_only, name.c_str(), depth, size);
  go_signal go;
  pid_t pid = ::fork();
  if (pid == 0) {
    bip::message_queue cq(bip::open_only, name.c_str());
    std::vector<char> msg(size, 7);
    go.wait();
    for (long i = 0; i < count; ++i) {
      std::memcpy(msg.data(), &i, std::min(sizeof i, size));
      cq.send(msg.data(), size, 0);
    }
    ::_exit(0);
  }
  std::vector<char> buf(size);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  auto t0 = clk::now();
  go.fire();
  long sum = 0;
  for (long i = 0; i < count; ++i) {
    bip::message_queue::size_type got = 0;
    unsigned prio = 0;
    q->receive(buf.data(), size, got, prio);
    if (got != size) std::abort();
    int v;
    std::memcpy(&v, buf.data(), sizeof v);
    sum += v;
  }
  const double s = secs_since(t0);
  if (size >= sizeof(int) && sum != count * (count - 1) / 2) std::fprintf(stderr, "boost mq: wrong sum\n");
  reap(pid);
  q.reset();
  bip::message_queue::remove(name.c_str());
  return s;
}

/// Microseconds per round trip of an int through two message_queues.
inline double boost_mq_pingpong(int trips) {
  const std::string a = unique_name("bmq-ping"), b = unique_name("bmq-pong");
  bip::message_queue::remove(a.c_str());
  bip::message_queue::remove(b.c_str());
  auto ping = std::make_unique<bip::message_queue>(bip::create_only, a.c_str(), 1, sizeof(int));
  auto pong = std::make_unique<bip::message_queue>(bip::create_only, b.c_str(), 1, sizeof(int));
  pid_t pid = ::fork();
  if (pid == 0) {
    bip::message_queue in(bip::open_only, a.c_str()), out(bip::open_only, b.c_str());
    for (int i = 0; i < trips; ++i) {
      int v;
      bip::message_queue::size_type got;
      unsigned prio;
      in.receive(&v, sizeof v, got, prio);
      ++v;
      out.send(&v, sizeof v, 0);
    }
    ::_exit(0);
  }
  int v = 0;
  auto t0 = clk::now();
  for (int i = 0; i < trips; ++i) {
    ping->send(&v, sizeof v, 0);
    bip::message_queue::size_type got;
    unsigned prio;
    pong->receive(&v, sizeof v, got, prio);
  }
  const double us = secs_since(t0) / trips * 1e6;
  if (v != trips) std::fprintf(stderr, "boost mq ping-pong: wrong count\n");
  reap(pid);
  ping.reset();
  pong.reset();
  bip::message_queue::remove(a.c_str());
  bip::message_queue::remove(b.c_str());
  return us;
}

// ------------------------------------------------------------------- ZeroMQ

#ifdef MPROC_BENCH_HAVE_ZMQ
inline constexpr bool have_zmq = true;

inline std::string ipc_endpoint(const char* what) { return "ipc:///tmp/" + unique_name(what); }

/// Seconds to move `count` messages of `size` bytes over PUSH/PULL on ipc://. Each
/// process makes its own context after the fork (a context must not cross one). The
/// pusher keeps its socket open until the puller has everything: a pusher that closes
/// while the puller's queue is at its high-water mark loses what still sits in the
/// socket buffer (libzmq 4.3: 47,782 of 50,000 ints arrived).
inline double zmq_transfer(std::size_t size, long count) {
  const std::string ep = ipc_endpoint("zmq");
  go_signal go, bound, received;
  pid_t pid = ::fork();
  if (pid == 0) {
    zmq::context_t ctx(1);
    zmq::socket_t push(ctx, zmq::socket_type::push);
    bound.wait();
    push.connect(ep);
    std::vector<char> msg(size, 7);
    go.wait();
    for (long i = 0; i < count; ++i) {
      std::memcpy(msg.data(), &i, std::min(sizeof i, size));
      push.send(zmq::buffer(msg), zmq::send_flags::none);
    }
    received.wait();
    push.close();
    ctx.close();  // lingers until every message is delivered
    ::_exit(0);
  }
  zmq::context_t ctx(1);
  zmq::socket_t pull(ctx, zmq::socket_type::pull);
  pull.bind(ep);
  bound.fire();
  std::vector<char> buf(size);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // connected off the clock
  auto t0 = clk::now();
  go.fire();
  long sum = 0;
  for (long i = 0; i < count; ++i) {
    auto got = pull.recv(zmq::buffer(buf), zmq::recv_flags::none);
    if (!got || got->size != size) std::abort();
    int v;
    std::memcpy(&v, buf.data(), sizeof v);
    sum += v;
  }
  const double s = secs_since(t0);
  received.fire();
  if (size >= sizeof(int) && sum != count * (count - 1) / 2) std::fprintf(stderr, "zmq: wrong sum\n");
  reap(pid);
  return s;
}

/// Microseconds per round trip of an int: PUSH/PULL one way, PUSH/PULL back.
inline double zmq_pingpong(int trips) {
  const std::string there = ipc_endpoint("zmq-ping"), back = ipc_endpoint("zmq-pong");
  go_signal bound;
  pid_t pid = ::fork();
  if (pid == 0) {
    zmq::context_t ctx(1);
    zmq::socket_t in(ctx, zmq::socket_type::pull), out(ctx, zmq::socket_type::push);
    bound.wait();
    in.connect(there);
    out.connect(back);
    for (int i = 0; i < trips; ++i) {
      int v;
      if (!in.recv(zmq::mutable_buffer(&v, sizeof v), zmq::recv_flags::none)) ::_exit(4);
      ++v;
      out.send(zmq::const_buffer(&v, sizeof v), zmq::send_flags::none);
    }
    out.close();
    in.close();
    ctx.close();
    ::_exit(0);
  }
  zmq::context_t ctx(1);
  zmq::socket_t out(ctx, zmq::socket_type::push), in(ctx, zmq::socket_type::pull);
  out.bind(there);
  in.bind(back);
  bound.fire();
  int v = 0;
  // The first trip connects; it is not timed.
  out.send(zmq::const_buffer(&v, sizeof v), zmq::send_flags::none);
  if (!in.recv(zmq::mutable_buffer(&v, sizeof v), zmq::recv_flags::none)) std::abort();
  auto t0 = clk::now();
  for (int i = 1; i < trips; ++i) {
    out.send(zmq::const_buffer(&v, sizeof v), zmq::send_flags::none);
    if (!in.recv(zmq::mutable_buffer(&v, sizeof v), zmq::recv_flags::none)) std::abort();
  }
  const double us = secs_since(t0) / (trips - 1) * 1e6;
  if (v != trips) std::fprintf(stderr, "zmq ping-pong: wrong count\n");
  reap(pid);
  return us;
}
#else
inline constexpr bool have_zmq = false;
inline double zmq_transfer(std::size_t, long) { return NAN; }
inline double zmq_pingpong(int) { return NAN; }
#endif

}  // namespace bench::peers
