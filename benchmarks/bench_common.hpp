// What every benchmark program shares: timing and medians, the command line
// (--rounds N, --quick, --json, --no-python), running the Python twin, and the report:
// one row per metric with mproc, Python and the raw limit side by side, the target
// and whether it is met, printed as a markdown table or (with --json) as one JSON
// object per line for benchmarks/run.py.
//
// Ratios are oriented so that above 1 always means mproc is the faster side:
//   vs_python = how many times faster than Python's multiprocessing
//   vs_limit  = the fraction of the raw limit's speed that mproc reaches
// For "lower is better" metrics (times) that is other/mproc, otherwise mproc/other.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <thread>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <initializer_list>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <sched.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

// The build defines where the Python twins live and which interpreter runs them.
#ifndef MPROC_BENCHMARK_PYTHON_DIR
#define MPROC_BENCHMARK_PYTHON_DIR "benchmarks/python"
#endif
#ifndef MPROC_BENCHMARK_PYTHON
#define MPROC_BENCHMARK_PYTHON "python3"
#endif

namespace bench {

using clk = std::chrono::steady_clock;

inline double secs_since(clk::time_point t0) {
  return std::chrono::duration<double>(clk::now() - t0).count();
}

/// Median of the samples; NaN when there are none (so a missing column stays visibly
/// missing instead of turning into a zero that looks like a result).
inline double median(std::vector<double> v) {
  std::erase_if(v, [](double x) { return std::isnan(x); });
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

/// Median seconds of `reps` runs of body: for a step that one run measures too
/// noisily (a start-up of a few milliseconds on a shared machine).
inline double median_seconds(int reps, const std::function<void()>& body) {
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    auto t0 = clk::now();
    body();
    t.push_back(secs_since(t0));
  }
  return median(std::move(t));
}

/// Best round: on a busy machine medians carry scheduling noise, the best round
/// shows the code's own cost.
inline double best(const std::vector<double>& v, bool higher_is_better) {
  if (v.empty()) return NAN;
  return higher_is_better ? *std::max_element(v.begin(), v.end()) : *std::min_element(v.begin(), v.end());
}

/// Samples by name, one per round; medians at the end.
struct samples {
  std::map<std::string, std::vector<double>> by_name;
  void add(const std::string& k, double v) { by_name[k].push_back(v); }
  double med(const std::string& k) const {
    auto it = by_name.find(k);
    return it == by_name.end() ? NAN : median(it->second);
  }
  const std::vector<double>& all(const std::string& k) { return by_name[k]; }
};

// ------------------------------------------------------------------ command line

struct options {
  int rounds = 5;
  bool quick = false;
  bool json = false;
  bool python = true;
};

/// Parses the common flags. `extra(flag, next)` handles a program's own flags: it
/// returns false for an unknown flag; `next()` yields the flag's value.
inline options parse_args(int argc, char** argv, int rounds, int quick_rounds, const char* usage,
                          const std::function<bool(std::string_view, const std::function<const char*()>&)>&
                              extra = nullptr) {
  options o;
  o.rounds = rounds;
  bool rounds_given = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s: %s needs a value\nusage: %s %s\n", argv[0], argv[i], argv[0], usage);
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--rounds") {
      o.rounds = std::max(1, std::atoi(next()));
      rounds_given = true;
    } else if (a == "--quick") {
      o.quick = true;
    } else if (a == "--json") {
      o.json = true;
    } else if (a == "--no-python") {
      o.python = false;
    } else if (!extra || !extra(a, next)) {
      std::fprintf(stderr, "%s: unknown option %s\nusage: %s %s\n", argv[0], argv[i], argv[0], usage);
      std::exit(2);
    }
  }
  if (o.quick && !rounds_given) o.rounds = quick_rounds;
  return o;
}

/// Progress on stderr, so stdout stays the report.
inline void note_round(const char* bench, int r, int rounds) {
  std::fprintf(stderr, "%s: round %d/%d\n", bench, r + 1, rounds);
}

