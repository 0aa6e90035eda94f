// Odd arguments and hostile values across the public API: every invalid count, size,
// chunksize or offset is a value_error naming the argument; a result nested deeper
// than the receiver's stack is a serialization_error, not a dead parent; a
// constructor that throws leaves no segment behind.
// mproc-test-timeout: 300
// mproc-test-serial
#include <catch2/catch.hpp>

#include "spawn_entry.hpp"
#include "test_support.hpp"

#include <mproc/mproc.hpp>
#include <mproc/serialization/boost.hpp>  // types with a Boost serialize()

#include <boost/serialization/unique_ptr.hpp>

#include <climits>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <sys/resource.h>

using namespace std::chrono_literals;

namespace {

int square(int x) { return x * x; }

/// A singly linked chain: each link is one more level of nesting in a Boost archive.
struct chain {
  int value = 0;
  std::unique_ptr<chain> next;
  template <class A>
  void serialize(A& ar, unsigned) {
    ar & value & next;
  }
  chain() = default;
  chain(chain&&) = default;
  chain& operator=(chain&&) = default;
  ~chain() {  // iteratively: a recursive destructor of a long chain overflows by itself
    std::unique_ptr<chain> n = std::move(next);
    while (n) n = std::move(n->next);
  }
};

chain deep_chain(int depth) {
  chain head;
  chain* at = &head;
  for (int i = 1; i < depth; ++i) {
    at->next = std::make_unique<chain>();
    at->next->value = i;
    at = at->next.get();
  }
  return head;
}

int chain_length(const chain& c) {
  int n = 1;
  for (const chain* at = c.next.get(); at; at = at->next.get()) ++n;
  return n;
}

std::set<std::string> dev_shm() {
  std::set<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator("/dev/shm")) names.insert(e.path().filename());
  return names;
}

/// what() of the value_error `f` raises (fails the test if it raises nothing or
/// something else).
template <class F>
std::string value_error_of(F&& f) {
  try {
    f();
  } catch (const mproc::value_error& e) {
    return e.what();
  } catch (const std::exception& e) {
    FAIL("expected mproc::value_error, got " << typeid(e).name() << ": " << e.what());
  }
  FAIL("expected mproc::value_error, nothing was thrown");
  return {};
}

}  // namespace

TEST_CASE("invalid counts and sizes raise value_error naming the argument", "[hostile][arguments]") {
  // A negative int given where a count is expected arrives as a huge unsigned value.
  const int minus_one = -1;
  CHECK_THAT(value_error_of([&] { mproc::Pool p(static_cast<std::size_t>(minus_one)); }),
             Catch::Contains("processes"));
  CHECK_THAT(value_error_of([&] { mproc::Pool p({.processes = 1, .max_tasks_per_child = std::size_t(minus_one)}); }),
             Catch::Contains("max_tasks_per_child"));
  {
    mproc::Pool pool(1);
    std::vector<int> in{1, 2, 3};
    CHECK_THAT(value_error_of([&] { (void)pool.map(square, in, std::size_t(minus_one)); }),
               Catch::Contains("chunksize"));
    CHECK_THAT(value_error_of([&] { (void)pool.imap(square, in, 0); }), Catch::Contains("chunksize"));
    CHECK_THAT(value_error_of([&] { (void)pool.imap_unordered(square, in, 0); }), Catch::Contains("chunksize"));
    CHECK_THAT(value_error_of([&] { (void)pool.map_async(square, in, std::size_t(minus_one)); }),
               Catch::Contains("chunksize"));
    // The pool is untouched by refused calls.
    CHECK(pool.map(square, in) == std::vector<int>{1, 4, 9});
    CHECK(pool.map(square, in, 0) == std::vector<int>{1, 4, 9});  // 0: map picks
  }
  CHECK_THAT(value_error_of([&] { auto a = mproc::Array<int>(std::size_t(minus_one)); }), Catch::Contains("size"));
  CHECK_THAT(value_error_of([&] { auto a = mproc::Array<double>(std::size_t(1) << 62); }), Catch::Contains("size"));
  CHECK_THAT(value_error_of([&] { mproc::SharedMemory s(mproc::create, std::size_t(minus_one)); }),
             Catch::Contains("size"));
  CHECK_THAT(value_error_of([&] { mproc::SharedMemory s(mproc::create, 0); }), Catch::Contains("size"));
  CHECK_THAT(value_error_of([&] { mproc::Semaphore s(static_cast<unsigned>(minus_one)); }),
             Catch::Contains("initial value"));
  CHECK_THAT(value_error_of([&] { mproc::BoundedSemaphore s(static_cast<unsigned>(minus_one)); }),
             Catch::Contains("initial value"));
  CHECK_THAT(value_error_of([&] { mproc::Barrier b(0); }), Catch::Contains("parties"));
  CHECK_THAT(value_error_of([&] { mproc::Barrier b(static_cast<unsigned>(minus_one)); }),
             Catch::Contains("parties"));
  CHECK_THAT(value_error_of([&] { mproc::Queue<int> q(mproc::queue_options{.capacity = std::size_t(minus_one)}); }),
             Catch::Contains("capacity"));
  CHECK_THAT(value_error_of([&] { mproc::Manager m({.capacity = 1000}); }), Catch::Contains("capacity"));
  CHECK_THAT(value_error_of([&] { mproc::Manager m({.timeout = std::chrono::nanoseconds(0)}); }),
             Catch::Contains("timeout"));
  {
    auto [r, w] = mproc::Pipe();
    CHECK_THAT(value_error_of([&] { w.send_fd(-1); }), Catch::Contains("descriptor"));
  }
  // Every one of them is an mproc::error.
  CHECK_THROWS_AS(mproc::Barrier(0), mproc::error);
}

