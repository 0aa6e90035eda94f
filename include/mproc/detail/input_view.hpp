// The views a pool keeps over a task's inputs.
//
// std::views::all / std::views::single would do, but clang 14 cannot compile
// libstdc++ 12's ref_view/owning_view/single_view, so the library carries these three
// small ones instead. They forward begin/end/size/data of what they wrap, so an input
// that is contiguous stays contiguous (the pool copies trivially copyable chunks with
// one memcpy) and an input that is lazy stays lazy (nothing is read ahead).
#pragma once

#include <cstddef>
#include <memory>
#include <ranges>
#include <type_traits>
#include <utility>

namespace mproc::detail {

/// An lvalue input, by reference: the caller keeps it alive until the task is done.
template <class R>
class ref_input {
 public:
  explicit ref_input(R& r) noexcept : r_(std::addressof(r)) {}
  auto begin() const { return std::ranges::begin(*r_); }
  auto end() const { return std::ranges::end(*r_); }
  auto size() const
    requires std::ranges::sized_range<R>
  {
    return std::ranges::size(*r_);
  }
  auto data() const
    requires std::ranges::contiguous_range<R>
  {
    return std::ranges::data(*r_);
  }

 private:
  R* r_;
};

/// A temporary input, moved inside: it lives as long as the task that reads it.
template <class R>
class owning_input {
 public:
  explicit owning_input(R r) : r_(std::move(r)) {}
  auto begin() { return std::ranges::begin(r_); }
  auto end() { return std::ranges::end(r_); }
  auto size()
    requires std::ranges::sized_range<R>
  {
    return std::ranges::size(r_);
  }
  auto data()
    requires std::ranges::contiguous_range<R>
  {
    return std::ranges::data(r_);
  }

 private:
  R r_;
};

/// Exactly one element (apply_async's argument tuple).
template <class T>
class single_input {
 public:
  explicit single_input(T v) : v_(std::move(v)) {}
  T* begin() noexcept { return std::addressof(v_); }
  T* end() noexcept { return std::addressof(v_) + 1; }
  static constexpr std::size_t size() noexcept { return 1; }
  T* data() noexcept { return std::addressof(v_); }

 private:
  T v_;
};

/// A task's inputs as a view: lvalues by reference, temporaries kept alive inside.
template <class In>
auto as_input_view(In&& in) {
  if constexpr (std::is_lvalue_reference_v<In>)
    return ref_input<std::remove_reference_t<In>>(in);
  else
    return owning_input<std::remove_cvref_t<In>>(std::forward<In>(in));
}

}  // namespace mproc::detail
