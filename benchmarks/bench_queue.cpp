// Queue throughput, side by side: mproc::Queue vs the raw limit (a bare lock-free
// SPSC byte ring between two processes, busy-polling, no serialization) vs Python's
// multiprocessing.Queue (benchmarks/python/bench_queue.py) doing the same transfers:
//   ints  200,000 ints, one producer process, one consumer
//   64k   10,000 messages of 64 KiB
//   256m  one 256 MiB message (far bigger than the 4 MiB ring: it streams through in
//         fragments while the consumer reads, so no overflow memory is used)
// Peers (benchmarks/bench_ipc_peers.hpp): Boost.Interprocess message_queue and
// ZeroMQ PUSH/PULL over ipc:// on the ints and the 64 KiB messages.
// Rounds are interleaved and medians reported, so a noisy machine skews every
// column alike. Each run is timed from the producer's go signal to the last get().
//
//   bench_queue [--rounds N] [--quick] [--json] [--no-python]
#include <mproc/process.hpp>
#include <mproc/queue.hpp>

#include "bench_common.hpp"
#include "bench_ipc_peers.hpp"

#include <cstdint>
#include <string>
#include <thread>
#include <vector>

using bench::clk;
using bench::secs_since;
using namespace std::chrono_literals;

namespace {

constexpr long n_ints = 200'000;
constexpr std::size_t block = 64 * 1024;
constexpr long n_blocks = 10'000;
constexpr std::size_t big = 256u << 20;

template <class T, class Produce, class Consume>
double time_transfer(Produce produce, Consume consume) {
  mproc::Queue<int> go;
  mproc::Queue<T> q;
  mproc::Process p([go, q, produce]() mutable {
    produce(go, q);
  });
  p.start();
  std::this_thread::sleep_for(50ms);  // the child builds its payload off the clock
  auto t0 = clk::now();
  go.put(1);
  consume(q);
  double s = secs_since(t0);
  p.join();
  return s;
}

double mproc_ints() {
  return n_ints / time_transfer<int>(
                      [](mproc::Queue<int>& go, mproc::Queue<int>& q) {
                        (void)go.get();
                        for (int i = 0; i < n_ints; ++i) q.put(i);
                      },
                      [](mproc::Queue<int>& q) {
                        long sum = 0;
                        for (long i = 0; i < n_ints; ++i) sum += q.get();
                        if (sum != n_ints * (n_ints - 1) / 2) std::abort();
                      });
}

double mproc_blocks() {
  using V = std::vector<std::uint8_t>;
  return double(block * n_blocks) /
         time_transfer<V>(
             [](mproc::Queue<int>& go, mproc::Queue<V>& q) {
               V payload(block, 7);
               (void)go.get();
               for (long i = 0; i < n_blocks; ++i) q.put(payload);
             },
             [](mproc::Queue<V>& q) {
               for (long i = 0; i < n_blocks; ++i)
                 if (q.get().size() != block) std::abort();
             });
}

double mproc_big() {
  using V = std::vector<std::uint8_t>;
  return double(big) / time_transfer<V>(
                           [](mproc::Queue<int>& go, mproc::Queue<V>& q) {
                             V payload(big, 7);
                             (void)go.get();
                             q.put(payload);
                           },
                           [](mproc::Queue<V>& q) {
                             if (q.get().size() != big) std::abort();
                           });
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  auto o = bench::parse_args(argc, argv, 5, 3, "[--rounds N] [--quick] [--json] [--no-python]");
  bench::samples s;
  for (int r = 0; r < o.rounds; ++r) {
    bench::note_round("bench_queue", r, o.rounds);
    s.add("ints", mproc_ints());
    s.add("64k", mproc_blocks());
    s.add("256m", mproc_big());
    s.add("raw_ints", n_ints / bench::raw_ring_transfer(sizeof(int), n_ints));
    s.add("raw_64k", double(block * n_blocks) / bench::raw_ring_transfer(block, n_blocks));
    s.add("raw_256m", double(big) / bench::raw_ring_transfer(big, 1));
    s.add("memcpy", bench::memcpy_bandwidth(big));
    // The peers: message_queue holds 1024 ints, or 64 x 64 KiB (mproc's 4 MiB ring).
    s.add("bmq_ints", n_ints / bench::peers::boost_mq_transfer(sizeof(int), n_ints, 1024));
    s.add("bmq_64k", double(block * n_blocks) / bench::peers::boost_mq_transfer(block, n_blocks, 64));
    s.add("zmq_ints", n_ints / bench::peers::zmq_transfer(sizeof(int), n_ints));
    s.add("zmq_64k", double(block * n_blocks) / bench::peers::zmq_transfer(block, n_blocks));
    if (o.python) {
      auto py = bench::run_python("bench_queue.py", "ints,64k,256m");
      for (const char* k : {"ints", "64k", "256m"}) s.add(std::string("py_") + k, bench::get(py, k));
    }
  }
  bench::report rep("queue");
  const std::string raw_label = "bare shared-memory SPSC ring";
  double m = s.med("ints"), py = s.med("py_ints");
  rep.add({.metric = "Queue<int> throughput, msg/s",
           .params = "200,000 ints, 1 producer -> 1 consumer process",
           .unit = "msg/s",
           .mproc = m,
           .python = py,
           .raw = s.med("raw_ints"),
           .raw_label = raw_label,
           .target = ">= 5,000,000 msg/s and >= 25x Python",
           .met = bench::judged(m >= 5e6 && m >= 25 * py, {m, py}),
           .issue = "4",
           .peers = {{"Boost.Interprocess message_queue", s.med("bmq_ints")},
                     {"ZeroMQ ipc:// PUSH/PULL", s.med("zmq_ints")}}});
  m = s.med("64k"), py = s.med("py_64k");
  rep.add({.metric = "Queue of 64 KiB messages, GB/s",
           .params = "10,000 x 64 KiB",
           .unit = "GB/s",
           .mproc = m / 1e9,
           .python = py / 1e9,
           .raw = s.med("raw_64k") / 1e9,
           .raw_label = raw_label,
           .target = ">= 3 GB/s and >= 4x Python",
           .met = bench::judged(m >= 3e9 && m >= 4 * py, {m, py}),
           .issue = "4",
           .peers = {{"Boost.Interprocess message_queue", s.med("bmq_64k") / 1e9},
                     {"ZeroMQ ipc:// PUSH/PULL", s.med("zmq_64k") / 1e9}}});
  m = s.med("256m"), py = s.med("py_256m");
  rep.add({.metric = "one 256 MiB message through a Queue, GB/s",
           .params = "4 MiB ring: streams through in fragments",
           .unit = "GB/s",
           .mproc = m / 1e9,
           .python = py / 1e9,
           .raw = s.med("raw_256m") / 1e9,
           .raw_label = raw_label,
           .target = ">= 1 GB/s",
           .met = bench::judged(m >= 1e9, {m}),
           .issue = "4"});
  rep.note("memcpy bandwidth (one core, 256 MiB): " + bench::fmt(s.med("memcpy") / 1e9) + " GB/s");
  rep.print(o, o.rounds);
}
