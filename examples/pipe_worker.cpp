// Mirrors seed 001, code example "Pipe for two-way communication".
// Two-way communication over a Pipe: the worker upper-cases words until told to stop.
#include <algorithm>
#include <cctype>
#include <iostream>
#include <string>

#include <mproc/connection.hpp>
#include <mproc/process.hpp>

void pipe_worker(mproc::Connection conn) {
  while (true) {
    auto msg = conn.recv<std::string>();
    if (msg == "STOP") {
      conn.send("GOODBYE");
      break;
    }
    std::transform(msg.begin(), msg.end(), msg.begin(),
                   [](unsigned char c) { return char(std::toupper(c)); });
    conn.send("Processed: " + msg);
  }
  conn.close();
}

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  auto [parent_conn, child_conn] = mproc::Pipe();

  mproc::Process p(pipe_worker, child_conn);
  p.start();

  for (const char* word : {"hello", "world", "python"}) {
    parent_conn.send(word);
    std::cout << parent_conn.recv<std::string>() << std::endl;
  }

  parent_conn.send("STOP");
  std::cout << parent_conn.recv<std::string>() << std::endl;  // "GOODBYE"
  p.join();
}
