// Factorials of 1..2000 over MPI: exact big integers (boost::multiprecision::cpp_int)
// computed on the worker ranks and sent back whole. The tasks are very uneven (2000!
// costs far more than 20!), so ranks take chunks of 10 as they become free. Checked
// against one process computing the same values. Run: mpirun -np 3 ./mpi_factorials
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

#include <mproc/detail/cpp_int_serialization.hpp>  // cpp_int over the wire
#include <mproc/mpi.hpp>

using boost::multiprecision::cpp_int;

namespace {

cpp_int factorial(int n) {
  cpp_int r = 1;
  for (int i = 2; i <= n; ++i) r *= i;
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  mproc::mpi::environment env(argc, argv);  // worker ranks serve tasks here and exit
  std::vector<int> numbers(2000);
  std::iota(numbers.begin(), numbers.end(), 1);

  std::vector<cpp_int> results;
  {
    mproc::mpi::Pool pool;
    results = pool.map(factorial, numbers, 10);
  }

  // As the Pool seed prints them, for the first five.
  for (int i = 0; i < 5; ++i) std::printf("%d! = %s\n", numbers[i], results[i].str().c_str());

  std::size_t total_digits = 0;
  for (const auto& r : results) total_digits += r.str().size();
  const std::string last = results.back().str();
  std::printf("2000! has %zu digits, starting %s\n", last.size(), last.substr(0, 20).c_str());
  std::printf("Digits in 1!..2000! together: %zu\n", total_digits);

  bool same = true;
  cpp_int running = 1;
  for (std::size_t i = 0; i < numbers.size(); ++i) {
    running *= numbers[i];
    same = same && running == results[i];
  }
  std::printf("All %zu results match the single-process computation: %s\n", results.size(),
              same ? "True" : "False");
  return same ? 0 : 1;
}
