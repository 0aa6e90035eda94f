// libFuzzer target: untrusted bytes on a forkserver connection (or a spawned child's
// bootstrap socket), read by the real request reader, read_spawn_request, one request
// after another as the server does. Each read either yields a request whose payload
// and descriptors match its header and whose entry is code of this program, or
// reports end-of-file before a request, or raises an mproc::error; anything else
// (another exception, a crash, a leak, an allocation the bytes did not pay for) is a
// finding. Nothing read is ever run.
#include <mproc/detail/posix/forkserver.hpp>

#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <thread>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace d = mproc::detail;
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) std::abort();
  // A writer thread: inputs may exceed the socket buffer.
  std::thread writer([&] {
    std::size_t at = 0;
    while (at < size) {
      ssize_t n = ::send(sv[0], data + at, size - at, MSG_NOSIGNAL);
      if (n <= 0) break;
      at += std::size_t(n);
    }
    ::shutdown(sv[0], SHUT_WR);
  });
  std::size_t consumed = 0;
  for (;;) {
    d::spawn_request req;
    try {
      if (!d::read_spawn_request(sv[1], req, 1'000'000'000, 1'000'000'000, "fuzz request")) break;
    } catch (const mproc::error&) {
      break;
    }
    if (req.payload.size() != req.header.payload_size) std::abort();
    if (req.fds.size() != req.header.nfds || !req.entry) std::abort();
    consumed += sizeof req.header + req.payload.size();
    if (consumed > size) std::abort();
  }
  ::shutdown(sv[1], SHUT_RD);
  writer.join();
  ::close(sv[0]);
  ::close(sv[1]);
  return 0;
}
