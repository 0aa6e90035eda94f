// libFuzzer target: untrusted bytes on a Connection's socket, read by the real frame
// reader (Connection::recv_bytes / recv<T>: read-ahead, in-place frames, partial
// frames across timeouts, oversized frames skipped, control frames of the shared-memory
// lane: an attach without its descriptor is ignored, a ring message is refused as no
// ring can be attached without one).
//
// Input: byte 0 picks the options, byte 1 where the stream is cut; the rest is the
// byte stream the peer sends. The first part is written, read with zero timeouts until
// nothing more is whole, then the rest is written and the peer closes. With
// recv_bytes, what comes out must be exactly what a plain reading of the stream
// gives (frames whole, oversized ones refused and skipped, then end-of-file); with
// recv<T>, the same number of messages, each a value or a serialization_error.
#include <mproc/connection.hpp>
#include <mproc/serialization/boost.hpp>  // types with a Boost serialize()

#include <boost/serialization/string.hpp>
#include <boost/serialization/vector.hpp>

#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

namespace {

using bytes = std::vector<std::byte>;

// One thing a read gives: a frame body, "refused: too large", or "bad frame".
struct outcome {
  bool refused = false;
  bool bad = false;
  bytes body;
  bool operator==(const outcome&) const = default;
};

/// The frames a correct reader finds in `stream` (then end-of-file).
std::vector<outcome> reference(const std::byte* p, std::size_t n, std::uint64_t max) {
  std::vector<outcome> out;
  std::size_t at = 0;
  while (n - at >= 8) {
    std::uint64_t len;
    std::memcpy(&len, p + at, 8);
    at += 8;
    if (len & mproc::detail::control_frame_bit) {
      if (n - at < mproc::detail::control_body_size) break;  // cut short by end-of-file
      at += mproc::detail::control_body_size;
      if (len != mproc::detail::ring_attach_frame) out.push_back({false, true, {}});
      continue;
    }
    if (len > max) {
      out.push_back({true, false, {}});
      if (len > n - at) break;  // skipping runs into end-of-file
      at += std::size_t(len);
      continue;
    }
    if (len > n - at) break;  // cut short by end-of-file
    out.push_back({false, false, bytes(p + at, p + at + len)});
    at += std::size_t(len);
  }
  return out;
}

void write_all(int fd, const std::byte* p, std::size_t n) {
  while (n) {
    ssize_t w = ::write(fd, p, n);
    if (w <= 0) std::abort();  // the socket buffer holds every input (max_len 4096)
    p += w;
    n -= std::size_t(w);
  }
}

constexpr std::uint64_t limits[] = {0, 7, 16, 100, 1000, std::uint64_t(1) << 30};

template <class Read>
void drain(std::vector<outcome>& got, Read&& read, bool until_eof) {
  for (int i = 0; i < 1000; ++i) {
    try {
      got.push_back({false, false, read(until_eof)});
    } catch (const mproc::timeout_error&) {
      if (until_eof) std::abort();  // the peer has closed: nothing may time out now
      return;
    } catch (const mproc::eof_error&) {
      if (!until_eof) std::abort();  // the peer is still open
      return;
    } catch (const mproc::serialization_error& e) {
      // "Too large, skipped", a bad control frame, or (recv<T>) a message that is not a T.
      const bool refused = std::strstr(e.what(), "exceeds the limit") != nullptr;
      got.push_back({refused, !refused, {}});
    }
  }
  std::abort();  // a reader that neither ends nor progresses
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  const std::uint8_t opts = data[0];
  const std::size_t cut = (size - 2) * data[1] / 255;
  const auto* stream = reinterpret_cast<const std::byte*>(data + 2);
  const std::size_t n = size - 2;
  const std::uint64_t max = limits[opts % std::size(limits)];
  const bool typed = (opts & 0x80) != 0;

  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) std::abort();
  mproc::Connection reader(mproc::detail::unique_fd(sv[0]), true, false,
                           mproc::connection_options{.max_message_size = std::size_t(max)});
  mproc::detail::unique_fd peer(sv[1]);

  std::vector<outcome> got;
  auto read = [&](bool until_eof) -> bytes {
    using namespace std::chrono_literals;
    if (!typed) return until_eof ? reader.recv_bytes(5s) : reader.recv_bytes(0ms);
    // A decoded value's bytes are not compared (several encodings can decode alike),
    // only that one message gave one outcome.
    if (opts & 0x40) (void)(until_eof ? reader.recv<std::string>(5s) : reader.recv<std::string>(0ms));
    else (void)(until_eof ? reader.recv<std::vector<std::string>>(5s) : reader.recv<std::vector<std::string>>(0ms));
    return {};
  };
  write_all(peer.get(), stream, cut);
  drain(got, read, false);
  write_all(peer.get(), stream + cut, n - cut);
  peer.reset();
  drain(got, read, true);

  auto want = reference(stream, n, max);
  if (got.size() != want.size()) std::abort();
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (typed) {
      // a refused frame is reported as such; a whole one decodes or is not a T
      if (got[i].refused != want[i].refused) std::abort();
    } else if (!(got[i] == want[i])) {
      std::abort();
    }
  }
  return 0;
}
