// Test executables use Catch's main, which does not call mproc::init. A child that a
// spawn or forkserver start method starts from this executable must still enter
// through init before Catch's main runs: this static initializer does that when (and
// only when) the process is such a child. Include it in one test file per executable.
#pragma once

#include <mproc/context.hpp>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace mproc_test {

inline std::vector<std::string> own_cmdline() {
  std::vector<std::string> out;
  std::FILE* f = std::fopen("/proc/self/cmdline", "rb");
  if (!f) return out;
  std::string cur;
  for (int c; (c = std::fgetc(f)) != EOF;) {
    if (c == 0) {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += char(c);
    }
  }
  std::fclose(f);
  return out;
}

inline void init_from_cmdline() {
  static std::vector<std::string> args = own_cmdline();
  static std::vector<char*> argv;
  argv.clear();
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  mproc::init(int(args.size()), argv.data());
}

/// In the test process itself: what main's first line would have done.
inline void ensure_init() {
  if (!mproc::initialized()) init_from_cmdline();
}

inline const bool spawned_child_entered = [] {
  if (std::getenv("MPROC_SPAWN")) init_from_cmdline();  // never returns in a child
  return false;
}();

}  // namespace mproc_test
