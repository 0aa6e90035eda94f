/// \file
/// Value<T>, Array<T> (each with an RLock) and RawValue<T>, RawArray<T> (no lock):
/// trivially copyable data in anonymous shared memory (memfd; nothing in /dev/shm, so
/// nothing can leak). They are handles: copies, and copies a child inherits, are the
/// same memory; the memory lives while any process maps it.
///
/// Layout of one region: the lock in the first cache line, the element count in the
/// second, the data from byte 128, so writers of the data never contend with the
/// lock's cache line.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <iterator>
#include <memory>
#include <mutex>
#include <new>
#include <ranges>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "detail/shared_block.hpp"
#include "synchronize.hpp"
#include "detail/handle_passing.hpp"

namespace mproc {

namespace detail {

inline constexpr std::size_t shared_count_offset = 64;  ///< where the shared count lies in a region
inline constexpr std::size_t shared_data_offset = 128;  ///< where the shared data lie in a region

/// Rejects, at compile time, a T that cannot live in shared memory.
template <class T>
constexpr void check_shareable() {
  static_assert(std::is_trivially_copyable_v<T>,
                "mproc::Value/Array/RawValue/RawArray<T>: T must be trivially copyable, because "
                "every process reads and writes the same raw bytes (no constructors, destructors "
                "or pointers into one process's heap). For std::string, containers and other "
                "types use a Manager (manager.Value / manager.list) or a Queue.");
  static_assert(!std::is_pointer_v<T>,
                "mproc::Value/Array<T>: a pointer is only meaningful in the process that made it");
  static_assert(alignof(T) <= shared_data_offset,
                "mproc::Value/Array<T>: T's alignment exceeds what the shared layout provides");
  static_assert(!std::is_const_v<T> && !std::is_volatile_v<T>,
                "mproc::Value/Array<T>: use a non-const, non-volatile T");
}

/// The region and typed view shared by the four public templates.
template <class T, bool Locked>
class shared_storage {
 protected:
  explicit shared_storage(std::size_t n)
      : block_(make_block(bytes_for(n), Locked ? "mproc-array" : "mproc-rawarray")),
        lock_(make_lock(block_, true)),
        data_(block_->at<T>(shared_data_offset)),
        size_(n) {
    check_shareable<T>();
    *block_->at<std::uint64_t>(shared_count_offset) = n;
    // memfd memory is zero-filled, which is value-initialisation for scalars; other
    // types get T{} (their default member initialisers) in place.
    if constexpr (!std::is_scalar_v<T>) std::uninitialized_value_construct_n(data_, n);
  }

  /// n elements guarded by an existing lock (Python's lock= argument): several objects
  /// may share one lock.
  shared_storage(std::size_t n, const basic_lock& lock) : shared_storage(n) {
    static_assert(Locked);
    lock_ = RLock(share_lock, lock);
    external_lock_ = true;
  }

  /// Adopts an existing region (its descriptor received after spawn, for example).
  shared_storage(adopt_region_t, shm_region region)
      : block_(std::make_shared<shared_block>(std::move(region))),
        lock_(make_lock(block_, false)),
        data_(block_->at<T>(shared_data_offset)),
        size_(static_cast<std::size_t>(*block_->at<std::uint64_t>(shared_count_offset))) {
    check_shareable<T>();
    std::size_t bytes = block_->region().size();
    if (bytes < shared_data_offset || size_ > (bytes - shared_data_offset) / sizeof(T))
      throw value_error("mproc shared array: adopted region of " + std::to_string(bytes) +
                                  " bytes cannot hold " + std::to_string(size_) + " elements of " +
                                  std::to_string(sizeof(T)) + " bytes");
  }

  static std::size_t bytes_for(std::size_t n) {
    // A negative int arrives as a huge size_t; no mapping holds more than PTRDIFF_MAX.
    if (n > (std::size_t(PTRDIFF_MAX) - shared_data_offset) / sizeof(T))
      throw value_error("mproc Array: size " + std::to_string(n) + " (elements of " +
                        std::to_string(sizeof(T)) + " bytes) is negative or too large");
    return shared_data_offset + std::max<std::size_t>(n, 1) * sizeof(T);
  }

  static std::conditional_t<Locked, RLock, int> make_lock(const std::shared_ptr<shared_block>& b,
                                                          bool init) {
    if constexpr (Locked) {
      RLock l(adopt_region, b, 0, init);
      return l;
    } else {
      (void)b;
      (void)init;
      return 0;
    }
  }

 public:
  // Copies share the object; there is no separate move, so a moved-from handle
  // stays usable instead of holding a dangling pointer.
  /// Another handle on the same shared object.
  shared_storage(const shared_storage&) = default;
  /// Another handle on the same shared object.
  shared_storage& operator=(const shared_storage&) = default;

