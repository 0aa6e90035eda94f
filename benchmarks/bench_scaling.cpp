// Cost growth: how time grows with the amount of work, side by side with Python's
// multiprocessing (benchmarks/python/bench_scaling.py) and the raw limit.
//   pool_map   Pool(2).map(identity, n ints), default chunksize, n = 10^3 .. 10^7
//              (Python up to 10^6 with --quick, where each of its runs already takes
//              a noticeable part of the quick budget)
//   pool_async n apply_async(identity, i) outstanding at once, then get() on each,
//              n = 10^3 .. 10^6 (Python up to 10^5 with --quick)
//   queue_msg  messages of 8 B .. 64 MiB through a Queue, one producer process, one
//              consumer; raw = a bare shared-memory SPSC ring
//   pipe_msg   the same sizes through a Pipe (send_bytes, then recv_bytes, and
//              recv_bytes_into a reused buffer: "mproc_into"); raw = a bare
//              socketpair with write()/read() loops
// Each size moves about the same number of bytes (at least a few messages, at most
// 20,000), so every point costs similar time. Medians of interleaved rounds.
//
// Linear growth is checked, not assumed: over the large end (the small end carries
// fixed costs) the log-log slope of time against work must be close to 1, and no
// step from one size to the next may grow much faster than the work (a cliff).
//
//   bench_scaling [--rounds N] [--quick] [--json] [--no-python]
#include <mproc/connection.hpp>
#include <mproc/pool.hpp>
#include <mproc/process.hpp>
#include <mproc/queue.hpp>

#include "bench_common.hpp"

#include <cmath>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

using bench::clk;
using bench::secs_since;

