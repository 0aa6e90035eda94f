// A process unrelated to the manager's (exec'd, so it inherits no mapping): used by
// tests/test_managers.cpp to drive a manager from outside.
//   manager_client tcp <address> <hex authkey> <dict name>   ops over TCP; exit 0 on success
//     (this is another program than the server's, so its update functions are refused)
//   manager_client badkey <address> <hex authkey>            exit 0 if authentication_error
//   manager_client proxy <hex of a serialized DictProxy<std::string,int>>
//                                                            attach through the Unix socket
#include <mproc/managers.hpp>

#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>

namespace {

int triple(int v) { return 3 * v; }

std::string unhex(const std::string& h) {
  std::string out;
  for (std::size_t i = 0; i + 1 < h.size(); i += 2) out.push_back(static_cast<char>(std::stoi(h.substr(i, 2), nullptr, 16)));
  return out;
}

int run(int argc, char** argv) {
  if (argc < 3) return 64;
  std::string mode = argv[1];
  if (mode == "tcp" && argc == 5) {
    auto m = mproc::Manager::connect(argv[2], unhex(argv[3]));
    auto d = m.dict<std::string, int>(argv[4]);
    d.set("remote", 42);
    if (d.get("remote") != 42) return 2;
    try {
      // This program is not the server's: its update functions are unknown there.
      d.update("counter", [](int v) { return v + 1; }, 0);
      return 5;
    } catch (const mproc::manager_error&) {
    }
    try {
      d.update("counter", &triple, 0);  // a function pointer into another executable
      return 6;
    } catch (const mproc::manager_error&) {
    }
    d.set("counter", d.get("counter") + 100);
    auto l = m.list<std::string>("log");
    l.append("hello from " + std::to_string(::getpid()));
    try {
      int step = 2;
      d.update("counter", [step](int v) { return v + step; }, 0);  // stateful: refused over TCP
      return 3;
    } catch (const mproc::manager_error&) {
    }
    try {
      (void)d.get("missing");
      return 4;
    } catch (const mproc::key_error&) {
    }
    return 0;
  }
  if (mode == "badkey" && argc == 4) {
    try {
      auto m = mproc::Manager::connect(argv[2], unhex(argv[3]));
      return 1;
    } catch (const mproc::authentication_error&) {
      return 0;
    }
  }
  if (mode == "proxy" && argc == 3) {
    std::string bytes = unhex(argv[2]);
    auto d = mproc::deserialize<mproc::DictProxy<std::string, int>>(
        std::span<const std::byte>(reinterpret_cast<const std::byte*>(bytes.data()), bytes.size()));
    d.set("from_proxy", 7);
    d.update("counter", [](int v) { return v * 10; }, 1);
    return d.get("from_proxy") == 7 ? 0 : 2;
  }
  return 64;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "manager_client: " << e.what() << "\n";
    return 10;
  }
}