  /// The region holding this object, for passing it to another process.
  [[nodiscard]] const shm_region& shared_region() const noexcept { return block_->region(); }
  /// True when the lock is one given at construction, not the object's own.
  [[nodiscard]] bool external_lock() const noexcept { return external_lock_; }

 protected:
  /// Adopts a region guarded by a lock that lives elsewhere (received after spawn).
  void adopt_external_lock(const basic_lock& lock) {
    lock_ = RLock(share_lock, lock);
    external_lock_ = true;
  }

  std::shared_ptr<shared_block> block_;
  mutable std::conditional_t<Locked, RLock, int> lock_;
  T* data_;
  std::size_t size_;
  bool external_lock_ = false;
};

template <class T, bool Locked>
class basic_value : public shared_storage<T, Locked> {
  using base = shared_storage<T, Locked>;

 public:
  /// The shared type.
  using value_type = T;

  basic_value() : base(1) {}
  explicit basic_value(const T& initial) : base(1) { *this->data_ = initial; }
  basic_value(const T& initial, const basic_lock& lock)
    requires Locked
      : base(1, lock) {
    *this->data_ = initial;
  }
  basic_value(adopt_region_t tag, shm_region r) : base(tag, std::move(r)) {
    if (this->size_ != 1) throw value_error("mproc Value: adopted region is not a Value");
  }

  /// The shared value itself (Python's .value). Unsynchronised access: hold
  /// get_lock() around read-modify-write sequences.
  [[nodiscard]] T& value() const noexcept { return *this->data_; }
  /// Pointer to the shared value (Python's get_obj()).
  [[nodiscard]] T* get_obj() const noexcept { return this->data_; }
};

template <class T, bool Locked>
class basic_array : public shared_storage<T, Locked> {
  using base = shared_storage<T, Locked>;

 public:
  /// The element type.
  using value_type = T;
  /// Index type.
  using size_type = std::size_t;
  /// Elements are contiguous: a pointer is the iterator.
  using iterator = T*;
  /// Elements are contiguous: a pointer is the iterator.
  using const_iterator = const T*;

  /// n value-initialised (zero) elements.
  explicit basic_array(std::size_t n) : base(n) {}
  basic_array(std::size_t n, const basic_lock& lock)
    requires Locked
      : base(n, lock) {}
  basic_array(std::size_t n, const T& fill) : base(n) { std::fill_n(this->data_, n, fill); }
  basic_array(std::initializer_list<T> init) : base(init.size()) {
    std::copy(init.begin(), init.end(), this->data_);
  }
  /// A copy of any sized input range whose elements convert to T.
  template <std::ranges::input_range R>
    requires(!std::is_same_v<std::remove_cvref_t<R>, basic_array> &&
             std::is_convertible_v<std::ranges::range_reference_t<R>, T>)
  explicit basic_array(R&& r) : basic_array(from_range(std::forward<R>(r))) {}
  basic_array(adopt_region_t tag, shm_region r) : base(tag, std::move(r)) {}

  /// Number of elements (fixed at creation).
  [[nodiscard]] std::size_t size() const noexcept { return this->size_; }
  /// True for an array of no elements.
  [[nodiscard]] bool empty() const noexcept { return this->size_ == 0; }
  /// Element `i`, unchecked (see at()).
  [[nodiscard]] T& operator[](std::size_t i) const noexcept { return this->data_[i]; }
  /// Bounds-checked access: index_error (Python's IndexError) when `i` >= size().
  [[nodiscard]] T& at(std::size_t i) const {
    if (i >= this->size_)
      throw index_error("mproc Array: index " + std::to_string(i) + " out of range for size " +
                        std::to_string(this->size_));
    return this->data_[i];
  }
  /// Pointer to the first element.
  [[nodiscard]] T* data() const noexcept { return this->data_; }
  /// Start of the elements (a range-for works).
  [[nodiscard]] T* begin() const noexcept { return this->data_; }
  /// End of the elements.
  [[nodiscard]] T* end() const noexcept { return this->data_ + this->size_; }
  /// The elements as a span.
  [[nodiscard]] std::span<T> span() const noexcept { return {this->data_, this->size_}; }
  /// The elements as a span.
  operator std::span<T>() const noexcept { return span(); }
  /// A private copy of the contents (Python's list(arr)).
  [[nodiscard]] std::vector<T> to_vector() const { return {begin(), end()}; }
  /// Pointer to the first element (Python's get_obj()).
  [[nodiscard]] T* get_obj() const noexcept { return this->data_; }

