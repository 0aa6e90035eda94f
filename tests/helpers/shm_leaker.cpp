// Creates a named SharedMemory segment and never unlinks it, to test the resource
// tracker. Usage: shm_leaker <name> kill|exit
//   kill: prints "ready" and waits to be SIGKILLed;
//   exit: prints "ready" and returns 0 (the segment is left for the tracker).
#include <mproc/shared_memory.hpp>

#include <cstdio>
#include <cstring>
#include <unistd.h>

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s <name> kill|exit|unlink\n", argv[0]);
    return 2;
  }
  mproc::SharedMemory shm(mproc::create, 4096, argv[1]);
  std::memcpy(shm.buf().data(), "leaked", 6);
  std::printf("ready\n");
  std::fflush(stdout);
  if (std::strcmp(argv[2], "unlink") == 0) shm.unlink();
  if (std::strcmp(argv[2], "kill") == 0)
    for (;;) ::pause();
  return 0;
}
