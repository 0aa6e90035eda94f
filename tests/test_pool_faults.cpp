// mproc-test-timeout: 900
// Faults a pool must contain: tasks that kill their worker at any position of a chunk,
// tasks that cannot be decoded in the worker, inputs that throw part-way, terminate()
// racing callers, many outstanding results. Every scenario runs under a watchdog: a
// hang fails the test with its name instead of stalling the run.
#include <mproc/pool.hpp>
#include <mproc/serialization/boost.hpp>  // types with a Boost serialize()

#include <catch2/catch.hpp>

#include "spawn_entry.hpp"
#include "test_support.hpp"

#include <atomic>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

using namespace std::chrono_literals;

namespace {

/// Ends the test program with a message when a scenario overruns its time limit.
class watchdog {
 public:
  watchdog(std::chrono::seconds limit, std::string what) : what_(std::move(what)) {
    t_ = std::thread([this, limit] {
      std::unique_lock l(m_);
      if (!cv_.wait_for(l, limit, [&] { return done_; })) {
        std::fprintf(stderr, "\nHUNG (over %lld s): %s\n", static_cast<long long>(limit.count()),
                     what_.c_str());
        std::fflush(stderr);
        std::_Exit(124);
      }
    });
  }
  ~watchdog() {
    {
      std::lock_guard l(m_);
      done_ = true;
    }
    cv_.notify_all();
    t_.join();
  }

