// Mirrors seed 001, Practice Exercise 6: a parallel web scraper with Queues and poison pills.
// A parallel web scraper: the main process puts URLs on a Queue, four worker
// processes fetch each page (libcurl) and parse its title and links (gumbo), and put
// the parsed result on an output Queue. One poison pill per worker shuts them down.
// The pages come from a tiny HTTP server this program runs on 127.0.0.1 (ephemeral
// port), so it works offline; one URL answers 404 and one points at a port nothing
// listens on, and both are reported without stopping the other fetches.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <curl/curl.h>
#include <gumbo.h>

#include <mproc/process.hpp>
#include <mproc/queue.hpp>

// ------------------------------------------------------------------ the local site

constexpr int page_count = 10;

std::string page_html(int i) {
  std::string links;
  for (int k = 1; k <= i % 4 + 1; ++k)
    links += "<li><a href=\"/page/" + std::to_string((i + k) % page_count) + "\">next " +
             std::to_string(k) + "</a></li>";
  return "<!DOCTYPE html><html><head><title>Page " + std::to_string(i) +
         "</title></head><body><h1>Page " + std::to_string(i) + "</h1><ul>" + links +
         "</ul></body></html>";
}

class tiny_http_server {
 public:
  tiny_http_server() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd_, 64) != 0 ||
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0)
      throw std::runtime_error("cannot start the local HTTP server");
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~tiny_http_server() {
    ::shutdown(fd_, SHUT_RDWR);  // wakes accept()
    thread_.join();
    ::close(fd_);
  }
  [[nodiscard]] int port() const { return port_; }

 private:
  void serve() {
    for (;;) {
      int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) {
        if (errno == EINTR) continue;
        return;  // shut down
      }
      handle(c);
      ::close(c);
    }
  }
  static void handle(int c) {
    std::string req;
    char buf[2048];
    while (req.find("\r\n\r\n") == std::string::npos) {
      ssize_t n = ::read(c, buf, sizeof buf);
      if (n <= 0) return;
      req.append(buf, std::size_t(n));
    }
    std::string path = req.substr(4, req.find(' ', 4) - 4);  // "GET <path> HTTP/1.1"
    std::string status = "200 OK", body;
    int i = -1;
    if (path.rfind("/page/", 0) == 0) i = std::atoi(path.c_str() + 6);
    if (i >= 0 && i < page_count && path == "/page/" + std::to_string(i)) {
      body = page_html(i);
    } else {
      status = "404 Not Found";
      body = "<html><head><title>Not found</title></head><body>no such page</body></html>";
    }
    std::string resp = "HTTP/1.1 " + status + "\r\nContent-Type: text/html\r\nContent-Length: " +
                       std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
    for (std::size_t off = 0; off < resp.size();) {
      ssize_t n = ::write(c, resp.data() + off, resp.size() - off);
      if (n <= 0) return;
      off += std::size_t(n);
    }
  }

  int fd_ = -1;
  int port_ = 0;
  std::thread thread_;
};

// ------------------------------------------------------------------ scraping

// (index, url, title, links, error): error empty on success.
using page_result = std::tuple<int, std::string, std::string, std::vector<std::string>, std::string>;
using url_job = std::optional<std::pair<int, std::string>>;  // nullopt = poison pill

std::size_t collect(char* p, std::size_t size, std::size_t n, void* out) {
  static_cast<std::string*>(out)->append(p, size * n);
  return size * n;
}

void walk(const GumboNode* node, std::string& title, std::vector<std::string>& links) {
  if (node->type != GUMBO_NODE_ELEMENT) return;
  const GumboElement& e = node->v.element;
  if (e.tag == GUMBO_TAG_TITLE && e.children.length > 0) {
    auto* text = static_cast<const GumboNode*>(e.children.data[0]);
    if (text->type == GUMBO_NODE_TEXT) title = text->v.text.text;
  }
  if (e.tag == GUMBO_TAG_A)
    if (const GumboAttribute* href = gumbo_get_attribute(&e.attributes, "href")) links.push_back(href->value);
  for (unsigned i = 0; i < e.children.length; ++i)
    walk(static_cast<const GumboNode*>(e.children.data[i]), title, links);
}

page_result scrape(int index, const std::string& url) {
  page_result r{index, url, "", {}, ""};
  std::string body;
  CURL* curl = curl_easy_init();
  if (!curl) {
    std::get<4>(r) = "curl_easy_init failed";
    return r;
  }
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &body);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT, 10L);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  CURLcode rc = curl_easy_perform(curl);
  long status = 0;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_cleanup(curl);
  if (rc != CURLE_OK) {
    std::get<4>(r) = curl_easy_strerror(rc);
  } else if (status != 200) {
    std::get<4>(r) = "HTTP " + std::to_string(status);
  } else {
    GumboOutput* doc = gumbo_parse_with_options(&kGumboDefaultOptions, body.data(), body.size());
    walk(doc->root, std::get<2>(r), std::get<3>(r));
    gumbo_destroy_output(&kGumboDefaultOptions, doc);
  }
  return r;
}

void worker(mproc::Queue<url_job> urls, mproc::Queue<page_result> results) {
  while (auto job = urls.get()) results.put(scrape(job->first, job->second));
}

int unused_port() {
  // Bind, read the port, close: nothing listens there afterwards.
  int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(s);
  return ntohs(a.sin_port);
}

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  curl_global_init(CURL_GLOBAL_DEFAULT);  // once, before any process or thread starts
  tiny_http_server server;
  const std::string base = "http://127.0.0.1:" + std::to_string(server.port());

  std::vector<std::string> urls;
  for (int i = 0; i < page_count; ++i) urls.push_back(base + "/page/" + std::to_string(i));
  urls.push_back(base + "/missing");
  urls.push_back("http://127.0.0.1:" + std::to_string(unused_port()) + "/");

  mproc::Queue<url_job> url_queue;
  mproc::Queue<page_result> result_queue;
  std::vector<mproc::Process> workers;
  for (int w = 0; w < 4; ++w) {
    workers.emplace_back(worker, url_queue, result_queue);
    workers.back().start();
  }
  for (std::size_t i = 0; i < urls.size(); ++i) url_queue.put(url_job{{int(i), urls[i]}});
  for (std::size_t w = 0; w < workers.size(); ++w) url_queue.put(url_job{});  // poison pills

  std::vector<page_result> results;
  for (std::size_t i = 0; i < urls.size(); ++i) results.push_back(result_queue.get(std::chrono::seconds(60)));
  for (auto& w : workers) w.join();
  std::sort(results.begin(), results.end());  // completion order varies; print in URL order

  const auto dir = std::filesystem::temp_directory_path() / ("mproc-scrape-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream saved(dir / "results.tsv");
  int ok = 0;
  for (const auto& [index, url, title, links, error] : results) {
    if (error.empty()) {
      ++ok;
      std::printf("Fetched %s: title='%s', %zu links\n", url.c_str(), title.c_str(), links.size());
      saved << url << '\t' << title << '\t' << links.size() << '\n';
    } else {
      std::printf("Failed %s: %s\n", url.c_str(), error.c_str());
      saved << url << "\tERROR\t" << error << '\n';
    }
  }
  saved.close();
  std::printf("Saved %zu results (%d ok, %zu failed); workers exited: %s\n", results.size(), ok,
              results.size() - std::size_t(ok),
              std::all_of(workers.begin(), workers.end(), [](auto& w) { return w.exitcode() == 0; })
                  ? "True"
                  : "False");
  std::filesystem::remove_all(dir);
  curl_global_cleanup();
}