namespace {

using bytes = std::vector<std::uint8_t>;

int identity(int x) { return x; }

/// Message sizes 8 B, 64 B, ... 16 MiB (x8 steps), then 64 MiB.
std::vector<std::size_t> message_sizes() {
  std::vector<std::size_t> v;
  for (std::size_t s = 8; s <= (16u << 20); s *= 8) v.push_back(s);
  v.push_back(64u << 20);
  return v;
}

/// How many messages of `size` to move: about `volume` bytes, 3..20,000 messages.
long message_count(std::size_t size, std::size_t volume) {
  return std::clamp<long>(long(volume / size), 3, 20'000);
}

double mproc_pool_map(mproc::Pool& pool, std::size_t n) {
  const std::vector<int> in(n, 1);
  auto t = clk::now();
  auto out = pool.map(identity, in);
  const double s = secs_since(t);
  if (out.size() != n || out.back() != 1) throw std::runtime_error("pool_map: wrong result");
  return s;
}

/// n apply_async calls outstanding at once, then get() on each.
double mproc_pool_async(mproc::Pool& pool, std::size_t n) {
  std::vector<mproc::AsyncResult<int>> rs;
  rs.reserve(n);
  auto t = clk::now();
  for (std::size_t i = 0; i < n; ++i) rs.push_back(pool.apply_async(identity, 1));
  long sum = 0;
  for (auto& r : rs) sum += r.get();
  const double s = secs_since(t);
  if (sum != static_cast<long>(n)) throw std::runtime_error("pool_async: wrong result");
  return s;
}

double mproc_queue(std::size_t size, long count) {
  mproc::Queue<int> go;
  mproc::Queue<bytes> q;
  mproc::Process p(
      [](mproc::Queue<int> go, mproc::Queue<bytes> q, std::size_t size, long count) {
        const bytes payload(size, 7);
        (void)go.get();
        for (long i = 0; i < count; ++i) q.put(payload);
      },
      go, q, size, count);
  p.start();
  std::this_thread::sleep_for(std::chrono::milliseconds(30));  // the child builds its payload off the clock
  auto t = clk::now();
  go.put(1);
  for (long i = 0; i < count; ++i)
    if (q.get().size() != size) throw std::runtime_error("queue_msg: wrong size");
  const double s = secs_since(t);
  p.join();
  return s;
}

/// With `into`, the parent receives with recv_bytes_into into one buffer it reuses, as
/// the raw limit does; otherwise recv_bytes returns a new vector per message.
double mproc_pipe(std::size_t size, long count, bool into) {
  auto [rx, tx] = mproc::Pipe(false);
  auto [go_a, go_b] = mproc::Pipe();
  mproc::Process p(
      [](mproc::Connection go, mproc::Connection out, std::size_t size, long count) {
        const std::vector<std::byte> payload(size, std::byte{7});
        (void)go.recv<int>();
        for (long i = 0; i < count; ++i) out.send_bytes(std::span<const std::byte>(payload));
      },
      go_b, tx, size, count);
  p.start();
  tx.close();
  std::vector<std::byte> buf(into ? size : 0);  // allocated (and touched) off the clock, as the raw limit's
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  auto t = clk::now();
  go_a.send(1);
  for (long i = 0; i < count; ++i)
    if ((into ? rx.recv_bytes_into(std::span<std::byte>(buf)) : rx.recv_bytes().size()) != size)
      throw std::runtime_error("pipe_msg: wrong size");
  const double s = secs_since(t);
  p.join();
  return s;
}

/// The same map on 2 std::threads splitting the input in halves: the limit for
/// tiny tasks on this machine (no copying between address spaces at all).
double raw_threads_map(std::size_t n) {
  const std::vector<int> in(n, 1);
  std::vector<int> out(n);
  auto t = clk::now();
  auto half = [&](std::size_t lo, std::size_t hi) {
    for (std::size_t i = lo; i < hi; ++i) out[i] = identity(in[i]);
  };
  std::thread a(half, 0, n / 2), b(half, n / 2, n);
  a.join();
  b.join();
  const double s = secs_since(t);
  if (out.back() != 1) throw std::runtime_error("threads map: wrong result");
  return s;
}

/// Repeats a short measurement until it covers `items` items of work in all, so that
/// tiny points are not one timer tick or one preemption; seconds per run.
template <class F>
double per_run(std::size_t n, std::size_t items, F run) {
  const std::size_t reps = std::max<std::size_t>(1, items / n);
  double total = 0;
  for (std::size_t i = 0; i < reps; ++i) total += run(n);
  return total / double(reps);
}

bool io_full(bool writing, int fd, std::byte* p, std::size_t n) {
  while (n) {
    ssize_t r = writing ? ::write(fd, p, n) : ::read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= std::size_t(r);
  }
  return true;
}

/// The same messages over a bare socketpair: the size is known to both sides, so
/// this is only the kernel's copy in and out.
double raw_socketpair(std::size_t size, long count) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) throw std::runtime_error("socketpair");
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(sv[0]);
    std::vector<std::byte> payload(size, std::byte{7});
    std::byte go;
    if (!io_full(false, sv[1], &go, 1)) ::_exit(1);
    for (long i = 0; i < count; ++i)
      if (!io_full(true, sv[1], payload.data(), size)) ::_exit(1);
    ::_exit(0);
  }
  ::close(sv[1]);
  std::vector<std::byte> buf(size);
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  auto t = clk::now();
  std::byte go{1};
  bool ok = io_full(true, sv[0], &go, 1);
  for (long i = 0; ok && i < count; ++i) ok = io_full(false, sv[0], buf.data(), size);
  const double s = secs_since(t);
  ::close(sv[0]);
  int st = 0;
  ::waitpid(pid, &st, 0);
  if (!ok || !WIFEXITED(st) || WEXITSTATUS(st) != 0) throw std::runtime_error("raw socketpair transfer failed");
  return s;
}

std::string key(const char* series, const char* impl, double x) {
  return std::string(series) + "/" + impl + "/" + std::to_string(static_cast<long long>(x));
}

