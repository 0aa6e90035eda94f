// Mirrors seed 004, problem 7: "Use apply_async with get(timeout=...) and exception
// handling to manage unreliable parallel tasks."
// apply_async with a per-result timeout: a task's exception travels back to the caller
// as the same type with the same message, and only that task's result is an error.
#include <chrono>
#include <iostream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include <mproc/pool.hpp>

using namespace std::chrono_literals;

int flaky_task(int n) {
  std::this_thread::sleep_for(n * 100ms);
  if (n == 3) throw std::invalid_argument("Task " + std::to_string(n) + " failed!");
  return n * 10;
}

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  std::vector<std::pair<int, std::variant<int, std::string>>> results;
  {
    mproc::Pool pool(4);
    std::vector<std::pair<int, mproc::AsyncResult<int>>> async_results;
    for (int n = 1; n <= 5; ++n) async_results.emplace_back(n, pool.apply_async(flaky_task, n));
    for (auto& [n, ar] : async_results) {
      try {
        results.emplace_back(n, ar.get(2s));  // a timeout would raise mproc::timeout_error
      } catch (const std::invalid_argument& e) {
        results.emplace_back(n, std::string("ERROR: ") + e.what());
      }
    }
  }
  // Printed as Python prints a list of tuples.
  std::cout << '[';
  for (std::size_t i = 0; i < results.size(); ++i) {
    std::cout << (i ? ", " : "") << '(' << results[i].first << ", ";
    if (auto* v = std::get_if<int>(&results[i].second))
      std::cout << *v;
    else
      std::cout << '\'' << std::get<std::string>(results[i].second) << '\'';
    std::cout << ')';
  }
  std::cout << "]\n";
}
