// dechunkd: command line (SPEC 2) and nothing else; everything else lives in the core library.
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>

#include "config/config.hpp"
#include "log/log.hpp"
#include "server/server.hpp"
#include "version.hpp"

namespace {

constexpr const char* kDefaultConfig = "/etc/dechunkd/dechunkd.yaml";

void usage(FILE* out) {
  std::fprintf(out,
               "Usage: dechunkd [-c FILE | --config FILE] [--check] [--version] [--help]\n"
               "\n"
               "De-chunking webhook gateway: receives requests (also with Transfer-Encoding: chunked)\n"
               "and forwards them with Content-Length to the targets configured in FILE.\n"
               "\n"
               "  -c, --config FILE   configuration file (default %s)\n"
               "      --check         validate the configuration, print 'ok' or every error, and exit\n"
               "      --version       print the version and exit\n"
               "  -h, --help          print this help and exit\n"
               "\n"
               "Signals: SIGHUP reloads the configuration; SIGTERM/SIGINT drain and stop.\n",
               kDefaultConfig);
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_path = kDefaultConfig;
  bool check = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a == "--version") {
      std::printf("dechunkd %s\n", DECHUNKD_VERSION);
      return 0;
    }
    if (a == "--help" || a == "-h") {
      usage(stdout);
      return 0;
    }
    if (a == "--check") {
      check = true;
    } else if (a == "-c" || a == "--config") {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "dechunkd: %s needs a file name\n", argv[i]);
        usage(stderr);
        return 2;
      }
      config_path = argv[++i];
    } else if (a.rfind("--config=", 0) == 0) {
      if (a.size() == 9) {  // "--config=" with nothing after it: the same mistake as a bare -c
        std::fprintf(stderr, "dechunkd: --config= needs a file name\n");
        usage(stderr);
        return 2;
      }
      config_path = std::string(a.substr(9));
    } else {
      std::fprintf(stderr, "dechunkd: unknown argument '%s'\n", argv[i]);
      usage(stderr);
      return 2;
    }
  }

  dechunkd::Log::init_from_environment();
  dechunkd::LoadResult loaded = dechunkd::load_config_file(config_path);
  if (!loaded.errors.empty()) {
    for (const auto& e : loaded.errors) std::fprintf(stderr, "%s\n", e.str().c_str());
    if (!check) std::fprintf(stderr, "dechunkd: %zu configuration error(s); not starting\n", loaded.errors.size());
    return 1;
  }
  if (check) {
    std::printf("ok\n");
    return 0;
  }
  dechunkd::Server server(loaded.config);
  return server.run();
}
