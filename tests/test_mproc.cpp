// The umbrella header on its own must compile and expose the library.
#include <mproc/mproc.hpp>

#include <catch2/catch.hpp>

#include <chrono>
#include <cstring>
#include <unistd.h>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <variant>
#include <vector>

TEST_CASE("umbrella header exposes the version", "[mproc]") {
  STATIC_REQUIRE(MPROC_VERSION == mproc::version_major * 10000 + mproc::version_minor * 100 +
                                      mproc::version_patch);
  std::string expected = std::to_string(mproc::version_major) + "." +
                         std::to_string(mproc::version_minor) + "." +
                         std::to_string(mproc::version_patch);
  CHECK(expected == mproc::version_string);
}

TEST_CASE("umbrella header exposes the error hierarchy", "[mproc]") {
  STATIC_REQUIRE(std::is_base_of_v<std::runtime_error, mproc::error>);
  STATIC_REQUIRE(std::is_base_of_v<mproc::error, mproc::remote_error>);
  STATIC_REQUIRE(std::is_base_of_v<mproc::error, mproc::worker_died>);
  STATIC_REQUIRE(std::is_base_of_v<mproc::error, mproc::timeout_error>);
  STATIC_REQUIRE(std::is_base_of_v<mproc::error, mproc::pool_not_running>);
  STATIC_REQUIRE(std::is_base_of_v<mproc::error, mproc::serialization_error>);
  STATIC_REQUIRE(std::is_base_of_v<mproc::error, mproc::queue_empty>);
  STATIC_REQUIRE(std::is_base_of_v<mproc::error, mproc::queue_full>);
  STATIC_REQUIRE(std::is_base_of_v<mproc::error, mproc::eof_error>);
  STATIC_REQUIRE(std::is_base_of_v<mproc::error, mproc::start_method_error>);
  STATIC_REQUIRE(std::is_base_of_v<mproc::error, mproc::authentication_error>);
}

TEST_CASE("umbrella header exposes serialization", "[mproc]") {
  using nested = std::map<std::string, std::tuple<int, std::optional<double>, std::vector<std::string>>>;
  nested v{{"a", {1, 2.5, {"x", "y"}}}, {"b", {-7, std::nullopt, {}}}};
  auto bytes = mproc::serialize(v);
  CHECK(mproc::deserialize<nested>(bytes) == v);

  std::variant<int, std::string> var = std::string("text");
  CHECK(mproc::deserialize<decltype(var)>(mproc::serialize(var)) == var);
}

TEST_CASE("corrupt bytes through the umbrella raise serialization_error", "[mproc]") {
  std::vector<std::string> v{"hello", "world"};
  auto bytes = mproc::serialize(v);
  SECTION("truncated") {
    bytes.pop_back();
    CHECK_THROWS_AS(mproc::deserialize<std::vector<std::string>>(bytes),
                    mproc::serialization_error);
  }
  SECTION("trailing garbage") {
    bytes.push_back(std::byte{0x42});
    CHECK_THROWS_AS(mproc::deserialize<std::vector<std::string>>(bytes),
                    mproc::serialization_error);
  }
  SECTION("absurd length prefix") {
    std::vector<std::byte> evil(sizeof(std::uint64_t), std::byte{0xff});
    CHECK_THROWS_AS(mproc::deserialize<std::vector<std::string>>(evil), mproc::serialization_error);
  }
}

namespace {
int umbrella_square(int x) { return x * x; }
void umbrella_exit_seven() { ::_exit(7); }  // _exit: the parent's atexit handlers stay out
}  // namespace