// ------------------------------------------------------------------ Python twins

/// Parses a twin's output: flat JSON objects ({"key": number, ...}) and/or
/// "key number" lines, in any mix.
inline std::map<std::string, double> parse_numbers(const std::string& text) {
  std::map<std::string, double> out;
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t eol = text.find('\n', pos);
    if (eol == std::string::npos) eol = text.size();
    std::string line = text.substr(pos, eol - pos);
    pos = eol + 1;
    if (line.find('{') != std::string::npos) {
      for (std::size_t i = 0; (i = line.find('"', i)) != std::string::npos;) {
        std::size_t j = line.find('"', i + 1);
        std::size_t c = j == std::string::npos ? j : line.find(':', j);
        if (c == std::string::npos) break;
        char* end = nullptr;
        double v = std::strtod(line.c_str() + c + 1, &end);
        if (end != line.c_str() + c + 1) out[line.substr(i + 1, j - i - 1)] = v;
        i = line.find_first_of(",}", c);
      }
    } else {
      char name[128];
      double v;
      if (std::sscanf(line.c_str(), "%127s %lf", name, &v) == 2) out[name] = v;
    }
  }
  return out;
}

/// Runs benchmarks/python/<script> with `args`; its numbers, or an empty map (with a
/// message on stderr) when it failed: a missing Python column, never a fake one.
inline std::string python_interpreter() {
  // run.py names the interpreter that has every peer's modules; the build's is the default.
  if (const char* env = std::getenv("MPROC_BENCHMARK_PYTHON"); env && *env) return env;
  return MPROC_BENCHMARK_PYTHON[0] ? MPROC_BENCHMARK_PYTHON : "python3";
}

inline std::map<std::string, double> run_python(const std::string& script, const std::string& args) {
  const std::string py = python_interpreter();
  const std::string cmd = py + " " MPROC_BENCHMARK_PYTHON_DIR "/" + script + " " + args;
  std::fflush(nullptr);  // or buffered output is written twice by the child
  FILE* f = ::popen(cmd.c_str(), "r");
  if (!f) {
    std::fprintf(stderr, "cannot run %s\n", cmd.c_str());
    return {};
  }
  std::string text;
  char buf[4096];
  while (std::fgets(buf, sizeof buf, f)) text += buf;
  const int st = ::pclose(f);
  if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    std::fprintf(stderr, "python twin failed (%s): %s\n", cmd.c_str(), text.c_str());
    return {};
  }
  return parse_numbers(text);
}

/// The named number of a twin's output, NaN when the twin did not give it.
inline double get(const std::map<std::string, double>& m, const std::string& k) {
  auto it = m.find(k);
  return it == m.end() ? NAN : it->second;
}

// ------------------------------------------------------------- raw limits
// Bare SPSC byte ring in anonymous shared memory: fixed-size messages, busy polling,
// memcpy in and out, nothing else. What two processes can do at best.
struct raw_ring {
  alignas(64) std::atomic<std::uint64_t> head;
  alignas(64) std::atomic<std::uint64_t> tail;
  alignas(64) std::atomic<int> go;
};