/// Time to do x units of work (x tasks in one map; one message of x bytes), per x.
struct curve {
  std::vector<double> x, time;
};

/// Least-squares fit of log(time) = a + slope * log(work) over the points with
/// x >= from, and the steepest step between neighbouring points: the exponent of
/// time's growth from one x to the next (1 = linear; a cliff shows as a big one).
struct fit {
  double slope = NAN, steepest = NAN;
};

fit loglog_fit(const curve& c, double from) {
  std::vector<double> lx, ly;
  for (std::size_t i = 0; i < c.x.size(); ++i)
    if (c.x[i] >= from && c.time[i] > 0) {
      lx.push_back(std::log(c.x[i]));
      ly.push_back(std::log(c.time[i]));
    }
  fit f;
  const double n = double(lx.size());
  if (lx.size() < 3) return f;
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (std::size_t i = 0; i < lx.size(); ++i) sx += lx[i], sy += ly[i], sxx += lx[i] * lx[i], sxy += lx[i] * ly[i];
  f.slope = (n * sxy - sx * sy) / (n * sxx - sx * sx);
  for (std::size_t i = 1; i < lx.size(); ++i) {
    const double e = (ly[i] - ly[i - 1]) / (lx[i] - lx[i - 1]);
    f.steepest = std::isnan(f.steepest) ? e : std::max(f.steepest, e);
  }
  return f;
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  auto o = bench::parse_args(argc, argv, 3, 2, "[--rounds N] [--quick] [--json] [--no-python]");
  const std::vector<std::size_t> tasks{1'000, 10'000, 100'000, 1'000'000, 10'000'000};
  const std::vector<std::size_t> outstanding{1'000, 10'000, 100'000, 1'000'000};
  const std::size_t py_max_outstanding = o.quick ? 100'000 : 1'000'000;
  const std::size_t py_max_tasks = o.quick ? 1'000'000 : 10'000'000;
  const std::vector<std::size_t> sizes = message_sizes();
  const std::size_t volume = o.quick ? (128u << 20) : (512u << 20);

  bench::samples s;
  mproc::Pool pool(2);
  (void)pool.map(identity, std::vector<int>(1000));  // warm
  for (int r = 0; r < o.rounds; ++r) {
    bench::note_round("bench_scaling", r, o.rounds);
    for (std::size_t n : tasks) {
      s.add(key("pool_map", "mproc", double(n)),
            per_run(n, 2'000'000, [&](std::size_t k) { return mproc_pool_map(pool, k); }));
      s.add(key("pool_map", "raw", double(n)), per_run(n, 2'000'000, raw_threads_map));
    }
    for (std::size_t n : outstanding)
      s.add(key("pool_async", "mproc", double(n)),
            per_run(n, 100'000, [&](std::size_t k) { return mproc_pool_async(pool, k); }));
    for (std::size_t size : sizes) {
      const long count = message_count(size, volume);
      s.add(key("queue_msg", "mproc", double(size)), mproc_queue(size, count));
      s.add(key("queue_msg", "raw", double(size)), bench::raw_ring_transfer(size, count));
      s.add(key("pipe_msg", "mproc", double(size)), mproc_pipe(size, count, false));
      s.add(key("pipe_msg", "mproc_into", double(size)), mproc_pipe(size, count, true));
      s.add(key("pipe_msg", "raw", double(size)), raw_socketpair(size, count));
    }
    if (o.python) {
      std::string args = std::to_string(py_max_tasks) + " " + std::to_string(volume) + " " +
                         std::to_string(py_max_outstanding);
      for (auto& [k, v] : bench::run_python("bench_scaling.py", args)) s.add(k, v);
    }
  }

  bench::report rep("scaling");
  std::map<std::string, curve> curves;  // "series/impl"
  auto collect = [&](const char* series, const char* impl, double x, double items) {
    const double sec = s.med(key(series, impl, x));
    if (std::isnan(sec)) return;
    rep.add(bench::point{.series = series, .impl = impl, .x = x, .seconds = sec, .items = items});
    auto& c = curves[std::string(series) + "/" + impl];
    c.x.push_back(x);
    // A map of x tasks is one run; a message of x bytes is one of `items` in the run.
    c.time.push_back(std::string(series).rfind("pool_", 0) == 0 ? sec : sec / items);
  };
  for (const char* impl : {"mproc", "raw", "python"})
    for (std::size_t n : tasks) collect("pool_map", impl, double(n), double(n));
  for (const char* impl : {"mproc", "python"})
    for (std::size_t n : outstanding) collect("pool_async", impl, double(n), double(n));
  for (const char* series : {"queue_msg", "pipe_msg"})
    for (const char* impl : {"mproc", "raw", "python", "mproc_into", "python_into"})
      for (std::size_t size : sizes) collect(series, impl, double(size), double(message_count(size, volume)));

  // Time must grow in proportion to work: on a log-log plot a line of slope 1. The
  // machine's own cost per byte rises once data leaves the caches (the raw limit's
  // steps reach about 1.5 there), so the targets leave room above 1; a cliff - a slow
  // path from some size on - shows as one step much steeper than that. Below 10^4
  // tasks / 4 KiB messages fixed costs (a wake-up, a message header) dominate and are
  // left out.
  struct check {
    const char* series;
    const char* impl;  // mproc's variant; Python's is the same name with "python"
    const char* name;
    const char* params;
    const char* raw_label;
    double from;
    const char* issue = "7";
  };
  const char* sizes_text = "messages of 4 KiB..64 MiB (x8 steps; 16 -> 64 MiB x4)";
  for (check c : {check{"pool_map", "", "Pool.map", "identity on 10^4..10^7 ints, default chunksize, Pool(2)",
                        "2 std::threads", 1e4},
                  check{"pool_async", "", "Pool.apply_async outstanding",
                        "10^3..10^6 apply_async(identity) outstanding, then get() on each, Pool(2)",
                        "", 1e3, "13"},
                  check{"queue_msg", "", "Queue", sizes_text, "bare shared-memory SPSC ring", 4096},
                  check{"pipe_msg", "", "Pipe recv_bytes", sizes_text, "bare socketpair", 4096},
                  check{"pipe_msg", "_into", "Pipe recv_bytes_into (reused buffer)", sizes_text, "bare socketpair",
                        4096}}) {
    const std::string k = c.series;
    const fit m = loglog_fit(curves[k + "/mproc" + c.impl], c.from);
    const fit raw = loglog_fit(curves[k + "/raw"], c.from);
    const fit py = loglog_fit(curves[k + "/python" + c.impl], c.from);
    // Not speed ratios: the ratio columns would mislead, so the other sides go in the
    // parameters instead.
    auto others = [&](double p, double r) {
      std::string t = std::string(c.params) + "; Python " + bench::fmt(p);
      if (!std::isnan(r)) t += std::string(", ") + c.raw_label + " " + bench::fmt(r);
      return t;
    };
    rep.add({.metric = std::string(c.name) + " time vs work, log-log slope",
             .params = others(py.slope, raw.slope),
             .unit = "",
             .dir = bench::better::lower,
             .mproc = m.slope,
             .target = "0.8 .. 1.2 (linear)",
             .met = bench::judged(m.slope >= 0.8 && m.slope <= 1.2, {m.slope}),
             .issue = c.issue});
    rep.add({.metric = std::string(c.name) + " steepest step, growth exponent between neighbouring sizes",
             .params = others(py.steepest, raw.steepest),
             .unit = "",
             .dir = bench::better::lower,
             .mproc = m.steepest,
             .target = "<= 1.75 (no cliff)",
             .met = bench::judged(m.steepest <= 1.75, {m.steepest}),
             .issue = c.issue});
  }
  rep.print(o, o.rounds);
}
