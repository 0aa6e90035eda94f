// Mirrors seed 004, problem 9: "Parallelize a CPU-intensive image processing pipeline
// using Pool.map and verify result correctness."
// A CPU-bound "image" pipeline run serially and with Pool.map; map keeps input order,
// so the parallel results must equal the serial ones.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <numbers>
#include <random>
#include <vector>

#include <mproc/pool.hpp>

using image = std::vector<int>;

int process_pixel(int val) {
  // Simulates an expensive per-pixel computation; int() truncates toward zero.
  return static_cast<int>(std::sqrt(val * 255.0) * std::sin(val / 255.0 * std::numbers::pi));
}

image process_image(const image& pixels) {
  image out;
  out.reserve(pixels.size());
  for (int p : pixels) out.push_back(process_pixel(p));
  return out;
}

std::vector<image> process_images_serial(const std::vector<image>& images) {
  std::vector<image> out;
  for (const auto& img : images) out.push_back(process_image(img));
  return out;
}

std::vector<image> process_images_parallel(const std::vector<image>& images) {
  mproc::Pool pool;
  return pool.map(process_image, images);
}

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> pixel(0, 255);
  std::vector<image> images(8, image(1000));
  for (auto& img : images)
    for (auto& p : img) p = pixel(rng);

  using clock = std::chrono::steady_clock;
  auto t0 = clock::now();
  auto serial_results = process_images_serial(images);
  double serial_ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();

  // Includes starting and stopping the pool, as the exercise's timing does.
  t0 = clock::now();
  auto parallel_results = process_images_parallel(images);
  double parallel_ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();

  std::printf("Results match: %s\n", serial_results == parallel_results ? "True" : "False");
  std::printf("Serial: %.1fms, Parallel: %.1fms\n", serial_ms, parallel_ms);
}