/// Seconds to move `count` messages of `msg` bytes from a forked producer to this
/// process through the ring (large messages move in 1 MiB pieces).
inline double raw_ring_transfer(std::size_t msg, long count) {
  const std::size_t cap = 4u << 20;
  // Pieces must never straddle the ring's end: powers of two guarantee that.
  if (msg == 0 || (msg & (msg - 1)) != 0 || count < 1)
    throw std::invalid_argument("raw_ring_transfer: message size must be a power of two, count >= 1");
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
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the child builds its payload off the clock
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

/// Bytes per second of one memcpy of `big` bytes on one core.
inline double memcpy_bandwidth(std::size_t big) {
  std::vector<std::byte> a(big, std::byte{1}), b(big);
  auto t0 = clk::now();
  std::memcpy(b.data(), a.data(), big);
  double s = secs_since(t0);
  if (b[big / 2] != std::byte{1}) std::abort();
  return double(big) / s;
}

// ------------------------------------------------------------------------ report

enum class better { higher, lower };

/// How many times better `m` is than `other` (above 1: mproc is the faster side).
inline double speed_ratio(double m, double other, better b) {
  if (std::isnan(m) || std::isnan(other) || m == 0 || other == 0) return NAN;
  return b == better::higher ? m / other : other / m;
}

struct row {
  std::string metric{};  // what is measured, with its unit
  std::string params{};  // the sizes and counts it was measured with
  std::string unit{};
  better dir = better::higher;
  double mproc = NAN;
  double python = NAN;
  double raw = NAN;
  std::string raw_label{};   // what the limit column is
  std::string target{};      // the target as the issue states it, or "report"
  std::optional<bool> met{};  // empty: reported, no target
  std::string issue{};        // which issue's target this is
  // What a user would pick instead, measured in the same rounds: (name, figure), in
  // the row's unit. A missing peer has NaN; the best one is picked by the report.
  std::vector<std::pair<std::string, double>> peers{};
};

/// The best figure among a row's peers (by the row's direction); empty when none has one.
inline std::optional<std::pair<std::string, double>> best_peer(const row& r) {
  std::optional<std::pair<std::string, double>> b;
  for (const auto& [name, v] : r.peers) {
    if (std::isnan(v)) continue;
    if (!b || (r.dir == better::higher ? v > b->second : v < b->second)) b = std::pair{name, v};
  }
  return b;
}

/// A target's verdict: empty (not judged) when a figure it needs is missing, e.g. the
/// Python side with --no-python or a failed twin, so a missing column never reads as
/// a missed target.
inline std::optional<bool> judged(bool met, std::initializer_list<double> needed) {
  for (double v : needed)
    if (std::isnan(v)) return std::nullopt;
  return met;
}

/// One point of a cost-growth sweep: `x` units of work (tasks or bytes) took `seconds`.
struct point {
  std::string series{};  // e.g. "pool_map", "queue_msg", "pipe_msg"
  std::string impl{};    // "mproc", "python", "raw"
  double x = 0;
  double seconds = 0;
  double items = 1;  // operations in the timed run (per-item cost = seconds / items)
};

inline std::string json_string(std::string_view s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      o += '\\';
      o += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char b[8];
      std::snprintf(b, sizeof b, "\\u%04x", c);
      o += b;
    } else {
      o += c;
    }
  }
  return o + "\"";
}

inline std::string json_number(double v) {
  if (std::isnan(v) || std::isinf(v)) return "null";
  char b[40];
  std::snprintf(b, sizeof b, "%.6g", v);
  return b;
}

inline std::string fmt(double v) {
  if (std::isnan(v)) return "-";
  char b[40];
  std::snprintf(b, sizeof b, "%.4g", v);
  return b;
}

inline std::string fmt_ratio(double v) {
  if (std::isnan(v)) return "-";
  char b[40];
  std::snprintf(b, sizeof b, v >= 10 ? "%.0fx" : "%.2fx", v);
  return b;
}

class report {
 public:
  explicit report(std::string bench) : bench_(std::move(bench)) {}

  void add(row r) { rows_.push_back(std::move(r)); }
  void add(point p) { points_.push_back(std::move(p)); }
  void note(std::string text) { notes_.push_back(std::move(text)); }

  /// Prints the report; the exit status says whether the program ran, not whether
  /// targets were met (that is in the rows).
  static std::string peers_json(const row& r) {
    std::string s = "{";
    for (const auto& [name, v] : r.peers) {
      if (s.size() > 1) s += ", ";
      s += json_string(name) + ": " + json_number(v);
    }
    return s + "}";
  }

