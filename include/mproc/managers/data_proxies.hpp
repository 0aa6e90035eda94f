/// \file
/// The proxies to a manager's containers: DictProxy, ListProxy, NamespaceProxy,
/// QueueProxy, JoinableQueueProxy, ValueProxy and ArrayProxy. Each call is one
/// operation on the shared object; reading the whole of one gives a snapshot.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../detail/manager_client.hpp"
#include "../detail/manager_messages.hpp"
#include "../detail/manager_updaters.hpp"
#include "../errors.hpp"
#include "../serialization.hpp"
#include "base_proxy.hpp"

namespace mproc {

namespace detail::mgr {

/// Iterates over a snapshot taken when iteration began (Python's iteration over a
/// proxy's copy): later changes by any process do not disturb it.
template <class T>
class snapshot_iterator {
 public:
  using value_type = T;
  using difference_type = std::ptrdiff_t;
  using reference = const T&;
  using pointer = const T*;
  using iterator_category = std::input_iterator_tag;
  snapshot_iterator() = default;
  explicit snapshot_iterator(std::vector<T> v) : v_(std::make_shared<const std::vector<T>>(std::move(v))) {}
  const T& operator*() const { return (*v_)[i_]; }
  const T* operator->() const { return &(*v_)[i_]; }
  snapshot_iterator& operator++() {
    ++i_;
    return *this;
  }
  snapshot_iterator operator++(int) {
    auto t = *this;
    ++i_;
    return t;
  }
  friend bool operator==(const snapshot_iterator& it, std::default_sentinel_t) noexcept {
    return !it.v_ || it.i_ >= it.v_->size();
  }

 private:
  std::shared_ptr<const std::vector<T>> v_;
  std::size_t i_ = 0;
};

/// Every element of a reply's list, decoded.
template <class T>
std::vector<T> dec_all(const std::vector<std::string>& list) {
  std::vector<T> out;
  out.reserve(list.size());
  for (auto& e : list) out.push_back(dec<T>(e));
  return out;
}

}  // namespace detail::mgr

/// A dict in the manager (Python's DictProxy). Keys and values cross as bytes, so any
/// type mproc can send works for K and V.
template <class K, class V>
class DictProxy : public BaseProxy {
  using op = detail::mgr::op;
  static_assert(!detail::c_string<K> && !detail::c_string<V>,
                "mproc::DictProxy: use std::string, not a C string type, for keys and values");

 public:
  /// The key type.
  using key_type = K;
  /// The value type.
  using mapped_type = V;
  DictProxy() = default;

  /// Sets the value for `k`.
  void set(const K& k, const V& v) { call(op::dict_set, detail::mgr::enc(k), detail::mgr::enc(v)); }
  /// The value for k; key_error (Python's KeyError) when missing.
  [[nodiscard]] V get(const K& k) const {
    auto r = call(op::dict_get, detail::mgr::enc(k));
    if (!r.n) throw key_error("mproc::DictProxy::get: key not found");
    return detail::mgr::dec<V>(r.a);
  }
  /// The value for `k`, or `dflt` when missing.
  [[nodiscard]] V get(const K& k, const V& dflt) const {
    auto r = call(op::dict_get, detail::mgr::enc(k));
    return r.n ? detail::mgr::dec<V>(r.a) : dflt;
  }
  /// The value for `k`, or nullopt when missing.
  [[nodiscard]] std::optional<V> try_get(const K& k) const {
    auto r = call(op::dict_get, detail::mgr::enc(k));
    if (!r.n) return std::nullopt;
    return detail::mgr::dec<V>(r.a);
  }
  /// True when `k` is present.
  [[nodiscard]] bool contains(const K& k) const { return call(op::dict_contains, detail::mgr::enc(k)).n != 0; }
  /// Removes k; returns whether it was there.
  bool erase(const K& k) { return call(op::dict_erase, detail::mgr::enc(k)).n != 0; }
  /// Removes k and returns its value; key_error when missing.
  V pop(const K& k) {
    auto r = call(op::dict_pop, detail::mgr::enc(k));
    if (!r.n) throw key_error("mproc::DictProxy::pop: key not found");
    return detail::mgr::dec<V>(r.a);
  }
  /// Number of entries.
  [[nodiscard]] std::size_t size() const { return static_cast<std::size_t>(call(op::dict_size).n); }
  /// True when there are no entries.
  [[nodiscard]] bool empty() const { return size() == 0; }
  /// Removes every entry.
  void clear() { call(op::dict_clear); }

