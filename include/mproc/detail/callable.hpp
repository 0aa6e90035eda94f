// What may run in another process: callables that can be named there.
// A free function travels as its address relative to an anchor in the same program
// image (ASLR moves the image as a whole); a stateless function object (captureless
// lambda) travels as nothing at all, its type says everything; a function object with
// a serialize() member travels as its serialized state. A capturing lambda has state
// that cannot be named in another process, so it is rejected at compile time.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <link.h>

#include "../serialization.hpp"
#include "posix/child_calls.hpp"
#include "posix/fork_hooks.hpp"

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

/// Code addresses that mean the same in another process running this program, whatever
/// address each module (the executable, every shared library) was loaded at: a
/// module's position in the loader's list (the same for the same program and
/// libraries, ASLR or not) and the offset into it, packed as index << 48 | offset.
/// Libraries opened later with dlopen are named the same way as long as both
/// processes opened them in the same order.
struct loaded_module {
  std::uintptr_t base;       // dlpi_addr: what segment addresses are relative to
  std::uintptr_t lo, hi;     // the address range its loadable segments cover
};

inline std::vector<loaded_module> scan_modules() {
  std::vector<loaded_module> out;
  child_calls.dl_iterate_phdr(
      [](dl_phdr_info* info, std::size_t, void* data) -> int {
        auto& v = *static_cast<std::vector<loaded_module>*>(data);
        loaded_module m{info->dlpi_addr, UINTPTR_MAX, 0};
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          const auto& ph = info->dlpi_phdr[i];
          if (ph.p_type != PT_LOAD) continue;
          m.lo = std::min<std::uintptr_t>(m.lo, info->dlpi_addr + ph.p_vaddr);
          m.hi = std::max<std::uintptr_t>(m.hi, info->dlpi_addr + ph.p_vaddr + ph.p_memsz);
        }
        v.push_back(m);
        return 0;
      },
      &out);
  return out;
}

/// How many modules the loader has loaded and unloaded so far (dlpi_adds/dlpi_subs).
inline std::pair<unsigned long long, unsigned long long> loader_generation() noexcept {
  std::pair<unsigned long long, unsigned long long> g{0, 0};
  child_calls.dl_iterate_phdr(
      [](dl_phdr_info* info, std::size_t size, void* data) -> int {
        if (size >= offsetof(dl_phdr_info, dlpi_subs) + sizeof info->dlpi_subs)
          *static_cast<std::pair<unsigned long long, unsigned long long>*>(data) = {
              info->dlpi_adds, info->dlpi_subs};
        return 1;  // the counters are the same in every entry
      },
      &g);
  return g;
}

struct module_table {
  std::vector<loaded_module> modules;
  std::pair<unsigned long long, unsigned long long> generation;
};

/// The module table, rescanned when an address falls outside every known module and
/// the loader has loaded or unloaded something since (so an address from a hostile
/// peer costs a look at two counters, not a new table). Tables are immutable and never
/// freed, so readers need no lock: there is one per dlopen/dlclose at most.
// Constant-initialised (no guard); the lock is held across fork so the child gets it
// free whatever its parent's threads were doing.
inline constinit std::atomic<const module_table*> module_table_current{nullptr};
inline constinit std::mutex module_table_mutex;
inline void module_table_lock() noexcept { module_table_mutex.lock(); }
inline void module_table_unlock() noexcept { module_table_mutex.unlock(); }
inline const int module_table_fork_hook = set_fork_hook(
    fork_hook_slot::module_table, {&module_table_lock, &module_table_unlock, &module_table_unlock});

inline const std::vector<loaded_module>& modules(bool rescan = false) {
  auto& table = module_table_current;
  auto& m = module_table_mutex;
  const auto* t = table.load(std::memory_order_acquire);
  if (t && !rescan) return t->modules;
  std::lock_guard g(m);
  t = table.load(std::memory_order_acquire);
  if (!t || (rescan && loader_generation() != t->generation)) {
    auto generation = loader_generation();
    t = new module_table{scan_modules(), generation};
    table.store(t, std::memory_order_release);
  }
  return t->modules;
}

inline constexpr int code_module_shift = 48;

inline std::int64_t encode_code_address(const void* p) noexcept {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  for (int attempt = 0; attempt < 2; ++attempt) {
    const auto& t = modules(attempt == 1);
    for (std::size_t i = 0; i < t.size(); ++i) {
      const auto& m = t[i];
      if (a >= m.lo && a < m.hi)
        return std::int64_t((std::uint64_t(i) << code_module_shift) | (a - m.base));
    }
  }
  return -1;  // not code of this program: decodes to an address that is refused
}

inline void* decode_code_address_slow(std::int64_t code) noexcept {
  if (code < 0) return nullptr;
  const std::size_t index = std::size_t(std::uint64_t(code) >> code_module_shift);
  const std::uintptr_t off = std::uint64_t(code) & ((std::uint64_t(1) << code_module_shift) - 1);
  for (int attempt = 0; attempt < 2; ++attempt) {
    const auto& t = modules(attempt == 1);
    if (index < t.size()) {
      const auto& m = t[index];
      if (m.base + off >= m.lo && m.base + off < m.hi) return reinterpret_cast<void*>(m.base + off);
    }
  }
  return nullptr;
}

/// Workers decode the same few codes for every chunk: a tiny per-thread cache keeps
/// that to a compare.
inline void* decode_code_address(std::int64_t code) noexcept {
  struct entry {
    std::int64_t code = -1;
    void* p = nullptr;
  };
  thread_local entry cache[8];
  entry& e = cache[std::uint64_t(code) % 8];
  if (e.code == code && e.p) return e.p;
  void* p = decode_code_address_slow(code);
  if (p) e = {code, p};
  return p;
}

/// A code address in the main executable (module 0), named as encode_code_address
/// names every task's code; nullopt for code in a shared library, which a peer that is
/// not this process's child may have loaded in another order or version.
inline std::optional<std::int64_t> encode_executable_address(const void* fn) {
  const std::int64_t code = encode_code_address(fn);
  if (code < 0 || (std::uint64_t(code) >> code_module_shift) != 0) return std::nullopt;
  return code;
}

/// The address encode_executable_address named; nullptr when the code does not name a
/// place inside this executable's loaded segments.
inline void* decode_executable_address(std::int64_t code) noexcept {
  if (code < 0 || (std::uint64_t(code) >> code_module_shift) != 0) return nullptr;
  return decode_code_address(code);
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
    void* p = decode_code_address(off);
    if (!p) throw serialization_error("corrupt message: the function is not code of this program");
    return reinterpret_cast<F>(p);
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
    if (has) {
      void* p = decode_code_address(off);
      if (!p) throw serialization_error("corrupt message: the initializer is not code of this program");
      c.run_ = reinterpret_cast<void (*)(const std::vector<std::byte>&)>(p);
    }
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
