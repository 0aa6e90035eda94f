// What may run in another process: callables that can be named there.
// A free function travels as its address relative to an anchor in the same program
// image (ASLR moves the image as a whole); a stateless function object (captureless
// lambda) travels as nothing at all, its type says everything; a function object with
// a serialize() member travels as its serialized state. A capturing lambda has state
// that cannot be named in another process, so it is rejected at compile time.
#pragma once

#include <cstdint>
#include <functional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../serialization.hpp"

namespace mproc::detail {

template <class F>
concept function_pointer = std::is_pointer_v<F> && std::is_function_v<std::remove_pointer_t<F>>;

template <class F>
concept stateless_function_object = std::is_class_v<F> && std::is_empty_v<F> &&
                                    std::is_default_constructible_v<F> &&
                                    std::is_trivially_copyable_v<F>;

template <class F>
concept serializable_function_object =
    std::is_class_v<F> && !std::is_empty_v<F> && boost_serializable<F> &&
    std::is_default_constructible_v<F>;

template <class F>
concept portable_callable = function_pointer<std::decay_t<F>> ||
                            stateless_function_object<std::decay_t<F>> ||
                            serializable_function_object<std::decay_t<F>>;

template <class F>
constexpr void require_portable_callable() {
  static_assert(portable_callable<F>,
                "mproc: this callable cannot run in another process. Use a free function, a "
                "captureless lambda, a stateless function object, or a function object with a "
                "Boost.Serialization serialize() member. A capturing lambda holds state that "
                "cannot cross a process boundary: capture nothing and pass the values as task "
                "arguments instead.");
}

/// Reference point for code addresses: offsets from it are the same in every process
/// running this program image, whatever address the image was loaded at.
[[gnu::noinline]] inline void code_anchor() { asm volatile(""); }

inline std::int64_t encode_code_address(const void* p) noexcept {
  return reinterpret_cast<std::intptr_t>(p) - reinterpret_cast<std::intptr_t>(&code_anchor);
}
inline void* decode_code_address(std::int64_t off) noexcept {
  return reinterpret_cast<void*>(reinterpret_cast<std::intptr_t>(&code_anchor) + off);
}

template <class W, class F>
void encode_callable(W& w, const F& f) {
  using D = std::decay_t<F>;
  if constexpr (function_pointer<D>) {
    std::int64_t off = encode_code_address(reinterpret_cast<const void*>(f));
    w.put(&off, sizeof off);
  } else if constexpr (stateless_function_object<D>) {
    // the type is the whole identity
  } else {
    encode(w, f);
  }
}

template <class F>
F decode_callable(reader& r) {
  if constexpr (function_pointer<F>) {
    std::int64_t off;
    r.get(&off, sizeof off, "function address");
    return reinterpret_cast<F>(decode_code_address(off));
  } else if constexpr (stateless_function_object<F>) {
    return F{};
  } else {
    F f{};
    decode(r, f);
    return f;
  }
}

/// The argument types a task is decoded as in the worker.
template <class... A>
using args_tuple_t = std::tuple<wire_t<A>...>;

/// A callable plus arguments, already serialized, that another process can run:
/// used for pool initializers. Only the address of run_ travels besides the bytes.
class portable_call {
 public:
  portable_call() = default;

  template <class F, class... A>
    requires(!std::is_same_v<std::decay_t<F>, portable_call>)
  portable_call(F f, A&&... args) {  // NOLINT: implicit, so `.initializer = fn` reads well
    using D = std::decay_t<F>;
    require_portable_callable<D>();
    static_assert(std::is_invocable_v<D&, wire_t<A>&...>,
                  "mproc: the initializer cannot be called with these arguments");
    args_tuple_t<A...> tup(std::forward<A>(args)...);
    vector_writer w{&bytes_};
    encode_callable(w, static_cast<D>(f));
    std::vector<std::byte> tail = serialize(tup);
    bytes_.insert(bytes_.end(), tail.begin(), tail.end());
    run_ = &run<D, args_tuple_t<A...>>;
  }

  [[nodiscard]] explicit operator bool() const noexcept { return run_ != nullptr; }
  void operator()() const {
    if (run_) run_(bytes_);
  }

  /// For a child in a fresh program image (spawn, forkserver): the runner travels as
  /// a code offset, the callable and its arguments as the bytes made at construction.
  template <class W>
  void encode_to_writer(W& w) const {
    std::int64_t off = run_ ? encode_code_address(reinterpret_cast<const void*>(run_)) : 0;
    std::uint8_t has = run_ != nullptr;
    w.put(&has, 1);
    w.put(&off, sizeof off);
    encode(w, bytes_);
  }
  static portable_call decode_from(reader& r) {
    portable_call c;
    std::uint8_t has;
    std::int64_t off;
    r.get(&has, 1, "initializer flag");
    r.get(&off, sizeof off, "initializer address");
    decode(r, c.bytes_);
    if (has) c.run_ = reinterpret_cast<void (*)(const std::vector<std::byte>&)>(decode_code_address(off));
    return c;
  }

 private:
  template <class D, class Tup>
  static void run(const std::vector<std::byte>& bytes) {
    reader r{bytes.data(), bytes.data() + bytes.size()};
    D f = decode_callable<D>(r);
    Tup args{};
    decode(r, args);
    std::apply(f, std::move(args));
  }

  void (*run_)(const std::vector<std::byte>&) = nullptr;
  std::vector<std::byte> bytes_;
};

}  // namespace mproc::detail
