// The types the deserialization fuzzer decodes, and one sample value of each (the seed
// corpus is these samples encoded). A fuzz input is a selector byte followed by the
// payload: the low bits pick the type, the top bit picks the tagged-message path.
#pragma once

#include <mproc/detail/remote_exception.hpp>
#include <mproc/serialization.hpp>

#include <boost/serialization/map.hpp>
#include <boost/serialization/string.hpp>
#include <boost/serialization/vector.hpp>

#include <array>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>
#include <variant>
#include <vector>

namespace fuzz {

struct point {  // Boost member serialize()
  int x = 0;
  int y = 0;
  std::string label;
  std::vector<double> weights;
  template <class A>
  void serialize(A& ar, unsigned) {
    ar & x & y & label & weights;
  }
};

struct account {  // Boost free serialize()
  std::string owner;
  long cents = 0;
  std::vector<std::string> tags;
  std::map<std::string, int> limits;
  bool frozen = false;
};
template <class A>
void serialize(A& ar, account& a, unsigned) {
  ar & a.owner & a.cents & a.tags & a.limits & a.frozen;
}

struct ledger {  // Boost, nesting user types
  std::vector<account> accounts;
  point origin;
  template <class A>
  void serialize(A& ar, unsigned) {
    ar & accounts & origin;
  }
};

using types = std::tuple<
    int,                                                                   // 0
    std::string,                                                           // 1
    std::vector<int>,                                                      // 2
    std::vector<std::string>,                                              // 3
    std::map<std::string, std::vector<int>>,                               // 4
    std::tuple<std::string, int, std::optional<double>>,                   // 5
    std::variant<int, std::string, std::vector<double>>,                   // 6
    std::vector<bool>,                                                     // 7
    std::unordered_map<int, std::string>,                                  // 8
    std::set<std::pair<int, std::string>>,                                 // 9
    std::optional<std::vector<std::optional<std::string>>>,                // 10
    point,                                                                 // 11
    ledger,                                                                // 12
    std::vector<point>,                                                    // 13
    mproc::detail::encoded_exception,                                      // 14
    std::tuple<std::array<bool, 4>, std::chrono::milliseconds, std::filesystem::path>,  // 15
    std::multimap<std::string, std::variant<std::monostate, std::int64_t, std::string>>,  // 16
    std::map<int, account>>;                                               // 17

inline constexpr std::size_t type_count = std::tuple_size_v<types>;
inline constexpr std::uint8_t message_bit = 0x80;

inline account sample_account() {
  return {"ada", 1234567, {"vip", "", "eu"}, {{"daily", 500}, {"monthly", 9000}}, true};
}
inline point sample_point() { return {3, -4, "origin", {0.5, -1.25, 1e300}}; }

inline types samples() {
  using namespace std::chrono_literals;
  return types{
      -17,
      "some text",
      {1, 2, 3, 4},
      {"alpha", "", "gamma"},
      {{"a", {1, 2}}, {"bb", {}}},
      {"add", 10, 0.5},
      std::vector<double>{1.0, 2.0},
      {true, false, true},
      {{1, "x"}, {2, "yy"}},
      {{1, "a"}, {2, "b"}},
      std::vector<std::optional<std::string>>{"a", std::nullopt},
      sample_point(),
      ledger{{sample_account(), {"bob", -5, {}, {}, false}}, sample_point()},
      {sample_point(), point{}},
      {3, "std::invalid_argument", "bad argument"},
      {{true, false, true, false}, 5ms, "/a/b"},
      {{"k", std::monostate{}}, {"k", std::int64_t(7)}, {"s", std::string("v")}},
      {{1, sample_account()}, {2, account{}}}};
}

}  // namespace fuzz
