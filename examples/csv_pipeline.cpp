// Mirrors seed 001, Practice Exercise 3: a multi-process pipeline using Queue (CSV in/out).
// A three-process pipeline joined by Queues: A reads the lines of a large CSV file,
// B parses and transforms each row, C writes the results to a new file. Each stage
// tells the next one it is done with a sentinel (an empty optional). The parent
// generates the input first, measures the throughput of the whole pipeline and
// verifies the output row by row.
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <mproc/process.hpp>
#include <mproc/queue.hpp>

namespace fs = std::filesystem;
using line_queue = mproc::Queue<std::optional<std::string>>;  // nullopt = sentinel

// A million rows (about 28 MB); unoptimised builds (Debug, sanitizers) use fewer so
// the example stays quick there too.
#ifdef NDEBUG
constexpr long rows = 1'000'000;
#else
constexpr long rows = 200'000;
#endif

std::string input_row(long i) {
  char buf[96];
  int n = std::snprintf(buf, sizeof buf, "%ld,item-%ld,%ld.%02ld,%ld", i, i, (i * 37) % 10000 / 100,
                        (i * 37) % 100, i % 50);
  return std::string(buf, std::size_t(n));
}

// id,name,price,qty  ->  id,NAME,price,qty,total
std::string transform(std::string_view row) {
  std::vector<std::string_view> f;
  std::size_t start = 0;
  for (std::size_t i = 0; i <= row.size(); ++i)
    if (i == row.size() || row[i] == ',') {
      f.push_back(row.substr(start, i - start));
      start = i + 1;
    }
  if (f.size() != 4) throw std::runtime_error("bad row: " + std::string(row));
  double price = 0;
  long qty = 0;
  std::from_chars(f[2].data(), f[2].data() + f[2].size(), price);
  std::from_chars(f[3].data(), f[3].data() + f[3].size(), qty);
  std::string name(f[1]);
  for (char& c : name) c = char(std::toupper(static_cast<unsigned char>(c)));
  char total[32];
  int n = std::snprintf(total, sizeof total, "%.2f", price * double(qty));
  std::string out;
  out.reserve(row.size() + name.size() + 16);
  out.append(f[0]).append(",").append(name).append(",").append(f[2]).append(",").append(f[3]);
  out.append(",").append(total, std::size_t(n));
  return out;
}

void reader(std::string path, line_queue out) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);  // header
  while (std::getline(in, line)) out.put(std::optional<std::string>(std::move(line)));
  out.put(std::optional<std::string>());
}

void transformer(line_queue in, line_queue out) {
  while (auto row = in.get()) out.put(std::optional<std::string>(transform(*row)));
  out.put(std::optional<std::string>());
}

void writer(std::string path, line_queue in) {
  std::ofstream out(path);
  out << "id,name,price,qty,total\n";
  while (auto row = in.get()) out << *row << '\n';
  if (!out.flush()) std::exit(2);
}

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  char tmpl[] = "/tmp/mproc-csv-XXXXXX";
  if (!::mkdtemp(tmpl)) return 1;
  const fs::path dir = tmpl;
  const std::string input = dir / "input.csv", output = dir / "output.csv";

  {
    std::ofstream f(input);
    f << "id,name,price,qty\n";
    for (long i = 0; i < rows; ++i) f << input_row(i) << '\n';
  }
  const double input_mb = double(fs::file_size(input)) / 1e6;
  std::printf("Input: %ld rows, %.1f MB\n", rows, input_mb);

  // Bounded queues keep a fast stage from running far ahead of a slow one.
  line_queue a_to_b(10000), b_to_c(10000);
  auto start = std::chrono::steady_clock::now();
  mproc::Process a(reader, input, a_to_b);
  mproc::Process b(transformer, a_to_b, b_to_c);
  mproc::Process c(writer, output, b_to_c);
  a.start();
  b.start();
  c.start();
  a.join();
  b.join();
  c.join();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (a.exitcode() != 0 || b.exitcode() != 0 || c.exitcode() != 0) {
    std::printf("A stage failed\n");
    return 1;
  }

  std::ifstream check(output);
  std::string line;
  std::getline(check, line);
  bool ok = line == "id,name,price,qty,total";
  long n = 0;
  while (ok && std::getline(check, line)) ok = line == transform(input_row(n++));
  ok = ok && n == rows;

  std::printf("Rows processed: %ld\n", n);
  std::printf("Throughput: %.0f rows/s, %.1f MB/s\n", double(rows) / secs, input_mb / secs);
  std::printf("Output verified: %s\n", ok ? "True" : "False");
  fs::remove_all(dir);
  return ok ? 0 : 1;
}
