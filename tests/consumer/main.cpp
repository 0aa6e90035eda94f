// Downstream program: the umbrella header must be self-sufficient and link with
// nothing but mproc::mproc. In the compiled mode (MPROC_COMPILED=ON) the headers only
// declare the start methods, the engine, the tracker and the exception table: every
// call below must find its body in libmproc, or this program does not link.
#include <mproc/mproc.hpp>

#include <cstdio>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

int square(int x) { return x * x; }

int fail_on_three(int x) {
  if (x == 3) throw std::out_of_range("three");
  return x;
}

void exit_with(int code) { std::exit(code); }

/// A policy of the program's own: basic_pool's members are instantiated here, not
/// taken from the library.
struct counting_policy {
  static constexpr mproc::start_method method = mproc::start_method::fork;
  static constexpr bool available = true;
  static inline int launches = 0;
  static mproc::launched_child launch(const mproc::launch_request& r) {
    ++launches;
    return mproc::fork_policy::launch(r);
  }
};

int fail(const char* what) {
  std::printf("consumer FAILED: %s\n", what);
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);  // spawn and the forkserver start from here

  std::map<std::string, std::vector<int>> value{{"squares", {1, 4, 9}}, {"empty", {}}};
  auto bytes = mproc::serialize(value);
  auto back = mproc::deserialize<decltype(value)>(bytes);
  if (back != value) return fail("serialization round trip");
  try {
    bytes.resize(bytes.size() / 2);
    (void)mproc::deserialize<decltype(value)>(bytes);
    return fail("truncated input accepted");
  } catch (const mproc::serialization_error&) {
  }

  const std::vector<int> in{1, 2, 3, 4};
  for (mproc::start_method m : mproc::get_all_start_methods()) {
    mproc::Pool pool({.processes = 2, .method = m});
    if (pool.map(square, in) != std::vector<int>{1, 4, 9, 16}) return fail("Pool.map");
    try {
      (void)pool.map(fail_on_three, in);
      return fail("a task's exception was lost");
    } catch (const std::out_of_range& e) {
      if (std::string(e.what()) != "three") return fail("a task's exception changed on the way");
    }
    mproc::set_start_method(m);
    mproc::Process p(exit_with, 7);
    p.start();
    p.join();
    if (p.exitcode() != 7) return fail("Process exit code");
  }
  mproc::set_start_method(mproc::start_method::fork);
  {
    mproc::basic_pool<counting_policy> pool(2);
    if (pool.map(square, in) != std::vector<int>{1, 4, 9, 16}) return fail("a pool with its own policy");
  }
  if (counting_policy::launches != 2) return fail("the program's own policy was not used");
  std::printf("consumer ok: mproc %s\n", mproc::version_string);
  return 0;
}