  /// A consistent snapshot, in insertion order (as a Python dict).
  [[nodiscard]] std::vector<std::pair<K, V>> items() const {
    auto r = call(op::dict_items);
    std::vector<std::pair<K, V>> out;
    out.reserve(r.list.size() / 2);
    for (std::size_t i = 0; i + 1 < r.list.size(); i += 2)
      out.emplace_back(detail::mgr::dec<K>(r.list[i]), detail::mgr::dec<V>(r.list[i + 1]));
    return out;
  }
  /// The keys, in insertion order.
  [[nodiscard]] std::vector<K> keys() const {
    std::vector<K> out;
    for (auto& [k, v] : items()) out.push_back(std::move(k));
    return out;
  }
  /// The values, in key insertion order.
  [[nodiscard]] std::vector<V> values() const {
    std::vector<V> out;
    for (auto& [k, v] : items()) out.push_back(std::move(v));
    return out;
  }
  /// Removes k and returns its value, or dflt when k is missing (Python's pop(k, d)).
  V pop(const K& k, const V& dflt) {
    auto r = call(op::dict_pop, detail::mgr::enc(k));
    return r.n ? detail::mgr::dec<V>(r.a) : dflt;
  }
  /// Removes and returns the item inserted last; key_error (Python's KeyError) when
  /// the dict is empty.
  std::pair<K, V> popitem() {
    auto r = call(op::dict_popitem);
    if (r.list.size() != 2) throw serialization_error("mproc::DictProxy::popitem: corrupt reply");
    return {detail::mgr::dec<K>(r.list[0]), detail::mgr::dec<V>(r.list[1])};
  }
  /// d[k] if present, else sets d[k] = dflt and returns it, in one step.
  V setdefault(const K& k, const V& dflt) {
    return detail::mgr::dec<V>(call(op::dict_setdefault, detail::mgr::enc(k), detail::mgr::enc(dflt)).a);
  }
  /// Iterates over a snapshot of the items, in insertion order.
  [[nodiscard]] detail::mgr::snapshot_iterator<std::pair<K, V>> begin() const {
    return detail::mgr::snapshot_iterator<std::pair<K, V>>(items());
  }
  /// The end of the snapshot.
  [[nodiscard]] std::default_sentinel_t end() const noexcept { return {}; }

  /// The snapshot as a std::map (needs K ordered).
  [[nodiscard]] std::map<K, V> to_map() const {
    std::map<K, V> out;
    for (auto& [k, v] : items()) out.insert_or_assign(std::move(k), std::move(v));
    return out;
  }

  /// Atomically sets d[k] = fn(d.get(k, dflt)) and returns the new value; no other
  /// operation on the manager interleaves. fn must not use the manager itself. Locally
  /// (including spawned or attaching processes) any callable works; through a TCP
  /// connection the server runs fn, so it must be a captureless lambda or stateless
  /// function object, or a function pointer into the same executable (checked by
  /// build-id), and the server must run the same program.
  template <class F>
  V update(const K& k, F&& fn, const V& dflt) {
    static_assert(std::is_invocable_v<F&, V>, "mproc::DictProxy::update: fn must be callable as fn(V)");
    detail::mgr::request q;
    q.o = op::dict_update, q.id = id_, q.a = detail::mgr::enc(k), q.b = detail::mgr::enc(dflt);
    auto bp = be();
    auto& b = *bp;
    if (b.local()) {
      detail::mgr::updater u = [&fn](const std::string_view* cur, std::string_view d) {
        return detail::mgr::apply_update<V>(fn, cur, d);
      };
      return detail::mgr::dec<V>(b.call(q, &u).a);
    }
    using Fn = std::remove_cvref_t<F>;
    if constexpr (std::is_function_v<Fn> ||
                  (std::is_pointer_v<Fn> && std::is_function_v<std::remove_pointer_t<Fn>>)) {
      using P = std::conditional_t<std::is_function_v<Fn>, Fn*, Fn>;
      P ptr = fn;
      auto off = detail::encode_executable_address(reinterpret_cast<const void*>(ptr));
      std::string build_id = detail::mgr::own_build_id();
      if (!off || build_id.empty())
        throw manager_error(
            "mproc::DictProxy::update over TCP: the function must be defined in the executable "
            "(not a shared library) and the executable must carry a build-id");
      q.n = static_cast<std::int64_t>(detail::mgr::fnptr_updater<V, P>::id);
      std::string o(sizeof(std::int64_t), '\0');
      std::memcpy(o.data(), &*off, sizeof(std::int64_t));
      q.list = {std::move(o), std::move(build_id)};
      return detail::mgr::dec<V>(b.call(q, nullptr).a);
    } else if constexpr (std::is_empty_v<Fn> && std::is_default_constructible_v<Fn>) {
      q.n = static_cast<std::int64_t>(detail::mgr::registered_updater<V, Fn>::id);
      return detail::mgr::dec<V>(b.call(q, nullptr).a);
    } else {
      throw manager_error(
          "mproc::DictProxy::update over TCP needs a function pointer, captureless lambda or stateless "
          "function object (the server runs it, so it cannot carry state)");
    }
  }

