// The umbrella header on its own must compile and expose the library.
#include <mproc/mproc.hpp>

#include <catch2/catch.hpp>

#include <cstring>
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
