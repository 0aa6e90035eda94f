// Reports where its forkserver is, then lives until its standard input closes (or the
// test SIGKILLs it). Modes: "eager" (init forks the server), "lazy" (init does not;
// the first forkserver start spawns it).
//   server <pid>   child <pid>   dir <socket directory>   self <pid>   ready
#include <cstdio>
#include <cstring>

#include <unistd.h>

#include <mproc/process.hpp>

static void sleep_forever() {
  for (;;) ::pause();
}

int main(int argc, char** argv) {
  const bool lazy = argc > 1 && std::strcmp(argv[1], "lazy") == 0;
  mproc::init(argc, argv, {.start_forkserver = !lazy});
  mproc::Process child({.name = "probe-child", .daemon = true,
                        .method = mproc::start_method::forkserver},
                       sleep_forever);
  child.start();
  auto& fs = mproc::detail::forkserver_state();
  std::printf("server %d\nchild %d\ndir %s\nself %d\nready\n", int(fs.server_pid),
              int(child.pid()), fs.addr.dir.c_str(), int(::getpid()));
  std::fflush(stdout);
  char c;
  while (::read(0, &c, 1) > 0) {
  }
  return 0;  // the daemon child is terminated at exit
}