 private:
  friend class Manager;
  using BaseProxy::BaseProxy;
};

/// A list in the manager (Python's ListProxy). Indexes may be negative, as in Python;
/// out-of-range indexes raise index_error (Python's IndexError).
template <class T>
class ListProxy : public BaseProxy {
  using op = detail::mgr::op;

 public:
  /// The element type.
  using value_type = T;
  ListProxy() = default;

  /// Appends `v`.
  void append(const T& v) { call(op::list_append, {}, detail::mgr::enc(v)); }
  /// Appends every element of `range`, in one call.
  template <class R>
  void extend(const R& range) {
    detail::mgr::request q;
    q.o = op::list_extend, q.id = id_;
    for (const auto& e : range) q.list.push_back(detail::mgr::enc(static_cast<const T&>(e)));
    be()->call(q, nullptr);
  }
  /// Element `i` (negative counts from the end); index_error when out of range.
  [[nodiscard]] T get(std::int64_t i) const { return detail::mgr::dec<T>(call(op::list_get, {}, {}, i).a); }
  /// Replaces element `i` (negative counts from the end); index_error when out of range.
  void set(std::int64_t i, const T& v) { call(op::list_set, {}, detail::mgr::enc(v), i); }
  /// Removes and returns element i (default: the last); index_error when out of range or empty.
  T pop(std::int64_t i = -1) { return detail::mgr::dec<T>(call(op::list_pop, {}, {}, i).a); }
  /// Number of elements.
  [[nodiscard]] std::size_t size() const { return static_cast<std::size_t>(call(op::list_size).n); }
  /// True when there are no elements.
  [[nodiscard]] bool empty() const { return size() == 0; }
  /// Removes every element.
  void clear() { call(op::list_clear); }
  /// A snapshot of every element, in order.
  [[nodiscard]] std::vector<T> items() const {
    return detail::mgr::dec_all<T>(call(op::list_items).list);
  }

  // Python's list methods. Elements compare by their serialized bytes (equal values
  // of one type serialize equally; for floating point, 0.0 and -0.0 differ and a NaN
  // equals a NaN with the same bits).
  /// How many elements equal x.
  [[nodiscard]] std::size_t count(const T& x) const {
    return static_cast<std::size_t>(call(op::list_count, {}, detail::mgr::enc(x)).n);
  }
  /// The first position of x in [start, stop) (Python's slice bounds: negative counts
  /// from the end); value_error when it is not there.
  [[nodiscard]] std::size_t index(const T& x, std::int64_t start = 0,
                                  std::int64_t stop = std::numeric_limits<std::int64_t>::max()) const {
    return static_cast<std::size_t>(call(op::list_index, {}, detail::mgr::enc(x), start, stop).n);
  }
  /// Inserts x before position i (clamped to the list, as Python does).
  void insert(std::int64_t i, const T& x) { call(op::list_insert, {}, detail::mgr::enc(x), i); }
  /// Removes the first element equal to x; value_error when there is none.
  void remove(const T& x) { call(op::list_remove, {}, detail::mgr::enc(x)); }
  /// Reverses the list in place.
  void reverse() { call(op::list_reverse); }
  /// Sorts the list (stable, as Python's) by `comp`. The elements are sorted here and
  /// written back only if no process changed the list meanwhile (else it retries),
  /// so no concurrent change is lost.
  template <class Compare = std::less<>>
  void sort(Compare comp = {}) {
    for (;;) {
      auto r = call(op::list_items);
      std::vector<T> v = detail::mgr::dec_all<T>(r.list);
      std::stable_sort(v.begin(), v.end(), comp);
      detail::mgr::request q;
      q.o = op::list_assign_if, q.id = id_, q.n = r.n;
      q.list.reserve(v.size());
      for (auto& e : v) q.list.push_back(detail::mgr::enc(e));
      if (be()->call(q, nullptr).n) return;
    }
  }
  /// Iterates over a snapshot taken when iteration begins.
  [[nodiscard]] detail::mgr::snapshot_iterator<T> begin() const {
    return detail::mgr::snapshot_iterator<T>(items());
  }
  /// The end of the snapshot.
  [[nodiscard]] std::default_sentinel_t end() const noexcept { return {}; }

