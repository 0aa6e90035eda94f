// Mirrors seed 001, Practice Exercise 2: a parallel file hasher (SHA-256, imap_unordered).
// Exercise 2: a parallel SHA-256 file hasher. 100 paths (95 real files of varied sizes
// in a fresh temporary directory, 5 that do not exist) are hashed with
// Pool::imap_unordered while a progress bar runs on stderr. A missing file is one
// result among the others, not the end of the run.
#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

#include <openssl/evp.h>

#include <mproc/pool.hpp>
#include <mproc/serialization/boost.hpp>  // types with a Boost serialize()

namespace fs = std::filesystem;

struct hash_result {
  std::string path;
  std::string sha256;  // hex; empty when the file could not be read
  std::string error;   // "not found", or what else went wrong
  std::uint64_t bytes = 0;
  template <class Archive>
  void serialize(Archive& ar, unsigned) {
    ar & path & sha256 & error & bytes;
  }
};

class file_descriptor {
 public:
  explicit file_descriptor(int fd) : fd_(fd) {}
  file_descriptor(const file_descriptor&) = delete;
  file_descriptor& operator=(const file_descriptor&) = delete;
  ~file_descriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  [[nodiscard]] int get() const { return fd_; }

 private:
  int fd_;
};

/// Streams the file through SHA-256 in 64 KiB blocks.
hash_result hash_file(const std::string& path) {
  hash_result r{path, "", "", 0};
  int fd;
  do fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    r.error = errno == ENOENT ? "not found" : std::strerror(errno);
    return r;
  }
  file_descriptor file(fd);
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1)
    throw std::runtime_error("EVP_DigestInit_ex(sha256) failed");
  std::vector<unsigned char> block(64 * 1024);
  while (true) {
    ssize_t n = ::read(file.get(), block.data(), block.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      r.error = std::string("read: ") + std::strerror(errno);
      return r;
    }
    if (n == 0) break;
    if (EVP_DigestUpdate(ctx.get(), block.data(), std::size_t(n)) != 1)
      throw std::runtime_error("EVP_DigestUpdate failed");
    r.bytes += std::uint64_t(n);
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_DigestFinal_ex(ctx.get(), digest, &len) != 1)
    throw std::runtime_error("EVP_DigestFinal_ex failed");
  static const char hex[] = "0123456789abcdef";
  for (unsigned i = 0; i < len; ++i) {
    r.sha256 += hex[digest[i] >> 4];
    r.sha256 += hex[digest[i] & 15];
  }
  return r;
}

/// Writes `size` deterministic pseudo-random bytes (mt19937's output is fully
/// specified, so every run writes the same files).
void write_file(const fs::path& p, std::size_t size, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<unsigned char> data(size);
  for (auto& b : data) b = static_cast<unsigned char>(rng());
  std::FILE* f = std::fopen(p.c_str(), "wbe");
  if (!f) throw std::runtime_error("cannot create " + p.string() + ": " + std::strerror(errno));
  const bool ok = std::fwrite(data.data(), 1, size, f) == size;
  if (std::fclose(f) != 0 || !ok) throw std::runtime_error("cannot write " + p.string());
}

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  std::string tmpl = (fs::temp_directory_path() / "mproc-hasher-XXXXXX").string();
  if (!::mkdtemp(tmpl.data())) {
    std::perror("mkdtemp");
    return 1;
  }
  const fs::path dir = tmpl;
  int rc = 0;
  try {
    // Sizes cover the edges of the 64 KiB read loop and files of several blocks.
    const std::set<int> missing_at{7, 23, 42, 66, 91};
    std::vector<std::string> paths;
    std::uint64_t bytes_written = 0;
    for (int i = 0; i < 100; ++i) {
      char name[32];
      std::snprintf(name, sizeof name, "file_%03d.bin", i);
      const fs::path p = dir / name;
      if (!missing_at.count(i)) {
        std::size_t size = i == 0 ? 0 : i == 1 ? 65536 : i == 2 ? 65537
                                     : std::size_t(i) * 104729 % 400000 + std::size_t(i);
        write_file(p, size, unsigned(i));
        bytes_written += size;
      }
      paths.push_back(p.string());
    }

    std::vector<hash_result> results;
    {
      mproc::Pool pool;
      for (hash_result& r : pool.imap_unordered(
               hash_file, paths,
               mproc::map_options{.chunksize = 1, .on_progress = mproc::progress_bar("hashing")}))
        results.push_back(std::move(r));
    }

    std::vector<std::string> missing;
    std::uint64_t bytes_hashed = 0;
    std::size_t hashed = 0;
    bool verified = results.size() == paths.size();
    std::string empty_file_hash, boundary_file_hash;
    for (const auto& r : results) {
      if (!r.error.empty()) {
        missing.push_back(fs::path(r.path).filename().string() + " (" + r.error + ")");
        continue;
      }
      ++hashed;
      bytes_hashed += r.bytes;
      if (r.bytes == 0) empty_file_hash = r.sha256;
      if (fs::path(r.path).filename() == "file_002.bin") boundary_file_hash = r.sha256;
      // Each parallel hash must equal the same file hashed again in this process.
      const hash_result again = hash_file(r.path);
      verified = verified && again.error.empty() && again.sha256 == r.sha256;
    }
    std::sort(missing.begin(), missing.end());

    std::printf("hashed %zu files, %zu missing\n", hashed, missing.size());
    for (const auto& m : missing) std::printf("missing: %s\n", m.c_str());
    std::printf("bytes hashed: %llu of %llu written\n", static_cast<unsigned long long>(bytes_hashed),
                static_cast<unsigned long long>(bytes_written));
    // Known values, independent of this program: the empty input's SHA-256, and
    // sha256sum's answer for the 64 KiB + 1 byte file.
    std::printf("sha256 of the empty file: %s\n", empty_file_hash.c_str());
    std::printf("sha256 of file_002.bin: %s\n", boundary_file_hash.c_str());
    std::printf("all hashes verified: %s\n", verified ? "True" : "False");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    rc = 1;
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
  if (ec) {
    std::fprintf(stderr, "cannot remove %s: %s\n", dir.c_str(), ec.message().c_str());
    rc = 1;
  }
  return rc;
}
