// Mirrors seed 001, code example "SharedMemory for large data (Python 3.8+)".
// A named SharedMemory block of doubles: one function creates and fills it and
// closes its handle (the memory persists), another attaches by name and reads it
// back, and the block is finally unlinked.
#include <charconv>
#include <cstdio>
#include <iostream>
#include <span>
#include <string>
#include <vector>

#include <mproc/shared_memory.hpp>

// Python's repr() of a float: the shortest digits that round-trip, in positional
// notation for exponents -4..15 (with ".0" when integral), scientific otherwise.
std::string py_repr(double x) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, x, std::chars_format::scientific);
  std::string s(buf, end);
  if (s == "inf" || s == "-inf" || s == "nan" || s == "-nan") return s.back() == 'f' ? s : "nan";
  std::string sign;
  if (s[0] == '-') {
    sign = "-";
    s.erase(0, 1);
  }
  std::size_t e = s.find('e');
  int exp = std::stoi(s.substr(e + 1));
  std::string digits = s.substr(0, e);
  if (digits.size() > 1) digits.erase(1, 1);  // drop the '.'
  if (exp < -4 || exp >= 16) {
    std::string m = digits.substr(0, 1) + (digits.size() > 1 ? "." + digits.substr(1) : "");
    char tail[16];
    std::snprintf(tail, sizeof tail, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    return sign + m + tail;
  }
  std::string out;
  if (exp < 0) {
    out = "0." + std::string(std::size_t(-exp - 1), '0') + digits;
  } else if (std::size_t(exp) + 1 >= digits.size()) {
    out = digits + std::string(std::size_t(exp) + 1 - digits.size(), '0') + ".0";
  } else {
    out = digits.substr(0, std::size_t(exp) + 1) + "." + digits.substr(std::size_t(exp) + 1);
  }
  return sign + out;
}

void create_shared_buffer(const std::string& name, const std::vector<double>& data) {
  std::size_t size = data.size() * sizeof(double);  // struct.calcsize(f"{n}d")
  mproc::SharedMemory shm(mproc::create, size, name);
  std::span<double> out = shm.as<double>();
  std::copy(data.begin(), data.end(), out.begin());
  std::cout << "Created shared memory '" << name << "' (" << size << " bytes)" << std::endl;
  shm.close();  // close the local handle; the memory persists
}

std::vector<double> read_shared_buffer(const std::string& name, std::size_t count) {
  mproc::SharedMemory shm(name);
  std::span<double> in = shm.as<double>(count);
  std::vector<double> data(in.begin(), in.end());
  shm.close();
  return data;
}

int main() {
  const std::string buffer_name = "my_shared_data";
  const std::vector<double> sample{1.1, 2.2, 3.3, 4.4, 5.5};

  create_shared_buffer(buffer_name, sample);

  std::vector<double> result = read_shared_buffer(buffer_name, sample.size());
  std::cout << "Read from shared memory: [";
  for (std::size_t i = 0; i < result.size(); ++i) std::cout << (i ? ", " : "") << py_repr(result[i]);
  std::cout << "]" << std::endl;

  // Cleanup: unlink removes the shared memory block.
  mproc::SharedMemory shm(buffer_name);
  shm.close();
  shm.unlink();
}
