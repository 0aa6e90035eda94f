// Mirrors seed 000, practice question "Using Both" (Value counter and Manager dict).
// "Using Both": a shared Value counter (incremented under its own lock) and a Manager
// dict counting finished tasks, written to by 5 processes.
//
// The seed counts tasks with shared_dict["tasks"] = shared_dict.get("tasks", 0) + 1,
// a get and a set that another process can slip between, so a task can be lost (it
// printed the right answer only because its processes happened not to overlap there).
// update() does the read-modify-write atomically, so the count is always 5.
#include <iostream>
#include <mutex>
#include <string>
#include <vector>

#include <mproc/managers.hpp>
#include <mproc/process.hpp>
#include <mproc/sharedctypes.hpp>

void worker(mproc::Value<int> shared_counter, mproc::DictProxy<std::string, int> shared_dict) {
  // increment shared counter safely
  for (int i = 0; i < 1000; ++i) {
    std::scoped_lock g(shared_counter.get_lock());
    shared_counter.value() += 1;
  }
  // update shared dictionary
  shared_dict.update("tasks", [](int v) { return v + 1; }, 0);
}

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  mproc::Manager manager;
  auto shared_dict = manager.dict<std::string, int>();
  mproc::Value<int> shared_counter(0);  // shared integer
  std::vector<mproc::Process> processes;
  for (int i = 0; i < 5; ++i) processes.emplace_back(worker, shared_counter, shared_dict);
  for (auto& p : processes) p.start();
  for (auto& p : processes) p.join();
  std::cout << "Final counter value: " << shared_counter.value() << std::endl;  // should be 5000
  std::cout << "Final dict: {";
  bool first = true;
  for (const auto& [k, v] : shared_dict.items()) {
    std::cout << (first ? "" : ", ") << "'" << k << "': " << v;
    first = false;
  }
  std::cout << "}" << std::endl;  // should show tasks=5
}