TEST_CASE("a pool task returning a deeply nested structure never kills the parent", "[hostile][pool]") {
  mproc_test::ensure_init();
  const auto method = MPROC_TEST_EACH_START_METHOD();
  INFO("start method " << mproc::to_string(method));
  {
    // 20,000 links: the parent gets the value or serialization_error (from the worker
    // when its own stack cannot encode it, from the parent's reader when its stack
    // cannot decode it), or worker_died.
    mproc::Pool pool({.processes = 1, .method = method});
    // ThreadSanitizer's runtime crashes on recursion this deep (test_serialization says
    // more): shallower there, still past what one of its stacks decodes.
    const int links = mproc_test::under_tsan ? 5'000 : 20'000;
    try {
      chain c = pool.apply(deep_chain, links);
      CHECK(chain_length(c) == links);
    } catch (const mproc::serialization_error&) {
    } catch (const mproc::worker_died&) {
    }
    CHECK(pool.apply(square, 7) == 49);
    CHECK(chain_length(pool.apply(deep_chain, 100)) == 100);
  }
  // Nor the 100,000 levels below.
  if (method != mproc::start_method::fork || mproc_test::under_tsan) return;
  // Workers with a large stack (forked from this thread while its stack limit is
  // raised) encode far more than the parent's threads can decode: serialization_error,
  // and the parent goes on.
  rlimit old{};
  REQUIRE(::getrlimit(RLIMIT_STACK, &old) == 0);
  rlimit big = old;
  big.rlim_cur = old.rlim_max == RLIM_INFINITY ? rlim_t(1) << 30 : std::min<rlim_t>(old.rlim_max, rlim_t(1) << 30);
  if (big.rlim_cur < (rlim_t(256) << 20)) {
    WARN("the stack's hard limit is too low for the large-stack case; skipped");
    return;
  }
  REQUIRE(::setrlimit(RLIMIT_STACK, &big) == 0);
  std::optional<mproc::Pool> pool;
  try {
    pool.emplace(mproc::pool_options{.processes = 1, .method = method});
  } catch (...) {
    ::setrlimit(RLIMIT_STACK, &old);
    throw;
  }
  REQUIRE(::setrlimit(RLIMIT_STACK, &old) == 0);  // the parent's own threads as before
  auto far = pool->apply_async(deep_chain, 100'000);
  // Refused by the parent's reader: the worker's encoder has the larger stack to use.
  CHECK_THROWS_WITH(far.get(120s), Catch::Contains("nested deeper") && Catch::Contains("decode it"));
  CHECK(pool->apply(square, 8) == 64);
}

TEST_CASE("a SharedMemory constructor that throws leaves no segment", "[hostile][leftovers]") {
  const auto before = dev_shm();
  // The name is created, then sizing or mapping fails: too large to map, too large
  // for a file, a size no file offset holds.
  for (std::size_t size : {std::size_t(1) << 47, std::size_t(1) << 50, std::size_t(1) << 62}) {
    INFO("size " << size);
    CHECK_THROWS_AS(mproc::SharedMemory(mproc::create, size, "mproc_test_too_big"), std::system_error);
    CHECK_THROWS_AS(mproc::SharedMemory(mproc::create, size), std::system_error);
    CHECK_FALSE(std::filesystem::exists("/dev/shm/mproc_test_too_big"));
    CHECK(dev_shm() == before);
  }
  // Refused before anything is created.
  CHECK_THROWS_AS(mproc::SharedMemory(mproc::create, SIZE_MAX, "mproc_test_too_big"), mproc::value_error);
  CHECK(dev_shm() == before);
  // The name is free again: a valid segment of that name can be made.
  mproc::SharedMemory ok(mproc::create, 4096, "mproc_test_too_big");
  ok.unlink();
  CHECK(dev_shm() == before);
}