 private:
  std::string what_;
  std::mutex m_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread t_;
};

/// A fresh directory for run markers; removed at the end.
struct temp_dir {
  std::string path;
  temp_dir() {
    char tmpl[] = "/tmp/mproc-faults-XXXXXX";
    if (!::mkdtemp(tmpl)) throw std::runtime_error("mkdtemp");
    path = tmpl;
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  [[nodiscard]] std::size_t count(const std::string& prefix) const {
    std::size_t n = 0;
    for (auto& e : std::filesystem::directory_iterator(path))
      n += e.path().filename().string().rfind(prefix, 0) == 0;
    return n;
  }
};

// Values 1000 * kind + i make item i kill its worker: kind 1 SIGKILL, 2 SIGSEGV,
// 3 abort(), 4 exit(3). Any other value i returns 2 * i. Each run leaves a marker
// file; an item that runs a second time leaves a "twice-" marker too.
int run_item(int v, const std::string& dir) {
  const int i = v % 1000;
  const std::string marker = dir + "/ran-" + std::to_string(i);
  int fd = ::open(marker.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
  if (fd < 0) {
    const std::string twice = dir + "/twice-" + std::to_string(i);
    fd = ::open(twice.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
  }
  if (fd >= 0) ::close(fd);
  switch (v / 1000) {
    case 1:
      ::raise(SIGKILL);
      break;
    case 2:
      std::signal(SIGSEGV, SIG_DFL);  // the test framework's handler is inherited
      ::raise(SIGSEGV);
      break;
    case 3:
      std::signal(SIGABRT, SIG_DFL);
      std::abort();
    case 4:
      ::_exit(3);
    default:
      break;
  }
  return 2 * i;
}
int fault_task(std::pair<int, std::string> a) { return run_item(a.first, a.second); }
int fault_task_star(int v, std::string dir) { return run_item(v, dir); }
int square(int x) { return x * x; }
int slow_identity(int x) {
  std::this_thread::sleep_for(200us);
  return x;
}
int throw_custom_int(int) { throw std::logic_error("task failed"); }

// Function objects that cannot be rebuilt in a worker: loading throws, or kills the
// process (as a crash in a user's load code would).
struct unloadable {
  std::string tag = "x";
  template <class A>
  void serialize(A& ar, unsigned) {
    ar & tag;
    if constexpr (A::is_loading::value) throw std::runtime_error("unloadable: cannot load");
  }
  int operator()(int x) const { return x; }
};
/// A callable whose loading ends its worker: killed, or exiting with status 0 (which a
/// retiring worker also does, but never inside a chunk).
template <bool ExitZero>
struct load_ends_worker {
  std::string tag = "x";
  template <class A>
  void serialize(A& ar, unsigned) {
    ar & tag;
    if constexpr (A::is_loading::value) {
      if constexpr (ExitZero)
        ::_exit(0);
      else
        ::raise(SIGKILL);
    }
  }
  int operator()(int x) const { return x; }
};
using load_kills = load_ends_worker<false>;

/// Caps a worker's address space a little above what it maps now, so a chunk too big to
/// reassemble kills it before it reads the chunk's header.
void cap_address_space() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  unsigned long pages = 0;
  if (f) {
    if (std::fscanf(f, "%lu", &pages) != 1) pages = 0;
    std::fclose(f);
  }
  const rlim_t cap = pages * static_cast<rlim_t>(::sysconf(_SC_PAGESIZE)) + (64ul << 20);
  const rlimit lim{cap, cap};
  ::setrlimit(RLIMIT_AS, &lim);
}
std::size_t text_size(const std::string& s) { return s.size(); }

/// Killers in chunk j at position j (for j < chunksize), kinds in turn: every position
/// of a chunk is tried once per chunk size.
std::vector<int> fault_inputs(int chunksize, std::set<int>& killers) {
  const int n = chunksize * (chunksize + 1);
  std::vector<int> v(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = i;
  for (int j = 0; j < chunksize; ++j) {
    const int i = j * chunksize + j;
    killers.insert(i);
    v[static_cast<std::size_t>(i)] = 1000 * (1 + (j + chunksize) % 4) + i;
  }
  return v;
}

struct input_broke : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// A single-pass input of `from`.. that throws input_broke when asked for element
/// number `fail_at` (as a generator that fails on it would).
template <class V = int>
struct breaking_input {
  struct iterator {
    using value_type = V;
    using difference_type = std::ptrdiff_t;
    int i = 0;
    int fail_at = 0;
    V operator*() const {
      if (i == fail_at) throw input_broke("input failed at element " + std::to_string(i));
      if constexpr (std::is_same_v<V, int>)
        return i;
      else
        return V(i, i);
    }
    iterator& operator++() {
      ++i;
      return *this;
    }
    void operator++(int) { ++i; }
  };
  struct sentinel {
    friend bool operator==(const iterator& it, const sentinel&) { return it.i >= 1000; }
  };
  int fail_at = 3;
  iterator begin() const { return {0, fail_at}; }
  sentinel end() const { return {}; }
};
int add2(int a, int b) { return a + b; }

void check_worker_died(const mproc::worker_died& e) {
  REQUIRE(e.pid() > 0);
  REQUIRE(e.exitcode() != 0);
}

}  // namespace

TEST_CASE("an item that kills its worker fails alone, at every position of every chunk size",
          "[pool][faults]") {
  const auto method = MPROC_TEST_EACH_START_METHOD();
  mproc_test::ensure_init();
  const std::string api = GENERATE(as<std::string>{}, "map", "starmap", "imap", "imap_unordered");
  INFO("start method " << mproc::to_string(method) << ", " << api);
  watchdog dog(240s, "self-killing items under " + std::string(mproc::to_string(method)) + ", " + api);
  {
    mproc::Pool pool({.processes = 2, .method = method});
    for (int cs = 1; cs <= 5; ++cs) {
      INFO("chunksize " << cs);
      temp_dir dir;
      std::set<int> killers;
      const std::vector<int> values = fault_inputs(cs, killers);
      const int n = static_cast<int>(values.size());
      std::vector<std::pair<int, std::string>> in;
      std::vector<std::tuple<int, std::string>> star_in;
      for (int v : values) {
        in.emplace_back(v, dir.path);
        star_in.emplace_back(v, dir.path);
      }
      if (api == "map" || api == "starmap") {
        auto r = api == "map" ? pool.map_async(fault_task, in, std::size_t(cs))
                              : pool.starmap_async(fault_task_star, star_in, std::size_t(cs));
        REQUIRE(r.wait(60s));
        try {
          (void)r.get();
          FAIL("no worker_died");
        } catch (const mproc::worker_died& e) {
          check_worker_died(e);
          // map reports the first failure by position
          REQUIRE(std::string(e.what()).find("task " + std::to_string(*killers.begin())) !=
                  std::string::npos);
        }
      } else {
        const bool ordered = api == "imap";
        auto results = ordered ? pool.imap(fault_task, in, std::size_t(cs))
                               : pool.imap_unordered(fault_task, in, std::size_t(cs));
        std::vector<int> got;
        int died = 0;
        // Each failed item rethrows out of the iteration; begin() again goes on from
        // the next one.
        for (bool more = true; more;) {
          try {
            for (auto it = results.begin(); it != results.end(); ++it) got.push_back(*it);
            more = false;
          } catch (const mproc::worker_died& e) {
            check_worker_died(e);
            if (ordered) REQUIRE(killers.count(static_cast<int>(got.size() + std::size_t(died))));
            ++died;
          }
        }
        REQUIRE(died == static_cast<int>(killers.size()));
        std::vector<int> want;
        for (int i = 0; i < n; ++i)
          if (!killers.count(i)) want.push_back(2 * i);
        if (!ordered) std::sort(got.begin(), got.end());
        REQUIRE(got == want);
      }
      // Every item ran, none twice: the ones before a crash are not run again.
      REQUIRE(dir.count("ran-") == static_cast<std::size_t>(n));
      REQUIRE(dir.count("twice-") == 0);
    }
    // The pool goes on.
    REQUIRE(pool.map(square, std::vector<int>{1, 2, 3}) == std::vector<int>{1, 4, 9});
  }  // ~Pool must not block
}

TEST_CASE("a long map with a dozen self-killing items completes", "[pool][faults]") {
  const auto method = MPROC_TEST_EACH_START_METHOD();
  mproc_test::ensure_init();
  INFO("start method " << mproc::to_string(method));
  watchdog dog(120s, "100,000 items with 12 killers under " + std::string(mproc::to_string(method)));
  temp_dir dir;
  mproc::Pool pool({.processes = 2, .method = method});
  std::vector<std::pair<int, std::string>> in;
  // Items numbered modulo 1000 for the marker; only the killers matter here, so the
  // markers are not checked.
  for (int i = 0; i < 100'000; ++i) in.emplace_back(i % 997 == 5 && i / 997 < 12 ? 1000 + i % 1000 : 7, "/nonexistent");
  auto r = pool.map_async(fault_task, in);
  REQUIRE(r.wait(100s));
  REQUIRE_THROWS_AS(r.get(), mproc::worker_died);
  REQUIRE(pool.map(square, std::vector<int>{4}) == std::vector<int>{16});
}

TEST_CASE("a callable that cannot be decoded or resolved in the worker fails its items",
          "[pool][faults]") {
  const auto method = MPROC_TEST_EACH_START_METHOD();
  mproc_test::ensure_init();
  INFO("start method " << mproc::to_string(method));
  watchdog dog(120s, "poison tasks under " + std::string(mproc::to_string(method)));
  mproc::Pool pool({.processes = 2, .method = method});
  // serialize() throws on load: that is the items' error, and no worker dies
  auto a = pool.apply_async(unloadable{}, 1);
  REQUIRE(a.wait(30s));
  REQUIRE_THROWS_WITH(a.get(), Catch::Contains("cannot load"));
  auto m = pool.map_async(unloadable{}, std::vector<int>{1, 2, 3, 4, 5, 6, 7}, std::size_t(3));
  REQUIRE(m.wait(30s));
  REQUIRE_THROWS_WITH(m.get(), Catch::Contains("cannot load"));
  {
    auto r = pool.imap(unloadable{}, std::vector<int>{1, 2, 3}, 2);
    int failed = 0;
    for (int k = 0; k < 3; ++k) {
      try {
        for (auto it = r.begin(); it != r.end(); ++it) FAIL("an item succeeded");
      } catch (const std::runtime_error& e) {
        REQUIRE(std::string(e.what()).find("cannot load") != std::string::npos);
        ++failed;
      }
    }
    REQUIRE(failed == 3);
  }
  // A function address that is no code of the program: a serialization_error.
  const auto heap_word = std::make_unique<int>(0);
  auto* bogus = reinterpret_cast<int (*)(int)>(reinterpret_cast<void*>(heap_word.get()));
  auto b = pool.apply_async(bogus, 1);
  REQUIRE(b.wait(30s));
  REQUIRE_THROWS_AS(b.get(), mproc::serialization_error);
  auto bm = pool.map_async(bogus, std::vector<int>{1, 2, 3, 4}, std::size_t(2));
  REQUIRE(bm.wait(30s));
  REQUIRE_THROWS_AS(bm.get(), mproc::serialization_error);
  REQUIRE(pool.map(square, std::vector<int>{1, 2, 3}) == std::vector<int>{1, 4, 9});
}

TEST_CASE("a chunk that kills three workers in a row before any item finishes fails",
          "[pool][faults]") {
  const auto method = MPROC_TEST_EACH_START_METHOD();
  mproc_test::ensure_init();
  INFO("start method " << mproc::to_string(method));
  watchdog dog(120s, "chunks killing their workers while loading under " +
                         std::string(mproc::to_string(method)));
  mproc::Pool pool({.processes = 2, .method = method});
  auto a = pool.apply_async(load_kills{}, 1);
  auto ok = pool.apply_async(square, 5);  // other work goes on meanwhile
  REQUIRE(a.wait(60s));
  REQUIRE_THROWS_AS(a.get(), mproc::worker_died);
  REQUIRE(ok.get(30s) == 25);
  auto m = pool.map_async(load_kills{}, std::vector<int>{1, 2, 3, 4, 5}, std::size_t(2));
  REQUIRE(m.wait(60s));
  REQUIRE_THROWS_AS(m.get(), mproc::worker_died);
  std::multiset<int> got;
  int died = 0;
  {
    auto r = pool.imap_unordered(load_kills{}, std::vector<int>{1, 2, 3}, 1);
    for (int k = 0; k < 3; ++k) {
      try {
        for (auto it = r.begin(); it != r.end(); ++it) got.insert(*it);
      } catch (const mproc::worker_died&) {
        ++died;
      }
    }
  }
  REQUIRE(died == 3);
  REQUIRE(got.empty());
  // Exit status 0 from inside a chunk is a death all the same (it was retried for ever).
  auto z = pool.apply_async(load_ends_worker<true>{}, 1);
  REQUIRE(z.wait(60s));
  REQUIRE_THROWS_AS(z.get(), mproc::worker_died);
  REQUIRE(pool.map(square, std::vector<int>{1, 2, 3}) == std::vector<int>{1, 4, 9});
}

TEST_CASE("a chunk too big for its worker to receive fails instead of killing workers for ever",
          "[pool][faults]") {
  // The sanitizers reserve terabytes of address space: no cap can be set under them.
  if (mproc_test::under_asan || mproc_test::under_tsan) return;
  const auto method = MPROC_TEST_EACH_START_METHOD();
  mproc_test::ensure_init();
  INFO("start method " << mproc::to_string(method));
  watchdog dog(120s, "an oversized chunk under " + std::string(mproc::to_string(method)));
  mproc::Pool pool({.processes = 1, .method = method, .initializer = cap_address_space});
  // 256 MiB: streamed through the ring in fragments, reassembled by the worker, which
  // cannot allocate it and dies before its first item.
  auto big = pool.apply_async(text_size, std::string(256u << 20, 'x'));
  REQUIRE(big.wait(60s));
  REQUIRE_THROWS_AS(big.get(), mproc::worker_died);
  REQUIRE(pool.apply(text_size, std::string(1000, 'y')) == 1000);
}

TEST_CASE("an input range that throws part-way: earlier results, then its exception",
          "[pool][faults]") {
  const auto method = MPROC_TEST_EACH_START_METHOD();
  mproc_test::ensure_init();
  INFO("start method " << mproc::to_string(method));
  watchdog dog(120s, "throwing inputs under " + std::string(mproc::to_string(method)));
  mproc::Pool pool({.processes = 2, .method = method});
  for (int attempt = 0; attempt < 5; ++attempt) {
    for (std::size_t cs = 1; cs <= 4; ++cs) {
      INFO("chunksize " << cs << ", attempt " << attempt);
      REQUIRE_THROWS_AS(pool.map(square, breaking_input<>{}, cs), input_broke);
      REQUIRE_THROWS_AS(pool.starmap(add2, breaking_input<std::pair<int, int>>{}, cs), input_broke);
      {
        auto r = pool.imap(square, breaking_input<>{}, cs);
        std::vector<int> got;
        auto it = r.begin();
        got.push_back(*it);
        for (int k = 1; k < 3; ++k) got.push_back(*++it);
        REQUIRE(got == std::vector<int>{0, 1, 4});
        REQUIRE_THROWS_AS(++it, input_broke);
        REQUIRE(r.begin() == r.end());  // nothing after the exception
      }
      {
        auto r = pool.imap_unordered(square, breaking_input<>{}, cs);
        std::multiset<int> got;
        int thrown = 0;
        for (int k = 0; k < 2; ++k) {
          try {
            for (auto it = r.begin(); it != r.end(); ++it) got.insert(*it);
          } catch (const input_broke&) {
            ++thrown;
          }
        }
        REQUIRE(thrown == 1);
        REQUIRE(got == std::multiset<int>{0, 1, 4});
      }
      // the pool is still usable
      REQUIRE(pool.map(square, std::vector<int>{1, 2, 3}, cs) == std::vector<int>{1, 4, 9});
    }
  }
  // the very first element failing
  REQUIRE_THROWS_AS(pool.map(square, breaking_input<>{0}), input_broke);
  {
    auto r = pool.imap(square, breaking_input<>{0});
    REQUIRE_THROWS_AS(r.begin(), input_broke);
  }
  REQUIRE(pool.apply(square, 7) == 49);
}

TEST_CASE("a throwing on_progress or callback fails its own call, not the pool", "[pool][faults]") {
  watchdog dog(60s, "throwing callbacks");
  mproc::Pool pool(2);
  // Progress may be reported for several items at once (a loaded or sanitized run
  // often skips 2), so the throw is at the first report of 2 or more.
  auto bad_progress = [](std::size_t done, std::size_t) {
    if (done >= 2) throw input_broke("progress failed");
  };
  REQUIRE_THROWS_AS(pool.map(square, std::vector<int>{1, 2, 3, 4}, mproc::map_options{.chunksize = 1, .on_progress = bad_progress}),
                    input_broke);
  {
    int seen = 0;
    auto r = pool.imap(square, std::vector<int>{1, 2, 3, 4}, mproc::map_options{.chunksize = 1, .on_progress = bad_progress});
    try {
      for (int v : r) seen += v > 0;
      FAIL("no exception");
    } catch (const input_broke&) {
    }
    REQUIRE(seen == 4);  // the results came first
  }
  auto a = pool.apply_async(mproc::callbacks{[](int) { throw input_broke("callback failed"); }}, square, 3);
  REQUIRE_THROWS_AS(a.get(30s), input_broke);
  auto b = pool.map_async(throw_custom_int, std::vector<int>{1}, {},
                          mproc::callbacks{[](const std::vector<int>&) {},
                                           [](std::exception_ptr) { throw input_broke("error callback failed"); }});
  REQUIRE_THROWS_AS(b.get(30s), input_broke);
  REQUIRE(pool.map(square, std::vector<int>{5}) == std::vector<int>{25});
}

TEST_CASE("terminate() while other threads are inside map and imap", "[pool][faults]") {
  const auto method = MPROC_TEST_EACH_START_METHOD();
  mproc_test::ensure_init();
  INFO("start method " << mproc::to_string(method));
  watchdog dog(240s, "terminate racing map/imap under " + std::string(mproc::to_string(method)));
  std::vector<int> in(300);
  for (int i = 0; i < 300; ++i) in[static_cast<std::size_t>(i)] = i;
  for (int round = 0; round < 25; ++round) {
    INFO("round " << round);
    mproc::Pool pool({.processes = 2, .method = method});
    std::atomic<int> wrong{0}, stopped{0}, finished{0};
    std::vector<std::thread> callers;
    for (int t = 0; t < 3; ++t) {
      callers.emplace_back([&, t] {
        try {
          if (t == 0) {
            auto out = pool.map(slow_identity, in, std::size_t(3));
            if (out != in) ++wrong;
          } else {
            auto r = t == 1 ? pool.imap(slow_identity, in, 2) : pool.imap_unordered(slow_identity, in, 1);
            std::size_t n = 0;
            for (int v : r) {
              if (t == 1 && v != static_cast<int>(n)) ++wrong;
              ++n;
            }
            if (n != in.size()) {
              std::fprintf(stderr, "caller %d: imap ended after %zu items\n", t, n);
              ++wrong;
            }
          }
          ++finished;
        } catch (const mproc::pool_not_running&) {
          ++stopped;
        } catch (const std::exception& e) {
          std::fprintf(stderr, "caller %d: unexpected %s\n", t, e.what());
          ++wrong;
        }
      });
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(round % 7 * 3));
    pool.terminate();
    for (auto& c : callers) c.join();
    REQUIRE(wrong == 0);
    REQUIRE(stopped + finished == 3);
    REQUIRE_THROWS_AS(pool.apply(square, 2), mproc::pool_not_running);
  }
}

namespace {
/// Seconds to submit n apply_async calls and then get() each.
double outstanding_round(mproc::Pool& pool, int n) {
  const auto t = std::chrono::steady_clock::now();
  std::vector<mproc::AsyncResult<int>> rs;
  rs.reserve(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) rs.push_back(pool.apply_async(square, i % 1000));
  long sum = 0;
  for (auto& r : rs) sum += r.get();
  long want = 0;
  for (int i = 0; i < n; ++i) want += long(i % 1000) * (i % 1000);
  REQUIRE(sum == want);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}
}  // namespace

TEST_CASE("many outstanding apply_async results cost linear time", "[pool][faults]") {
  watchdog dog(240s, "many outstanding apply_async results");
  mproc::Pool pool(2);
  // An imap whose caller reads nothing stops taking input (back-pressure) and stays
  // first among the jobs wanting work: the apply_async jobs behind it must still cost
  // nothing once sent (they were left in the engine's queue and scanned by every
  // dispatch, quadratic in the number outstanding).
  const std::vector<int> endless(1'000'000, 3);
  std::optional<decltype(pool.imap(square, endless, 1))> stalled;
  SECTION("alone") {}
  SECTION("behind an imap whose caller reads nothing") { stalled.emplace(pool.imap(square, endless, 1)); }
  // Sanitized builds on a loaded machine spend milliseconds per round trip: fewer
  // items there, the same factor between the sizes.
  constexpr int base = mproc_test::under_asan || mproc_test::under_tsan ? 500 : 5'000;
  (void)outstanding_round(pool, base / 5);  // warm
  // The best of three tries each, so a busy machine's pauses do not decide.
  double small = 1e9, large = 1e9;
  for (int k = 0; k < 3; ++k) {
    small = std::min(small, outstanding_round(pool, base));
    large = std::min(large, outstanding_round(pool, 8 * base));
  }
  INFO(base << " outstanding: " << small << " s; " << 8 * base << ": " << large << " s");
  // 8 times the work: linear is about 8x, quadratic about 64x.
  REQUIRE(large / small < 24);
  // A second big batch on the same pool is no slower than the first.
  REQUIRE(outstanding_round(pool, 8 * base) < 3 * large + 0.5);
}

namespace {

/// The children of this process (every thread's), alive or not yet reaped.
std::set<pid_t> own_children() {
  std::set<pid_t> out;
  for (const auto& t : std::filesystem::directory_iterator("/proc/self/task")) {
    std::FILE* f = std::fopen((t.path() / "children").c_str(), "r");
    if (!f) continue;
    for (long p; std::fscanf(f, "%ld", &p) == 1;) out.insert(static_cast<pid_t>(p));
    std::fclose(f);
  }
  return out;
}

}  // namespace

TEST_CASE("a pool whose construction fails part-way leaves no worker behind", "[pool][faults]") {
  // The sanitizer runtimes need descriptors of their own (reading /proc/self/maps as a
  // thread starts, a symbolizer): squeezed out of them they abort the test themselves.
  if (mproc_test::under_asan || mproc_test::under_tsan) return;
  mproc_test::ensure_init();
  const auto method = GENERATE(mproc::start_method::fork, mproc::start_method::spawn);
  watchdog dog(120s, "a pool whose construction fails part-way");
  // In a child of its own: the descriptor limit squeezed there runs out somewhere in the
  // middle of starting the workers, at a different worker for each limit tried.
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    {
      mproc::Pool warm({.processes = 1, .method = method});  // the tracker, if any, is up
    }
    const std::set<pid_t> before = own_children();
    rlimit old{};
    ::getrlimit(RLIMIT_NOFILE, &old);
    const rlim_t open_now = mproc_test::count_fds();
    int failures = 0;
    for (rlim_t extra = 1; extra < 60; ++extra) {
      rlimit tight = old;
      tight.rlim_cur = open_now + extra;
      ::setrlimit(RLIMIT_NOFILE, &tight);
      bool started = false;
      try {
        mproc::Pool p({.processes = 6, .method = method});
        started = true;
        ::setrlimit(RLIMIT_NOFILE, &old);
        if (p.apply(square, 7) != 49) std::_Exit(3);
      } catch (const std::exception& e) {
        ++failures;
      }
      ::setrlimit(RLIMIT_NOFILE, &old);
      if (own_children() != before) {
        std::fprintf(stderr, "limit +%lu: workers left behind by a failed construction\n",
                     static_cast<unsigned long>(extra));
        std::_Exit(1);
      }
      if (started) std::_Exit(failures >= 4 ? 0 : 2);  // it failed at several workers first
    }
    std::_Exit(4);  // never started at all
  }
  REQUIRE(mproc_test::join_child(pid, 100s) == 0);
}