  void print(const options& o, int rounds) const {
    if (o.json) {
      for (const row& r : rows_) {
        std::printf(
            "{\"kind\": \"row\", \"bench\": %s, \"issue\": %s, \"metric\": %s, \"params\": %s, \"unit\": %s, "
            "\"better\": %s, \"mproc\": %s, \"python\": %s, \"raw\": %s, \"raw_label\": %s, "
            "\"vs_python\": %s, \"vs_limit\": %s, \"target\": %s, \"met\": %s, \"rounds\": %d, "
            "\"peers\": %s}\n",
            json_string(bench_).c_str(), json_string(r.issue).c_str(), json_string(r.metric).c_str(),
            json_string(r.params).c_str(), json_string(r.unit).c_str(),
            r.dir == better::higher ? "\"higher\"" : "\"lower\"", json_number(r.mproc).c_str(),
            json_number(r.python).c_str(), json_number(r.raw).c_str(), json_string(r.raw_label).c_str(),
            json_number(speed_ratio(r.mproc, r.python, r.dir)).c_str(),
            json_number(speed_ratio(r.mproc, r.raw, r.dir)).c_str(), json_string(r.target).c_str(),
            r.met ? (*r.met ? "true" : "false") : "null", rounds, peers_json(r).c_str());
      }
      for (const point& p : points_)
        std::printf("{\"kind\": \"point\", \"bench\": %s, \"series\": %s, \"impl\": %s, \"x\": %s, "
                    "\"seconds\": %s, \"items\": %s}\n",
                    json_string(bench_).c_str(), json_string(p.series).c_str(), json_string(p.impl).c_str(),
                    json_number(p.x).c_str(), json_number(p.seconds).c_str(), json_number(p.items).c_str());
      for (const std::string& n : notes_)
        std::printf("{\"kind\": \"note\", \"bench\": %s, \"text\": %s}\n", json_string(bench_).c_str(),
                    json_string(n).c_str());
      return;
    }
    std::printf("%s: medians of %d interleaved rounds; ratios above 1 mean mproc is faster\n\n", bench_.c_str(),
                rounds);
    if (!rows_.empty()) {
      std::printf("| metric | parameters | mproc | Python | raw limit | best peer | mproc/Python | mproc/limit | "
                  "mproc/best peer | target | met |\n");
      std::printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
      for (const row& r : rows_) {
        std::string lim = fmt(r.raw);
        if (!std::isnan(r.raw) && !r.raw_label.empty()) lim += " (" + r.raw_label + ")";
        const auto bp = best_peer(r);
        const std::string peer = bp ? fmt(bp->second) + " (" + bp->first + ")" : "-";
        std::printf("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.metric.c_str(),
                    r.params.c_str(), fmt(r.mproc).c_str(), fmt(r.python).c_str(), lim.c_str(), peer.c_str(),
                    fmt_ratio(speed_ratio(r.mproc, r.python, r.dir)).c_str(),
                    fmt_ratio(speed_ratio(r.mproc, r.raw, r.dir)).c_str(),
                    fmt_ratio(bp ? speed_ratio(r.mproc, bp->second, r.dir) : NAN).c_str(), r.target.c_str(),
                    r.met ? (*r.met ? "yes" : "**no**") : "-");
      }
    }
    if (!points_.empty()) {
      std::printf("\n| series | impl | work | seconds | per item |\n|---|---|---|---|---|\n");
      for (const point& p : points_)
        std::printf("| %s | %s | %.6g | %.4g | %.4g us |\n", p.series.c_str(), p.impl.c_str(), p.x, p.seconds,
                    p.seconds / p.items * 1e6);
    }
    for (const std::string& n : notes_) std::printf("\n%s\n", n.c_str());
  }

 private:
  std::string bench_;
  std::vector<row> rows_;
  std::vector<point> points_;
  std::vector<std::string> notes_;
};

}  // namespace bench
