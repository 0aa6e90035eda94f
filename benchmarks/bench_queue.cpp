// Queue throughput, side by side: mproc::Queue vs the raw limit (a bare lock-free
// SPSC byte ring between two processes, busy-polling, no serialization) vs Python's
// multiprocessing.Queue (benchmarks/python/bench_queue.py) doing the same transfers:
//   ints  200,000 ints, one producer process, one consumer
//   64k   10,000 messages of 64 KiB
//   256m  one 256 MiB message (far bigger than the 4 MiB ring: it streams through in
//         fragments while the consumer reads, so no overflow memory is used)
// Rounds are interleaved and medians reported, so a noisy machine skews every
// column alike. Each run is timed from the producer's go signal to the last get().
//
//   bench_queue [--rounds N] [--no-python]
#include <mproc/process.hpp>
#include <mproc/queue.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <sched.h>
#include <sys/mman.h>
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

constexpr long n_ints = 200'000;
constexpr std::size_t block = 64 * 1024;
constexpr long n_blocks = 10'000;
constexpr std::size_t big = 256u << 20;

double secs_since(clk::time_point t0) { return std::chrono::duration<double>(clk::now() - t0).count(); }

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

// ------------------------------------------------------------------ raw limit
// Bare SPSC byte ring in anonymous shared memory: fixed-size messages, busy polling,
// memcpy in and out, nothing else. What two processes can do at best.
struct raw_ring {
  alignas(64) std::atomic<std::uint64_t> head;
  alignas(64) std::atomic<std::uint64_t> tail;
  alignas(64) std::atomic<int> go;
};

double raw_transfer(std::size_t msg, long count) {
  const std::size_t cap = 4u << 20;
  const std::size_t step = std::min(msg, cap / 4);  // big messages move in 1 MiB pieces
  void* mem = ::mmap(nullptr, sizeof(raw_ring) + cap, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) std::abort();
  auto* r = new (mem) raw_ring{};
  auto* data = static_cast<std::byte*>(mem) + sizeof(raw_ring);
  const std::uint64_t total = std::uint64_t(msg) * std::uint64_t(count);
  pid_t pid = ::fork();
  if (pid == 0) {
    std::vector<std::byte> src(msg, std::byte{7});
    while (!r->go.load(std::memory_order_acquire)) {
    }
    std::uint64_t t = 0, h = 0;
    for (std::uint64_t sent = 0; sent < total;) {
      std::size_t off = std::size_t(sent % msg), n = std::min(step, msg - off);
      for (int spins = 0; cap - (t - h) < n; ++spins) {
        if (spins > 1000) ::sched_yield();  // a shared core: let the other side run
        h = r->head.load(std::memory_order_acquire);
      }
      // Contiguous pieces: n divides cap for every size used here.
      std::memcpy(data + (t % cap), src.data() + off, n);
      t += n;
      sent += n;
      r->tail.store(t, std::memory_order_release);
    }
    ::_exit(0);
  }
  std::vector<std::byte> dst(msg);
  std::this_thread::sleep_for(50ms);
  auto t0 = clk::now();
  r->go.store(1, std::memory_order_release);
  std::uint64_t h = 0, t = 0;
  for (std::uint64_t got = 0; got < total;) {
    std::size_t off = std::size_t(got % msg), n = std::min(step, msg - off);
    for (int spins = 0; t - h < n; ++spins) {
      if (spins > 1000) ::sched_yield();
      t = r->tail.load(std::memory_order_acquire);
    }
    std::memcpy(dst.data() + off, data + (h % cap), n);
    h += n;
    got += n;
    r->head.store(h, std::memory_order_release);
  }
  double s = secs_since(t0);
  int st;
  ::waitpid(pid, &st, 0);
  ::munmap(mem, sizeof(raw_ring) + cap);
  return s;
}

double memcpy_bandwidth() {
  std::vector<std::byte> a(big, std::byte{1}), b(big);
  auto t0 = clk::now();
  std::memcpy(b.data(), a.data(), big);
  double s = secs_since(t0);
  if (b[big / 2] != std::byte{1}) std::abort();
  return double(big) / s;
}

std::map<std::string, double> run_python() {
  std::string cmd = std::string(MPROC_BENCHMARK_PYTHON) + " " MPROC_BENCHMARK_PYTHON_DIR "/bench_queue.py 2>/dev/null";
  std::map<std::string, double> out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return out;
  char name[64];
  double v;
  while (std::fscanf(p, "%63s %lf", name, &v) == 2) out[name] = v;
  ::pclose(p);
  return out;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  int rounds = 5;
  bool python = true;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--rounds" && i + 1 < argc) rounds = std::max(1, std::atoi(argv[++i]));
    if (a == "--no-python") python = false;
  }
  std::map<std::string, std::vector<double>> m, raw, py;
  std::vector<double> mcpy;
  for (int r = 0; r < rounds; ++r) {
    m["ints"].push_back(mproc_ints());
    m["64k"].push_back(mproc_blocks());
    m["256m"].push_back(mproc_big());
    raw["ints"].push_back(n_ints / raw_transfer(sizeof(int), n_ints));
    raw["64k"].push_back(double(block * n_blocks) / raw_transfer(block, n_blocks));
    raw["256m"].push_back(double(big) / raw_transfer(big, 1));
    mcpy.push_back(memcpy_bandwidth());
    if (python)
      for (auto& [k, v] : run_python()) py[k].push_back(v);
    std::fprintf(stderr, "round %d/%d done\n", r + 1, rounds);
  }

  std::printf("Queue throughput, median of %d rounds (1 producer process -> 1 consumer)\n", rounds);
  std::printf("%-24s %14s %14s %14s %9s %9s\n", "transfer", "mproc", "raw SPSC ring", "Python mp", "vs raw",
              "vs Python");
  struct row {
    const char* key;
    const char* label;
    const char* unit;
    double scale;
  };
  for (row x : {row{"ints", "200,000 ints", "M msg/s", 1e6}, row{"64k", "10,000 x 64 KiB", "GB/s", 1e9},
                row{"256m", "one 256 MiB message", "GB/s", 1e9}}) {
    double a = median(m[x.key]), b = median(raw[x.key]), c = median(py[x.key]);
    char cs[32] = "n/a", ratio_py[16] = "n/a";
    if (c > 0) {
      std::snprintf(cs, sizeof cs, "%.3f %s", c / x.scale, x.unit);
      std::snprintf(ratio_py, sizeof ratio_py, "%.1fx", a / c);
    }
    char as[32], bs[32];
    std::snprintf(as, sizeof as, "%.3f %s", a / x.scale, x.unit);
    std::snprintf(bs, sizeof bs, "%.3f %s", b / x.scale, x.unit);
    std::printf("%-24s %14s %14s %14s %8.0f%% %9s\n", x.label, as, bs, cs, 100 * a / b, ratio_py);
  }
  std::printf("memcpy bandwidth (one core, 256 MiB): %.2f GB/s\n", median(mcpy) / 1e9);
}
