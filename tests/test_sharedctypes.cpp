// Value, Array, RawValue, RawArray: contents, bounds checks, and sharing with child
// processes under every start method (copies and handles passed as Process arguments
// are the same memory).
#include <catch2/catch.hpp>

#include "spawn_entry.hpp"
#include "test_support.hpp"

#include <mproc/detail/posix/fork.hpp>
#include <mproc/process.hpp>
#include <mproc/sharedctypes.hpp>

#include <chrono>
#include <csignal>
#include <dirent.h>
#include <iterator>
#include <list>
#include <mutex>
#include <numeric>
#include <poll.h>
#include <vector>

using namespace std::chrono_literals;
namespace d = mproc::detail;

using mproc_test::count_fds;
using mproc_test::join_process;
using mproc_test::with_method;

namespace {

void increment(mproc::Value<long> counter, int n) {
  for (int i = 0; i < n; ++i) {
    std::scoped_lock g(counter.get_lock());
    counter.value() += 1;
  }
}

void fill_array(mproc::Array<int> arr, int val) {
  for (std::size_t i = 0; i < arr.size(); ++i) arr[i] = val * int(i + 1);
}

void bump_all_locked(mproc::Array<int> arr, int rounds) {
  for (int i = 0; i < rounds; ++i) {
    std::scoped_lock g(arr.get_lock());
    for (auto& x : arr) x += 1;  // all move together under the lock
  }
}

void write_raw(mproc::RawValue<double> rv, mproc::RawArray<char> ra) {
  rv.value() *= 2;
  ra[0] = 'o';
  ra[1] = 'k';
}

/// An input range whose size is unknown up front (0, 2, 4, ... below `limit`).
struct even_numbers_below {
  int limit;
  struct iterator {
    using value_type = int;
    using difference_type = std::ptrdiff_t;
    using iterator_concept = std::input_iterator_tag;
    int v, limit;
    int operator*() const { return v; }
    iterator& operator++() {
      v += 2;
      return *this;
    }
    void operator++(int) { v += 2; }
    bool operator==(std::default_sentinel_t) const { return v >= limit; }
  };
  iterator begin() const { return {0, limit}; }
  std::default_sentinel_t end() const { return {}; }
};

struct point {
  double x = 1.5;
  int y = 7;
};

}  // namespace

TEST_CASE("Value: initial value, load/store, lock") {
  mproc::Value<int> v(41);
  CHECK(v.value() == 41);
  v.value() += 1;
  CHECK(v.load() == 42);
  v.store(5);
  CHECK(v.value() == 5);
  mproc::Value<int> zero;
  CHECK(zero.value() == 0);
  mproc::Value<point> p;  // default member initialisers apply
  CHECK(p.value().x == 1.5);
  CHECK(p.value().y == 7);
  {
    std::scoped_lock g(v.get_lock());
    CHECK(v.get_lock().recursion_depth() == 1);
    std::scoped_lock again(v.get_lock());  // an RLock, as in Python
    CHECK(v.get_lock().recursion_depth() == 2);
  }
  CHECK(v.get_lock().recursion_depth() == 0);
  static_assert(std::is_same_v<decltype(v.get_lock()), mproc::RLock&>);
  // The data is kept off the lock's cache line.
  auto lock_addr = reinterpret_cast<std::uintptr_t>(v.shared_region().data());
  auto data_addr = reinterpret_cast<std::uintptr_t>(&v.value());
  CHECK(data_addr - lock_addr >= 64);
  CHECK(data_addr % 64 == 0);
}

TEST_CASE("Value incremented under its lock by 4 Processes") {
  auto method = MPROC_TEST_EACH_START_METHOD();
  INFO("start method " << mproc::to_string(method));
  mproc_test::ensure_init();
  mproc::Value<long> counter(0);
  constexpr int per = 10000;
  std::vector<mproc::Process> procs;
  for (int c = 0; c < 4; ++c)
    procs.emplace_back(with_method(method), increment, counter, per);  // a copy: same memory
  for (auto& p : procs) p.start();
  for (auto& p : procs) CHECK(join_process(p) == 0);
  CHECK(counter.value() == 4 * per);
}

