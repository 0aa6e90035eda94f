// Mirrors seed 004, problem 1: "Create, start, and join a subprocess".
// Create, start and join a process: the multiprocessing equivalent of threading basics.
#include <chrono>
#include <iostream>
#include <string>
#include <thread>

#include <mproc/process.hpp>

void worker(const std::string& name, double duration) {
  std::this_thread::sleep_for(std::chrono::duration<double>(duration));
  std::cout << "Process " << name << " done" << std::endl;
}

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  mproc::Process p(worker, "Alpha", 0.1);
  p.start();
  p.join();
  std::cout << "Main process done" << std::endl;
}
