// Mirrors seed 004, problem 11: "Build a process supervisor that automatically restarts a
// crashing worker process up to a maximum retry count."
// A supervisor restarting a crashing worker, up to max_restarts times.
//
// The worker draws from Python's Mersenne Twister exactly as the seed does
// (random.seed(worker_id), then random.random() < 0.3 means "crash"), so the crash
// pattern is Python's. NOTE: the seed's printed output ("Worker 42 completed all
// rounds") is wrong. Every run calls random.seed(42) again, so every run draws the
// same numbers -- 0.639..., then 0.025... < 0.3 -- and crashes at round 1. Running the
// seed's own code with CPython prints 11 "RuntimeError: Worker 42 crashed at round 1"
// tracebacks on stderr and then "Max restarts (10) exceeded" on stdout, which is what
// this example prints too. It then runs the worker as it is usually meant, with a
// fresh seed per attempt, which reaches "Worker 42 completed all rounds".
#include <chrono>
#include <cstdint>
#include <iostream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>

#include <mproc/sharedctypes.hpp>
#include <mproc/supervisor.hpp>

using namespace std::chrono_literals;

// CPython's random.seed(n) for a small non-negative int: init_by_array with key [n].
std::mt19937 python_seeded(std::uint32_t n) {
  constexpr int N = 624;
  std::uint32_t mt[N];
  mt[0] = 19650218u;
  for (int i = 1; i < N; ++i) mt[i] = 1812433253u * (mt[i - 1] ^ (mt[i - 1] >> 30)) + std::uint32_t(i);
  const std::uint32_t key[1] = {n};
  const int key_len = 1;
  int i = 1, j = 0;
  for (int k = N > key_len ? N : key_len; k; --k) {
    mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1664525u)) + key[j] + std::uint32_t(j);
    ++i, ++j;
    if (i >= N) mt[0] = mt[N - 1], i = 1;
    if (j >= key_len) j = 0;
  }
  for (int k = N - 1; k; --k) {
    mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1566083941u)) - std::uint32_t(i);
    ++i;
    if (i >= N) mt[0] = mt[N - 1], i = 1;
  }
  mt[0] = 0x80000000u;
  // A mersenne_twister_engine's text form is its 624 state words; reading them back
  // leaves it about to regenerate, exactly CPython's state after seeding.
  std::stringstream state;
  for (int k = 0; k < N; ++k) state << mt[k] << ' ';
  std::mt19937 gen;
  state >> gen;
  return gen;
}

// random.random(): 53 random bits from two 32-bit outputs.
double python_random(std::mt19937& gen) {
  std::uint32_t a = gen() >> 5, b = gen() >> 6;
  return (a * 67108864.0 + b) * (1.0 / 9007199254740992.0);
}

void unreliable_worker(int worker_id, int max_rounds) {
  auto gen = python_seeded(std::uint32_t(worker_id));
  for (int i = 0; i < max_rounds; ++i) {
    std::this_thread::sleep_for(50ms);
    if (python_random(gen) < 0.3)  // 30% chance of crash
      throw std::runtime_error("Worker " + std::to_string(worker_id) + " crashed at round " +
                               std::to_string(i));
  }
  std::cout << "Worker " << worker_id << " completed all rounds" << std::endl;
}

// The same worker as it is usually meant: each attempt draws fresh numbers (seeded
// with worker_id + attempt, the attempt counted in shared memory), so a restart can
// get further than the run before it.
void reseeding_worker(int worker_id, int max_rounds, mproc::Value<int> attempts) {
  int attempt;
  {
    std::scoped_lock g(attempts.get_lock());
    attempt = attempts.value()++;
  }
  auto gen = python_seeded(std::uint32_t(worker_id + attempt));
  for (int i = 0; i < max_rounds; ++i) {
    std::this_thread::sleep_for(10ms);
    if (python_random(gen) < 0.3)
      throw std::runtime_error("Worker " + std::to_string(worker_id) + " crashed at round " +
                               std::to_string(i));
  }
  std::cout << "Worker " << worker_id << " completed all rounds" << std::endl;
}

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  // Each crash is reported on stderr by the child ("Process Process-N:" and the
  // exception), as Python prints the child's traceback.
  mproc::Supervisor sup({.max_restarts = 10, .backoff = 10ms}, unreliable_worker, 42, 5);
  auto outcome = sup.run();
  if (!outcome.succeeded) std::cout << "Max restarts (" << sup.options().max_restarts << ") exceeded" << std::endl;

  // With a fresh seed per attempt (Python: random.seed(42 + attempt)) attempts 0-4
  // crash and attempt 5 completes: 5 restarts.
  mproc::Value<int> attempts(0);
  mproc::Supervisor again({.max_restarts = 10, .backoff = 10ms}, reseeding_worker, 42, 5, attempts);
  auto second = again.run();
  std::cout << "succeeded: " << (second.succeeded ? "True" : "False")
            << ", restarts: " << second.restarts << std::endl;
}
