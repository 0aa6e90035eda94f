// The bodies of type_name.hpp: included by it in the header-only mode, compiled once by
// src/mproc.cpp otherwise (see MPROC_FUNC).
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <typeinfo>
#include <utility>

#include <cxxabi.h>

#include "type_name.hpp"

namespace mproc::detail {

MPROC_FUNC void replace_all(std::string& s, std::string_view from, std::string_view to) {
  for (std::size_t i = s.find(from); i != std::string::npos; i = s.find(from, i + to.size()))
    s.replace(i, from.size(), to);
}

MPROC_FUNC std::string readable_type_name(std::string s) {
  replace_all(s, "std::__cxx11::", "std::");
  replace_all(s, "std::filesystem::__cxx11::", "std::filesystem::");
  replace_all(s, "std::basic_string<char, std::char_traits<char>, std::allocator<char> >",
              "std::string");
  replace_all(s, "std::basic_string_view<char, std::char_traits<char> >", "std::string_view");
  // Drop default template arguments: allocators, comparators, hashers, traits.
  for (std::string_view arg : {", std::allocator<", ", std::less<", ", std::hash<",
                               ", std::equal_to<", ", std::char_traits<"}) {
    for (std::size_t i = s.find(arg); i != std::string::npos; i = s.find(arg, i)) {
      std::size_t j = i + arg.size();
      int depth = 1;
      while (j < s.size() && depth) depth += s[j] == '<' ? 1 : s[j] == '>' ? -1 : 0, ++j;
      s.erase(i, j - i);
    }
  }
  replace_all(s, " >", ">");
  static constexpr std::pair<std::string_view, std::string_view> durations[] = {
      {"std::chrono::duration<long, std::ratio<1l, 1000000000l>>", "std::chrono::nanoseconds"},
      {"std::chrono::duration<long, std::ratio<1l, 1000000l>>", "std::chrono::microseconds"},
      {"std::chrono::duration<long, std::ratio<1l, 1000l>>", "std::chrono::milliseconds"},
      {"std::chrono::duration<long, std::ratio<1l, 1l>>", "std::chrono::seconds"},
      {"std::chrono::duration<long, std::ratio<60l, 1l>>", "std::chrono::minutes"},
      {"std::chrono::duration<long, std::ratio<3600l, 1l>>", "std::chrono::hours"},
      {"std::ratio<1l, 1l>", "std::ratio<1>"},
  };
  for (auto [from, to] : durations) replace_all(s, from, to);
  return s;
}

MPROC_FUNC std::string demangled_name(const std::type_info& ti) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> p(
      abi::__cxa_demangle(ti.name(), nullptr, nullptr, &status), std::free);
  return status == 0 && p ? readable_type_name(p.get()) : std::string(ti.name());
}

/// Names of every type tag this program image can send, so a mismatched message is
/// reported by name even when the receiver never asked for that type.
MPROC_FUNC std::map<std::uint64_t, std::string>& tag_names() {
  static std::map<std::uint64_t, std::string> m;
  return m;
}
MPROC_FUNC std::mutex& tag_names_mutex() {
  static std::mutex m;
  return m;
}

MPROC_FUNC void register_tag_name(std::uint64_t tag, std::string name) {
  std::lock_guard g(tag_names_mutex());
  tag_names().emplace(tag, std::move(name));
}

MPROC_FUNC std::string tag_name(std::uint64_t tag) {
  // Only ever contended at start-up. A child forked while another thread held the lock
  // would wait forever on it, so give up after a while and report the tag by number.
  std::unique_lock g(tag_names_mutex(), std::defer_lock);
  for (int attempt = 0; attempt < 10000 && !g.try_lock(); ++attempt) std::this_thread::yield();
  if (g.owns_lock()) {
    auto it = tag_names().find(tag);
    if (it != tag_names().end()) return it->second;
  }
  char buf[40];
  std::snprintf(buf, sizeof buf, "<unknown type 0x%016llx>", static_cast<unsigned long long>(tag));
  return buf;
}

}  // namespace mproc::detail
