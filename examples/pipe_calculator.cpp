// Mirrors seed 004, problem 6: "Use a Pipe for bidirectional request-response
// communication between a parent and child process."
// Request/response over a duplex Pipe between the parent and a calculator process.
#include <iostream>
#include <string>
#include <tuple>
#include <variant>

#include <mproc/connection.hpp>
#include <mproc/process.hpp>

// A request is either ("add"|"mul", a, b) or the string "stop"; C++ wants the
// alternatives spelled out, Python's recv() returns whichever object arrives.
using request = std::variant<std::tuple<std::string, int, int>, std::string>;

void calculator(mproc::Connection conn) {
  while (true) {
    auto msg = conn.recv<request>();
    if (std::holds_alternative<std::string>(msg) && std::get<std::string>(msg) == "stop") {
      conn.close();
      break;
    }
    auto [op, a, b] = std::get<0>(msg);
    if (op == "add") conn.send(a + b);
    else if (op == "mul") conn.send(a * b);
  }
}

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  auto [parent_conn, child_conn] = mproc::Pipe();
  mproc::Process p(calculator, child_conn);
  p.start();

  std::tuple<std::string, int, int> operations[] = {{"add", 10, 5}, {"mul", 4, 7}, {"add", 100, 200}};
  for (auto& [op, a, b] : operations) {
    parent_conn.send(request{std::tuple{op, a, b}});
    int result = parent_conn.recv<int>();
    std::cout << op << "(" << a << ", " << b << ") = " << result << std::endl;
  }
  parent_conn.send(request{std::string("stop")});
  p.join();
}