TEST_CASE("Array construction, access and bounds") {
  mproc::Array<int> a(5);
  CHECK(a.size() == 5);
  CHECK(a.to_vector() == std::vector<int>{0, 0, 0, 0, 0});
  mproc::Array<double> b({1.0, 2.0});
  CHECK(b.size() == 2);
  CHECK(b[1] == 2.0);
  mproc::Array c{1, 2, 3};
  static_assert(std::is_same_v<decltype(c), mproc::Array<int>>);
  CHECK(std::accumulate(c.begin(), c.end(), 0) == 6);
  std::list<short> src{4, 5, 6, 7};
  mproc::Array<int> d(src);
  CHECK(d.to_vector() == std::vector<int>{4, 5, 6, 7});
  mproc::Array<int> e(even_numbers_below{10});  // a single-pass range of unknown size
  CHECK(e.to_vector() == std::vector<int>{0, 2, 4, 6, 8});
  mproc::Array<int> f(3, 9);
  CHECK(f.to_vector() == std::vector<int>{9, 9, 9});
  CHECK_THROWS_AS(a.at(5), mproc::index_error);
  a.at(4) = 3;
  std::span<int> s = a;
  CHECK(s.size() == 5);
  CHECK(s[4] == 3);
  mproc::Array<int> empty(0);
  CHECK(empty.empty());
  CHECK(empty.begin() == empty.end());
  CHECK_THROWS_AS(mproc::Array<double>(SIZE_MAX / 4), mproc::value_error);
  CHECK_THROWS_AS(mproc::RawArray<char>(SIZE_MAX - 10), mproc::value_error);
  mproc::Array<point> pts(2);
  CHECK(pts[1].y == 7);
}

TEST_CASE("Array filled by a Process is seen by the parent; copies alias") {
  auto method = MPROC_TEST_EACH_START_METHOD();
  INFO("start method " << mproc::to_string(method));
  mproc_test::ensure_init();
  mproc::Array<int> arr(5);
  mproc::Array<int> alias = arr;
  mproc::Process p(with_method(method), fill_array, arr, 3);
  p.start();
  CHECK(join_process(p) == 0);
  CHECK(alias.to_vector() == std::vector<int>{3, 6, 9, 12, 15});
  alias[0] = -1;
  CHECK(arr[0] == -1);
}

TEST_CASE("Array guarded by its lock across processes") {
  auto method = MPROC_TEST_EACH_START_METHOD();
  INFO("start method " << mproc::to_string(method));
  mproc_test::ensure_init();
  mproc::Array<int> arr(4);
  std::vector<mproc::Process> kids;
  for (int c = 0; c < 3; ++c) kids.emplace_back(with_method(method), bump_all_locked, arr, 5000);
  for (auto& k : kids) k.start();
  for (auto& k : kids) CHECK(join_process(k) == 0);
  CHECK(arr.to_vector() == std::vector<int>(4, 15000));
}

TEST_CASE("RawValue and RawArray share memory without a lock") {
  auto method = MPROC_TEST_EACH_START_METHOD();
  INFO("start method " << mproc::to_string(method));
  mproc_test::ensure_init();
  mproc::RawValue<double> rv(2.5);
  mproc::RawArray<char> ra(8);
  mproc::Process k(with_method(method), write_raw, rv, ra);
  k.start();
  CHECK(join_process(k) == 0);
  CHECK(rv.value() == 5.0);
  CHECK(ra[0] == 'o');
  CHECK(ra[1] == 'k');
  CHECK(ra[2] == 0);
  mproc::RawArray ri{1, 2};
  CHECK(ri.size() == 2);
}

TEST_CASE("A region adopted by another handle sees the same data") {
  mproc::Array<int> arr({10, 20, 30});
  // As a spawned child would: map the same memfd again and adopt it.
  d::unique_fd dup(::fcntl(arr.shared_region().fd(), F_DUPFD_CLOEXEC, 0));
  auto region = d::shm_region::map(std::move(dup), arr.shared_region().size());
  mproc::Array<int> other(d::adopt_region, std::move(region));
  CHECK(other.to_vector() == std::vector<int>{10, 20, 30});
  other[1] = 21;
  CHECK(arr[1] == 21);
  {
    std::scoped_lock g(arr.get_lock());
    CHECK(other.get_lock().held_by_caller());
  }
  d::unique_fd dup2(::fcntl(arr.shared_region().fd(), F_DUPFD_CLOEXEC, 0));
  auto r2 = d::shm_region::map(std::move(dup2), arr.shared_region().size());
  CHECK_THROWS_AS(mproc::Value<int>(d::adopt_region, std::move(r2)), mproc::value_error);
}

TEST_CASE("Values and Arrays leak no descriptors") {
  std::size_t before = count_fds();
  {
    mproc::Value<int> v(1);
    mproc::Array<double> a(1000);
    mproc::RawValue<int> rv;
    mproc::RawArray<int> ra(3);
    std::vector<mproc::Value<int>> copies(5, v);
    CHECK(count_fds() == before + 4);
  }
  CHECK(count_fds() == before);
}

TEST_CASE("A moved-from handle still refers to the same object") {
  mproc::Value<int> v(3);
  mproc::Value<int> w = std::move(v);
  CHECK(v.value() == 3);  // NOLINT(bugprone-use-after-move): handles copy on move
  w.value() = 4;
  CHECK(v.value() == 4);
  mproc::Array<int> a(2);
  mproc::Array<int> b(std::move(a));
  b[1] = 9;
  CHECK(a[1] == 9);  // NOLINT(bugprone-use-after-move)
  mproc::Lock l;
  mproc::Lock m = std::move(l);
  std::scoped_lock g(l);  // NOLINT(bugprone-use-after-move)
  CHECK(m.held_by_caller());
}
