// A program whose main does not reach mproc::init in a spawned child (it calls init
// only when it is not one, standing in for a main that forgot init or calls it too
// late). Started normally it tries to spawn a child; that child runs this main again,
// where its own spawn attempt must be refused, and the parent's start must raise
// start_method_error. Exit code 0: both happened; output says what each side saw.
#include <cstdio>
#include <cstdlib>

#include <mproc/process.hpp>

static void work() { std::puts("child target ran (must not happen)"); }

int main(int argc, char** argv) {
  const bool spawned_child = std::getenv("MPROC_SPAWN") != nullptr;
  if (!spawned_child) mproc::init(argc, argv);
  mproc::Process p({.name = "w", .daemon = false, .method = mproc::start_method::spawn}, work);
  try {
    p.start();
    std::puts(spawned_child ? "child: spawn was allowed (runaway!)" : "parent: start succeeded");
    (void)p.join(std::chrono::seconds(5));
    return 3;
  } catch (const mproc::start_method_error& e) {
    std::printf("%s: start_method_error: %s\n", spawned_child ? "child" : "parent", e.what());
    std::fflush(stdout);
    return spawned_child ? 4 : 0;
  }
}