// Compile-time: every public name of the API contract is reachable through the
// umbrella alone, so a header missing from mproc.hpp fails here.
TEST_CASE("umbrella header exposes the whole public API", "[mproc]") {
  (void)&mproc::init;
  (void)&mproc::set_start_method;
  (void)&mproc::get_start_method;
  (void)&mproc::get_all_start_methods;
  (void)&mproc::cpu_count;
  (void)&mproc::current_process;
  (void)&mproc::parent_process;
  (void)&mproc::active_children;
  (void)&mproc::log_to_stderr;
  (void)&mproc::Pipe;
  (void)mproc::progress_bar;
  (void)mproc::create;
  STATIC_REQUIRE(mproc::start_policy<mproc::fork_policy>);
  STATIC_REQUIRE(mproc::start_policy<mproc::spawn_policy>);
  STATIC_REQUIRE(mproc::start_policy<mproc::forkserver_policy>);
  STATIC_REQUIRE(mproc::start_policy<mproc::dynamic_policy>);
  STATIC_REQUIRE(std::is_same_v<mproc::Process, mproc::basic_process<mproc::dynamic_policy>>);
  STATIC_REQUIRE(std::is_same_v<mproc::Pool, mproc::basic_pool<mproc::dynamic_policy>>);
  [[maybe_unused]] mproc::process_options po{
      .name = "x", .daemon = false, .method = mproc::start_method::fork};
  [[maybe_unused]] mproc::pool_options plo{.processes = 2};
  [[maybe_unused]] mproc::map_options mo{.chunksize = 1};
  [[maybe_unused]] mproc::supervisor_options so{.max_restarts = 1};
  STATIC_REQUIRE(sizeof(mproc::AsyncResult<int>) > 0);
  STATIC_REQUIRE(sizeof(mproc::Queue<int>) > 0);
  STATIC_REQUIRE(sizeof(mproc::JoinableQueue<int>) > 0);
  STATIC_REQUIRE(sizeof(mproc::SimpleQueue<int>) > 0);
  STATIC_REQUIRE(sizeof(mproc::Connection) > 0);
  STATIC_REQUIRE(sizeof(mproc::Value<int>) > 0);
  STATIC_REQUIRE(sizeof(mproc::Array<int>) > 0);
  STATIC_REQUIRE(sizeof(mproc::RawValue<int>) > 0);
  STATIC_REQUIRE(sizeof(mproc::RawArray<int>) > 0);
  STATIC_REQUIRE(sizeof(mproc::Lock) > 0);
  STATIC_REQUIRE(sizeof(mproc::RLock) > 0);
  STATIC_REQUIRE(sizeof(mproc::Semaphore) > 0);
  STATIC_REQUIRE(sizeof(mproc::BoundedSemaphore) > 0);
  STATIC_REQUIRE(sizeof(mproc::Event) > 0);
  STATIC_REQUIRE(sizeof(mproc::Condition) > 0);
  STATIC_REQUIRE(sizeof(mproc::Barrier) > 0);
  STATIC_REQUIRE(sizeof(mproc::SharedMemory) > 0);
  STATIC_REQUIRE(sizeof(mproc::Manager) > 0);
  STATIC_REQUIRE(sizeof(mproc::DictProxy<std::string, int>) > 0);
  STATIC_REQUIRE(sizeof(mproc::ListProxy<int>) > 0);
  STATIC_REQUIRE(sizeof(mproc::NamespaceProxy) > 0);
  STATIC_REQUIRE(sizeof(mproc::Supervisor) > 0);
  std::vector<mproc::AsyncResult<int>> results;
  STATIC_REQUIRE(sizeof(decltype(mproc::as_completed(results))) > 0);
}

TEST_CASE("umbrella header runs a Process and a Pool end to end", "[mproc]") {
  using namespace std::chrono_literals;
  mproc::Process p(umbrella_exit_seven);
  p.start();
  if (!p.join(30s)) {
    p.kill();
    (void)p.join(5s);
    FAIL("child did not exit within 30 s");
  }
  CHECK(p.exitcode() == std::optional<int>(7));

  mproc::Pool pool(2);
  auto squares = pool.map_async(umbrella_square, std::vector{1, 2, 3, 4});
  CHECK(squares.get(30s) == std::vector{1, 4, 9, 16});
}