 private:
  friend class Manager;
  using BaseProxy::BaseProxy;
};

/// Named attributes of any sendable type (Python's Namespace). Each value keeps its
/// type tag: get<T> of a value stored as another type raises serialization_error
/// naming both types; a missing name raises attribute_error (Python's AttributeError).
class NamespaceProxy : public BaseProxy {
  using op = detail::mgr::op;

 public:
  NamespaceProxy() = default;

  /// Sets attribute `name` to `value` (C strings are stored as std::string).
  template <class T>
  void set(const std::string& name, const T& value) {
    using W = detail::wire_t<T>;
    const W& w = value;  // C strings are stored as std::string
    std::string bytes(detail::message_size(w), '\0');
    detail::write_message(w, reinterpret_cast<std::byte*>(bytes.data()));
    call(op::dict_set, detail::mgr::enc(name), std::move(bytes));
  }
  /// Attribute `name` as T; attribute_error when missing, serialization_error when it holds another type.
  template <class T>
  [[nodiscard]] T get(const std::string& name) const {
    auto r = call(op::dict_get, detail::mgr::enc(name));
    if (!r.n) throw attribute_error("mproc::NamespaceProxy: no attribute '" + name + "'");
    return detail::read_message<T>(
        std::span<const std::byte>(reinterpret_cast<const std::byte*>(r.a.data()), r.a.size()));
  }
  /// True when attribute `name` is set.
  [[nodiscard]] bool has(const std::string& name) const {
    return call(op::dict_contains, detail::mgr::enc(name)).n != 0;
  }
  /// Removes attribute `name`; returns whether it was there.
  bool erase(const std::string& name) { return call(op::dict_erase, detail::mgr::enc(name)).n != 0; }
  /// Attribute names in the order they were first set.
  [[nodiscard]] std::vector<std::string> names() const {
    auto r = call(op::dict_items);
    std::vector<std::string> out;
    for (std::size_t i = 0; i + 1 < r.list.size(); i += 2) out.push_back(detail::mgr::dec<std::string>(r.list[i]));
    return out;
  }

 private:
  friend class Manager;
  using BaseProxy::BaseProxy;
};

/// A FIFO queue in the manager (Python's manager.Queue()); maxsize 0 = unbounded.
template <class T>
class QueueProxy : public BaseProxy {
  using op = detail::mgr::op;

 public:
  QueueProxy() = default;

