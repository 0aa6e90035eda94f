// A Manager listening on TCP while 2,000 peers connect and say nothing: it keeps
// serving authenticated clients (TCP and Unix), holds a bounded number of
// descriptors, and does not spin when it runs out of them.
// mproc-test-timeout: 300
#include <catch2/catch.hpp>

#include <mproc/managers.hpp>
#include <mproc/process.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

/// CPU seconds (user + system) process `pid` has used.
double cpu_seconds(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(in, line);
  // Fields after the command name (which may hold spaces) start after the last ')'.
  std::istringstream rest(line.substr(line.rfind(')') + 2));
  std::string field;
  unsigned long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14) utime = std::stoul(field);
    if (i == 15) stime = std::stoul(field);
  }
  return double(utime + stime) / double(::sysconf(_SC_CLK_TCK));
}

std::size_t open_fds(pid_t pid) {
  std::size_t n = 0;
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec);
       it != std::filesystem::directory_iterator(); it.increment(ec))
    ++n;
  return n;
}

/// A TCP connection to 127.0.0.1:port that never sends anything (non-blocking
/// connect: the peer does not wait for the server to accept it).
int idle_peer(int port) {
  int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (s < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  (void)::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  return s;
}

/// A client's options: every step bounded well below the 30 s handshake timeout the
/// idle peers would otherwise hold the server for.
mproc::manager_options prompt() { return {.timeout = 15s}; }

}  // namespace

TEST_CASE("2,000 idle TCP peers: the Manager keeps serving, with bounded descriptors and no spin",
          "[managers][tcp][hostile]") {
  const std::string key = "idle-peers-key";
  // The server keeps the usual descriptor limit (1024 here): 2,000 peers exceed it.
  mproc::Manager m({.address = "127.0.0.1:0", .authkey = key});
  auto shared = m.dict<std::string, int>("shared");
  shared.set("n", 1);
  const pid_t server = m.server_pid();
  REQUIRE(server > 0);

  // This process needs a descriptor per peer.
  rlimit old{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &old) == 0);
  rlimit raised = old;
  raised.rlim_cur = std::min<rlim_t>(old.rlim_max, 4096);
  REQUIRE(raised.rlim_cur >= 2200);
  REQUIRE(::setrlimit(RLIMIT_NOFILE, &raised) == 0);

  std::vector<int> peers;
  for (int i = 0; i < 2000; ++i) {
    int s = idle_peer(m.port());
    REQUIRE(s >= 0);
    peers.push_back(s);
  }
  std::this_thread::sleep_for(1s);  // let the server take them in

  // A working TCP client is served at once (well within the 30 s handshake timeout
  // the idle peers would otherwise hold the server for).
  {
    auto c = mproc::Manager::connect(m.address(), key, prompt());
    auto d = c.dict<std::string, int>("shared");
    CHECK(d.get("n") == 1);
    d.set("n", 2);
  }
  CHECK(shared.get("n") == 2);
  // So is a client over the Unix socket (it authenticates with the server to attach
  // the segment).
  {
    auto c = mproc::Manager::connect(m.unix_address(), key, prompt());
    c.dict<std::string, int>("shared").set("unix", 3);
  }
  CHECK(shared.get("unix") == 3);

  // Bounded: the server holds far fewer descriptors than there are peers.
  CHECK(open_fds(server) < 400);
  // Idle: with every peer connected and silent, the server sleeps.
  const double before = cpu_seconds(server);
  std::this_thread::sleep_for(2s);
  CHECK(cpu_seconds(server) - before < 0.5);

  // More peers keep arriving while a client works: it is still served.
  for (int i = 0; i < 500; ++i) peers.push_back(idle_peer(m.port()));
  {
    auto c = mproc::Manager::connect(m.address(), key, prompt());
    c.dict<std::string, int>("shared").set("late", 4);
  }
  CHECK(shared.get("late") == 4);

  for (int s : peers)
    if (s >= 0) ::close(s);
  ::setrlimit(RLIMIT_NOFILE, &old);
}

TEST_CASE("the server descriptor limit reached: no spin, and service resumes", "[managers][tcp][hostile]") {
  // A server with a tiny descriptor limit: the handshakes alone would exceed it.
  rlimit old{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &old) == 0);
  rlimit tiny = old;
  tiny.rlim_cur = open_fds(::getpid()) + 24;  // the server keeps only a few of these
  REQUIRE(::setrlimit(RLIMIT_NOFILE, &tiny) == 0);
  std::optional<mproc::Manager> m;
  try {
    m.emplace(mproc::manager_options{.address = "127.0.0.1:0", .authkey = "k"});
  } catch (...) {
    ::setrlimit(RLIMIT_NOFILE, &old);
    throw;
  }
  REQUIRE(::setrlimit(RLIMIT_NOFILE, &old) == 0);
  const pid_t server = m->server_pid();
  std::vector<int> peers;
  for (int i = 0; i < 300; ++i) peers.push_back(idle_peer(m->port()));
  std::this_thread::sleep_for(1s);
  const double before = cpu_seconds(server);
  std::this_thread::sleep_for(2s);
  CHECK(cpu_seconds(server) - before < 0.5);
  {
    auto c = mproc::Manager::connect(m->address(), "k", prompt());
    c.dict<int, int>("x").set(1, 1);
  }
  CHECK(m->dict<int, int>("x").get(1) == 1);
  for (int s : peers)
    if (s >= 0) ::close(s);
}
