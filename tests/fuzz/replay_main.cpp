// A main() for the fuzz targets when libFuzzer is not linked (any compiler, also g++ and the
// ASan build): runs LLVMFuzzerTestOneInput over every file named on the command line or found
// in a directory named there (not recursive, sorted by name). CTest runs it over each seed
// corpus (fuzz.replay.<name>), so a crash, once added as a reproducer, stays fixed.
//
// Each input runs in a forked child, so one crashing input does not hide the others: the
// summary names every failing file. A child that runs longer than --timeout=SECONDS (default
// 3; an input normally takes milliseconds) is killed and counts as failed, so a hang
// reproducer fails fast instead of growing until CTest's timeout. --no-fork runs the inputs in
// this process instead (for a debugger); the first failure then ends the run.
// Exit status: 0 when every input passed, 1 when any failed, 2 on a usage error or when no
// input was found.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <system_error>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
// Optional in a target, as with libFuzzer.
extern "C" __attribute__((weak)) int LLVMFuzzerInitialize(int* argc, char*** argv);

namespace fs = std::filesystem;

namespace {

bool read_file(const fs::path& p, std::vector<uint8_t>& out) {
  std::ifstream in(p, std::ios::binary);
  if (!in) return false;
  const std::vector<char> bytes((std::istreambuf_iterator<char>(in)),
                                std::istreambuf_iterator<char>());
  // An allocation of exactly the input's size, so ASan sees reads past the end as libFuzzer would.
  out.assign(bytes.begin(), bytes.end());
  out.shrink_to_fit();
  return true;
}

void run_one(const std::vector<uint8_t>& bytes) {
  LLVMFuzzerTestOneInput(bytes.empty() ? nullptr : bytes.data(), bytes.size());
}

}  // namespace

int main(int argc, char** argv) {
  if (LLVMFuzzerInitialize != nullptr) LLVMFuzzerInitialize(&argc, &argv);
  bool fork_each = true;
  unsigned timeout_s = 3;
  std::vector<fs::path> inputs;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--no-fork") == 0) {
      fork_each = false;
      continue;
    }
    if (std::strncmp(argv[i], "--timeout=", 10) == 0) {
      timeout_s = static_cast<unsigned>(std::strtoul(argv[i] + 10, nullptr, 10));
      continue;
    }
    const fs::path arg(argv[i]);
    std::error_code ec;
    if (fs::is_directory(arg, ec)) {
      std::vector<fs::path> found;
      for (const auto& entry : fs::directory_iterator(arg, ec)) {
        if (entry.is_regular_file()) found.push_back(entry.path());
      }
      if (ec) {
        std::fprintf(stderr, "cannot list %s: %s\n", argv[i], ec.message().c_str());
        return 2;
      }
      std::sort(found.begin(), found.end());
      inputs.insert(inputs.end(), found.begin(), found.end());
    } else if (fs::is_regular_file(arg, ec)) {
      inputs.push_back(arg);
    } else {
      std::fprintf(stderr, "%s: not a file or directory\n", argv[i]);
      return 2;
    }
  }
  if (inputs.empty()) {
    std::fprintf(stderr,
                 "usage: %s [--no-fork] [--timeout=SECONDS] DIR_OR_FILE...  (no inputs found)\n",
                 argv[0]);
    return 2;
  }

  std::vector<std::string> failed;
  for (const fs::path& p : inputs) {
    std::vector<uint8_t> bytes;
    if (!read_file(p, bytes)) {
      std::fprintf(stderr, "cannot read %s\n", p.c_str());
      return 2;
    }
    std::fprintf(stderr, "replay: %s (%zu bytes)\n", p.c_str(), bytes.size());
    std::fflush(stderr);
    if (!fork_each) {
      run_one(bytes);
      continue;
    }
    const pid_t pid = ::fork();
    if (pid < 0) {
      std::perror("fork");
      return 2;
    }
    if (pid == 0) {
      if (timeout_s > 0) ::alarm(timeout_s);  // SIGALRM ends a hang
      run_one(bytes);
      std::fflush(nullptr);
      std::exit(0);  // runs the sanitizers' exit checks (leaks) in the child
    }
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0) {
      if (errno != EINTR) {
        std::perror("waitpid");
        return 2;
      }
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) continue;
    std::string why;
    if (WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM) {
      why = "timeout: still running after " + std::to_string(timeout_s) + " s";
    } else if (WIFSIGNALED(status)) {
      why = std::string("signal ") + strsignal(WTERMSIG(status));
    } else {
      why = "exit status " + std::to_string(WEXITSTATUS(status));
    }
    std::fprintf(stderr, "FAILED: %s (%s)\n", p.c_str(), why.c_str());
    failed.push_back(p.string() + " (" + why + ")");
  }

  if (!failed.empty()) {
    std::fprintf(stderr, "\n%zu of %zu inputs failed:\n", failed.size(), inputs.size());
    for (const std::string& f : failed) std::fprintf(stderr, "  %s\n", f.c_str());
    return 1;
  }
  std::fprintf(stderr, "replayed %zu inputs, all passed\n", inputs.size());
  return 0;
}