  /// Puts `v`, waiting while a bounded queue is full.
  void put(const T& v) { call(op::queue_put, {}, detail::mgr::enc(v), 0, -1); }
  /// queue_full if there is no room before the timeout.
  template <class Rep, class Period>
  void put(const T& v, std::chrono::duration<Rep, Period> timeout) {
    call(op::queue_put, {}, detail::mgr::enc(v), 0, detail::to_ns(timeout));
  }
  /// Puts `v`; queue_full if there is no room now.
  void put_nowait(const T& v) { call(op::queue_put, {}, detail::mgr::enc(v), 1, 0); }
  /// Takes the next message, waiting until one arrives.
  [[nodiscard]] T get() { return detail::mgr::dec<T>(call(op::queue_get, {}, {}, 0, -1).a); }
  /// queue_empty if nothing arrives before the timeout.
  template <class Rep, class Period>
  [[nodiscard]] T get(std::chrono::duration<Rep, Period> timeout) {
    return detail::mgr::dec<T>(call(op::queue_get, {}, {}, 0, detail::to_ns(timeout)).a);
  }
  /// Takes the next message; queue_empty if there is none now.
  [[nodiscard]] T get_nowait() { return detail::mgr::dec<T>(call(op::queue_get, {}, {}, 1, 0).a); }
  /// The next message if one is there now; nullopt otherwise.
  [[nodiscard]] std::optional<T> try_get() {
    try {
      return get_nowait();
    } catch (const mproc::queue_empty&) {
      return std::nullopt;
    }
  }
  /// Messages waiting.
  [[nodiscard]] std::size_t qsize() const { return static_cast<std::size_t>(call(op::queue_size).n); }
  /// True when no message waits.
  [[nodiscard]] bool empty() const { return qsize() == 0; }
  /// True when a bounded queue holds maxsize items.
  [[nodiscard]] bool full() const { return call(op::queue_full).n != 0; }

 protected:
  using BaseProxy::BaseProxy;

 private:
  friend class Manager;
};

/// A queue whose consumers confirm each item (Python's manager.JoinableQueue()).
template <class T>
class JoinableQueueProxy : public QueueProxy<T> {
  using op = detail::mgr::op;

 public:
  JoinableQueueProxy() = default;
  /// One item taken from the queue is done; value_error when more are confirmed
  /// than were put.
  void task_done() { this->call(op::queue_task_done); }
  /// Waits until every item put has been confirmed with task_done().
  void join() { this->call(op::queue_join, {}, {}, 0, -1); }
  /// As join(); false if items are still unconfirmed when the timeout passes.
  template <class Rep, class Period>
  [[nodiscard]] bool join(std::chrono::duration<Rep, Period> timeout) {
    return this->call(op::queue_join, {}, {}, 0, detail::to_ns(timeout)).n != 0;
  }

 private:
  friend class Manager;
  using QueueProxy<T>::QueueProxy;
};

/// A value in the manager (Python's manager.Value()). No lock of its own: use update
/// on a dict, or a manager Lock, for read-modify-write.
template <class T>
class ValueProxy : public BaseProxy {
  using op = detail::mgr::op;

 public:
  ValueProxy() = default;
  /// The value.
  [[nodiscard]] T get() const { return detail::mgr::dec<T>(call(op::value_get).a); }
  /// The value (Python's `.value`).
  [[nodiscard]] T value() const { return get(); }
  /// Replaces the value.
  void set(const T& v) { call(op::value_set, {}, detail::mgr::enc(v)); }

 private:
  friend class Manager;
  using BaseProxy::BaseProxy;
};

/// A fixed-size array in the manager (Python's manager.Array()); indexes may be
/// negative, out-of-range ones raise index_error (Python's IndexError).
template <class T>
class ArrayProxy : public BaseProxy {
  using op = detail::mgr::op;

 public:
  /// The element type.
  using value_type = T;
  ArrayProxy() = default;
  /// Element `i`; index_error when out of range.
  [[nodiscard]] T get(std::int64_t i) const { return detail::mgr::dec<T>(call(op::list_get, {}, {}, i).a); }
  /// Replaces element `i`; index_error when out of range.
  void set(std::int64_t i, const T& v) { call(op::list_set, {}, detail::mgr::enc(v), i); }
  /// Number of elements.
  [[nodiscard]] std::size_t size() const { return static_cast<std::size_t>(call(op::list_size).n); }
  /// A copy of the contents (Python's arr[:]).
  [[nodiscard]] std::vector<T> items() const {
    return detail::mgr::dec_all<T>(call(op::list_items).list);
  }
  /// Iterates over a snapshot of the elements.
  [[nodiscard]] detail::mgr::snapshot_iterator<T> begin() const {
    return detail::mgr::snapshot_iterator<T>(items());
  }
  /// The end of the snapshot.
  [[nodiscard]] std::default_sentinel_t end() const noexcept { return {}; }

 private:
  friend class Manager;
  using BaseProxy::BaseProxy;
};

}  // namespace mproc
