// Mirrors seed 000, practice question "Share data across processes with Manager.dict() or
// Value" (its Manager.dict() code and printed output).
// Share data across processes with Manager().dict(): three processes each add one to
// shared_dict["count"].
//
// The seed does it as get-then-set, two separate operations: a process can read the
// old count while another is between its own read and write, so increments are lost
// (the seed printed {'count': 2}). Here each worker pauses between its read and its
// write, as a slow computation would, so the lost updates show on every run; the
// final count is whatever the last writer saw plus one (1 to 3).
// The fix is one atomic read-modify-write: update() runs the function with the dict
// locked, so no increment is lost and the count is always 3.
#include <chrono>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include <mproc/managers.hpp>
#include <mproc/process.hpp>

using namespace std::chrono_literals;
using Dict = mproc::DictProxy<std::string, int>;

void get_count(Dict shared_dict) {
  int seen = shared_dict.get("count", 0);
  std::this_thread::sleep_for(100ms);  // the others read the same old value meanwhile
  shared_dict.set("count", seen + 1);
}

void atomic_count(Dict shared_dict) {
  shared_dict.update("count", [](int v) { return v + 1; }, 0);
}

std::string py_dict(const Dict& d) {
  std::string out = "{";
  for (const auto& [k, v] : d.items()) {
    if (out.size() > 1) out += ", ";
    out += "'" + k + "': " + std::to_string(v);
  }
  return out + "}";
}

void run_three(void (*target)(Dict), Dict d) {
  std::vector<mproc::Process> processes;
  for (int i = 0; i < 3; ++i) processes.emplace_back(target, d);
  for (auto& p : processes) p.start();
  for (auto& p : processes) p.join();
}

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  mproc::Manager manager;

  auto racy = manager.dict<std::string, int>();
  run_three(get_count, racy);
  std::cout << "Final dict (racy get/set): " << py_dict(racy) << std::endl;

  auto fixed = manager.dict<std::string, int>();
  run_three(atomic_count, fixed);
  std::cout << "Final dict (atomic update): " << py_dict(fixed) << std::endl;
}