 private:
  template <class R>
  static basic_array from_range(R&& r) {
    if constexpr (std::ranges::sized_range<R> && std::ranges::forward_range<R>) {
      basic_array a(static_cast<std::size_t>(std::ranges::size(r)));
      std::ranges::copy(r, a.data_);
      return a;
    } else {
      std::vector<T> tmp;
      for (auto&& x : r) tmp.push_back(static_cast<T>(x));
      basic_array a(tmp.size());
      std::copy(tmp.begin(), tmp.end(), a.data_);
      return a;
    }
  }
};

}  // namespace detail

/// A T in shared memory with its own RLock: `{ std::scoped_lock g(v.get_lock());
/// v.value() += 1; }`. `Value<T>(initial, lock)` uses an existing Lock or RLock
/// instead (Python's lock=), so that several objects can share one.
template <class T>
class Value : public detail::basic_value<T, true> {
  using base = detail::basic_value<T, true>;

 public:
  using base::base;
  Value() = default;
  /// Adopts a received region guarded by a received lock.
  Value(detail::adopt_region_t tag, detail::shm_region r, const detail::basic_lock& lock)
      : base(tag, std::move(r)) {
    this->adopt_external_lock(lock);
  }

  /// The lock guarding this value: its own RLock, as in Python, or the Lock or RLock
  /// given at construction (a handle of that same lock, acting as it does).
  [[nodiscard]] RLock& get_lock() const noexcept { return this->lock_; }
  /// Takes the value's lock (as `get_lock().acquire()`).
  void acquire() { this->lock_.acquire(); }
  /// Releases the value's lock.
  void release() { this->lock_.release(); }
  /// Reads the value under the lock.
  [[nodiscard]] T load() const {
    std::scoped_lock g(this->lock_);
    return *this->data_;
  }
  /// Writes the value under the lock.
  void store(const T& v) const {
    std::scoped_lock g(this->lock_);
    *this->data_ = v;
  }
};

/// A fixed-size array of T in shared memory with its own RLock.
template <class T>
class Array : public detail::basic_array<T, true> {
  using base = detail::basic_array<T, true>;

 public:
  using base::base;
  /// An array holding `init`, in shared memory.
  Array(std::initializer_list<T> init) : base(init) {}
  /// Adopts a received region guarded by a received lock.
  Array(detail::adopt_region_t tag, detail::shm_region r, const detail::basic_lock& lock)
      : base(tag, std::move(r)) {
    this->adopt_external_lock(lock);
  }

  /// The lock guarding this array (an RLock, as in Python).
  [[nodiscard]] RLock& get_lock() const noexcept { return this->lock_; }
  /// Takes the array's lock (as `get_lock().acquire()`).
  void acquire() { this->lock_.acquire(); }
  /// Releases the array's lock.
  void release() { this->lock_.release(); }
};

/// `Array{1, 2, 3}` is an Array<int>.
template <class T>
Array(std::initializer_list<T>) -> Array<T>;

/// A T in shared memory without a lock.
template <class T>
class RawValue : public detail::basic_value<T, false> {
  using base = detail::basic_value<T, false>;

 public:
  using base::base;
  RawValue() = default;
};

/// A fixed-size array of T in shared memory without a lock.
template <class T>
class RawArray : public detail::basic_array<T, false> {
  using base = detail::basic_array<T, false>;

 public:
  using base::base;
  /// An array holding `init`, in shared memory.
  RawArray(std::initializer_list<T> init) : base(init) {}
};

/// `RawArray{1.0, 2.0}` is a RawArray<double>.
template <class T>
RawArray(std::initializer_list<T>) -> RawArray<T>;

namespace detail {

/// Value and Array: their region, then the lock if it is one given at construction
/// (its region, where in it, recursive or not), so the child shares that lock too.
template <class H>
struct locked_region_handle_traits {
  static constexpr bool passable = true;
  static void encode(vector_writer& w, fd_collector& c, const H& h) {
    put_region(w, c, h.shared_region());
    std::uint8_t external = h.external_lock() ? 1 : 0;
    w.put(&external, sizeof external);
    if (external) put_any_lock(w, c, h.get_lock());
  }
  static H adopt(reader& r, std::span<const int> fds) {
    shm_region data = get_region(r, fds);
    std::uint8_t external = 0;
    r.get(&external, sizeof external, "shared object lock flag");
    if (!external) return H(adopt_region, std::move(data));
    return H(adopt_region, std::move(data), get_any_lock(r, fds));
  }
};

template <class T>
struct handle_traits<Value<T>> : locked_region_handle_traits<Value<T>> {};
template <class T>
struct handle_traits<Array<T>> : locked_region_handle_traits<Array<T>> {};
template <class T>
struct handle_traits<RawValue<T>> : region_handle_traits<RawValue<T>> {};
template <class T>
struct handle_traits<RawArray<T>> : region_handle_traits<RawArray<T>> {};

}  // namespace detail

}  // namespace mproc
