// One fuzz input through the decoders: shared by the libFuzzer target and by the unit
// test that replays the committed corpus (so every regression input also runs under the
// normal test build). Either a value comes out or serialization_error is raised; any
// other exception, crash, leak or undefined behaviour is a finding. A decoded value
// must encode and decode again.
#pragma once

#include "fuzz_types.hpp"

#include <cstdlib>
#include <cstring>
#include <exception>
#include <optional>
#include <span>

#include <pthread.h>

#if defined(__SANITIZE_ADDRESS__)
#define MPROC_FUZZ_HAVE_LSAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MPROC_FUZZ_HAVE_LSAN 1
#endif
#endif
#ifndef MPROC_FUZZ_HAVE_LSAN
#define MPROC_FUZZ_HAVE_LSAN 0
#endif
#if MPROC_FUZZ_HAVE_LSAN
#include <sanitizer/lsan_interface.h>
#endif

namespace fuzz::detail {

template <class T>
void check_reencodes(const T& v) {
  auto bytes = mproc::serialize(v);
  if (bytes.size() != mproc::detail::encoded_size(v)) std::abort();
  // A value that came out of the decoder must always go back in.
  T again = mproc::deserialize<T>(bytes);
  if (mproc::serialize(again).size() != bytes.size()) std::abort();
}

template <class T>
void run(std::span<const std::byte> payload, bool as_message) {
  // tree's raw parent pointers are observers: corrupt bytes can make one point at a
  // fresh object nobody owns. That leak is the documented cost of raw pointers; only
  // this type is exempt from leak reports.
#if MPROC_FUZZ_HAVE_LSAN
  std::optional<__lsan::ScopedDisabler> no_leak_reports;
  if constexpr (std::is_same_v<T, tree>) no_leak_reports.emplace();
#endif
  try {
    if (as_message) {
      // Prefix the right tag so the decoder, not the tag check, sees the payload.
      std::vector<std::byte> msg(8 + payload.size());
      std::uint64_t tag = mproc::detail::tag_of<T>();
      std::memcpy(msg.data(), &tag, 8);
      if (!payload.empty()) std::memcpy(msg.data() + 8, payload.data(), payload.size());
      check_reencodes(mproc::detail::read_message<T>(msg));
      // And the raw payload as a message whose tag is whatever its first bytes say.
      try {
        (void)mproc::detail::read_message<T>(payload);
      } catch (const mproc::serialization_error&) {
      }
    } else {
      T v = mproc::deserialize<T>(payload);
      check_reencodes(v);
      if constexpr (std::is_same_v<T, mproc::detail::encoded_exception>) {
        auto e = mproc::detail::to_exception_ptr(v, 1);
        if (!e) std::abort();
      }
    }
  } catch (const mproc::serialization_error&) {
  }
}

template <std::size_t... I>
void dispatch(std::size_t which, std::span<const std::byte> payload, bool as_message,
              std::index_sequence<I...>) {
  ((which == I ? run<std::tuple_element_t<I, types>>(payload, as_message) : void()), ...);
}

}  // namespace fuzz::detail


namespace fuzz {

/// Decodes one fuzz input: a selector byte (type, message bit) and the payload.
inline void deserialize_one(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return;
  const std::uint8_t selector = data[0];
  std::span<const std::byte> payload(reinterpret_cast<const std::byte*>(data + 1), size - 1);
  detail::dispatch((selector & ~message_bit) % type_count, payload,
                   (selector & message_bit) != 0, std::make_index_sequence<type_count>{});
}

/// Stack of the thread deserialize_one_on_small_stack decodes on: as small as a
/// program's own threads may have, so that a deeply nested archive exhausts it within
/// the fuzzer's input size (the decoder must refuse it, not overflow).
inline constexpr std::size_t small_stack_bytes = std::size_t(128) << 10;

/// deserialize_one on a thread with a small_stack_bytes stack; its exceptions are
/// rethrown here.
inline void deserialize_one_on_small_stack(const std::uint8_t* data, std::size_t size) {
  struct job {
    const std::uint8_t* data;
    std::size_t size;
    std::exception_ptr error;
  } j{data, size, nullptr};
  pthread_attr_t attr;
  if (pthread_attr_init(&attr) != 0 || pthread_attr_setstacksize(&attr, small_stack_bytes) != 0)
    std::abort();
  pthread_t t;
  auto run = [](void* p) -> void* {
    auto* j = static_cast<job*>(p);
    try {
      deserialize_one(j->data, j->size);
    } catch (...) {
      j->error = std::current_exception();
    }
    return nullptr;
  };
  if (pthread_create(&t, &attr, run, &j) != 0) std::abort();
  pthread_attr_destroy(&attr);
  pthread_join(t, nullptr);
  if (j.error) std::rethrow_exception(j.error);
}

}  // namespace fuzz
