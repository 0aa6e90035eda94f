// The types the deserialization fuzzer decodes, and one sample value of each (the seed
// corpus is these samples encoded). A fuzz input is a selector byte followed by the
// payload: the low bits pick the type, the top bit picks the tagged-message path.
#pragma once

#include <mproc/detail/remote_exception.hpp>
#include <mproc/serialization.hpp>
#include <mproc/serialization/boost.hpp>  // types with a Boost serialize()

#include <boost/serialization/base_object.hpp>
#include <boost/serialization/export.hpp>
#include <boost/serialization/map.hpp>
#include <boost/serialization/shared_ptr.hpp>
#include <boost/serialization/string.hpp>
#include <boost/serialization/unique_ptr.hpp>
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

// Pointers: owned, shared (aliased), raw back-pointers to a parent, polymorphic.
struct holder {
  std::unique_ptr<point> owned;
  std::shared_ptr<account> first, second;
  template <class A>
  void serialize(A& ar, unsigned) {
    ar & owned & first & second;
  }
};
struct node {
  int value = 0;
  node* parent = nullptr;  // observes, never owns
  std::vector<std::unique_ptr<node>> children;
  template <class A>
  void serialize(A& ar, unsigned) {
    ar & value & parent & children;
  }
};
struct tree {
  std::unique_ptr<node> root;
  template <class A>
  void serialize(A& ar, unsigned) {
    ar & root;
  }
};
struct shape {
  virtual ~shape() = default;
  int id = 0;
  template <class A>
  void serialize(A& ar, unsigned) {
    ar & id;
  }
};
struct circle : shape {
  double r = 0;
  template <class A>
  void serialize(A& ar, unsigned) {
    ar & boost::serialization::base_object<shape>(*this) & r;
  }
};
struct square : shape {
  double s = 0;
  template <class A>
  void serialize(A& ar, unsigned) {
    ar & boost::serialization::base_object<shape>(*this) & s;
  }
};
struct scene {
  std::vector<std::unique_ptr<shape>> shapes;
  std::shared_ptr<shape> favourite, also_favourite;
  template <class A>
  void serialize(A& ar, unsigned) {
    ar & shapes & favourite & also_favourite;
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
    std::map<int, account>,                                                // 17
    holder,                                                                // 18
    tree,                                                                  // 19
    scene>;                                                                // 20

inline constexpr std::size_t type_count = std::tuple_size_v<types>;
inline constexpr std::uint8_t message_bit = 0x80;

inline account sample_account() {
  return {"ada", 1234567, {"vip", "", "eu"}, {{"daily", 500}, {"monthly", 9000}}, true};
}
inline point sample_point() { return {3, -4, "origin", {0.5, -1.25, 1e300}}; }

inline holder sample_holder() {
  holder h;
  h.owned = std::make_unique<point>(sample_point());
  h.first = std::make_shared<account>(sample_account());
  h.second = h.first;
  return h;
}
inline tree sample_tree() {
  tree t;
  t.root = std::make_unique<node>();
  t.root->value = 1;
  for (int i = 0; i < 2; ++i) {
    auto c = std::make_unique<node>();
    c->value = 10 + i;
    c->parent = t.root.get();
    auto g = std::make_unique<node>();
    g->value = 100 + i;
    g->parent = c.get();
    c->children.push_back(std::move(g));
    t.root->children.push_back(std::move(c));
  }
  return t;
}
inline scene sample_scene() {
  scene sc;
  auto c = std::make_unique<circle>();
  c->r = 2;
  sc.shapes.push_back(std::move(c));
  sc.shapes.push_back(std::make_unique<square>());
  auto f = std::make_shared<square>();
  f->s = 1.5;
  sc.favourite = f;
  sc.also_favourite = f;
  return sc;
}

template <std::size_t I>
using type_at = std::tuple_element_t<I, types>;

inline types samples() {
  using namespace std::chrono_literals;
  types t;  // filled element by element: some elements are move-only
  std::get<0>(t) = type_at<0>(-17);
  std::get<1>(t) = type_at<1>("some text");
  std::get<2>(t) = type_at<2>{1, 2, 3, 4};
  std::get<3>(t) = type_at<3>{"alpha", "", "gamma"};
  std::get<4>(t) = type_at<4>{{"a", {1, 2}}, {"bb", {}}};
  std::get<5>(t) = type_at<5>{"add", 10, 0.5};
  std::get<6>(t) = type_at<6>(std::vector<double>{1.0, 2.0});
  std::get<7>(t) = type_at<7>{true, false, true};
  std::get<8>(t) = type_at<8>{{1, "x"}, {2, "yy"}};
  std::get<9>(t) = type_at<9>{{1, "a"}, {2, "b"}};
  std::get<10>(t) = type_at<10>::value_type{"a", std::nullopt};
  std::get<11>(t) = type_at<11>(sample_point());
  std::get<12>(t) =
      type_at<12>(ledger{{sample_account(), {"bob", -5, {}, {}, false}}, sample_point()});
  std::get<13>(t) = type_at<13>{sample_point(), point{}};
  std::get<14>(t) = type_at<14>{3, "std::invalid_argument", "bad argument", {}};
  std::get<15>(t) = type_at<15>{{true, false, true, false}, 5ms, "/a/b"};
  std::get<16>(t) =
      type_at<16>{{"k", std::monostate{}}, {"k", std::int64_t(7)}, {"s", std::string("v")}};
  std::get<17>(t) = type_at<17>{{1, sample_account()}, {2, account{}}};
  std::get<18>(t) = type_at<18>(sample_holder());
  std::get<19>(t) = type_at<19>(sample_tree());
  std::get<20>(t) = type_at<20>(sample_scene());
  return t;
}

}  // namespace fuzz

BOOST_CLASS_EXPORT(fuzz::circle)
BOOST_CLASS_EXPORT(fuzz::square)
