#include <algorithm>
// The configuration loader (SPEC 3, 11): exact "FILE:LINE:COL: message" output, every error in
// one run, defaults, expansion, and the route rules.
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <doctest/doctest.h>
#include <filesystem>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "config/config_detail.hpp"

using namespace dechunkd;

namespace {

std::vector<std::string> errors_of(std::string_view yaml) {
  const LoadResult r = load_config_string(yaml, "t.yaml");
  std::vector<std::string> out;
  for (const ConfigError& e : r.errors) out.push_back(e.str());
  CHECK((r.config == nullptr) == !out.empty());
  return out;
}

// Exactly one error, as printed.
std::string error_of(std::string_view yaml) {
  auto errs = errors_of(yaml);
  CAPTURE(yaml);
  REQUIRE(errs.size() == 1);
  return errs[0];
}

std::shared_ptr<const Config> ok(std::string_view yaml) {
  LoadResult r = load_config_string(yaml, "t.yaml");
  for (const ConfigError& e : r.errors) FAIL_CHECK(e.str());
  REQUIRE(r.config);
  return r.config;
}

// A valid listen section taking lines 1-2; tests append from line 3.
const std::string kListen = "listen:\n  - address: \"127.0.0.1:0\"\n";

// A temporary file removed at scope end.
struct TempFile {
  std::string path;
  explicit TempFile(std::string_view content) {
    char name[] = "/tmp/dechunkd-test-XXXXXX";
    const int fd = mkstemp(name);
    REQUIRE(fd >= 0);
    REQUIRE(write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size()));
    close(fd);
    path = name;
  }
  ~TempFile() { unlink(path.c_str()); }
};

}  // namespace

// ---- basics ------------------------------------------------------------------------------------

TEST_CASE("ConfigError::str is FILE:LINE:COL: message, or FILE: message without a position") {
  CHECK(ConfigError{"/etc/d.yaml", 3, 7, "bad"}.str() == "/etc/d.yaml:3:7: bad");
  CHECK(ConfigError{"x.yaml", 0, 0, "cannot open"}.str() == "x.yaml: cannot open");
}

TEST_CASE("a minimal config gets the SPEC defaults") {
  auto c = ok(kListen);
  CHECK(c->path == "t.yaml");
  REQUIRE(c->listen.size() == 1);
  CHECK(c->listen[0].address == "127.0.0.1:0");
  CHECK(c->listen[0].host == "127.0.0.1");
  CHECK(c->listen[0].port == 0);
  CHECK_FALSE(c->listen[0].tls.has_value());
  CHECK(c->workers_auto);
  CHECK(c->workers >= 1);
  CHECK(c->workers <= 256);
  CHECK(c->limits.max_body_size == 100 * kMiB);
  CHECK(c->limits.max_header_size == 16 * kKiB);
  CHECK(c->limits.max_headers == 100);
  CHECK(c->limits.max_uri_size == 8 * kKiB);
  CHECK(c->limits.max_connections == 10000);
  CHECK(c->limits.memory_buffer == 1 * kMiB);
  CHECK(c->timeouts.header == Millis{10'000});
  CHECK(c->timeouts.body == Millis{60'000});
  CHECK(c->timeouts.idle == Millis{75'000});
  CHECK(c->timeouts.upstream_connect == Millis{5'000});
  CHECK(c->timeouts.upstream_response == Millis{30'000});
  CHECK(c->timeouts.drain == Millis{30'000});
  CHECK(c->timeouts.send == Millis{60'000});
  CHECK(c->timeouts.upstream_idle == Millis{30'000});
  CHECK(c->storage.dir == "/var/lib/dechunkd");
  CHECK(c->storage.fsync == FsyncPolicy::Always);
  CHECK(c->storage.max_queue_size == 1 * kGiB);
  CHECK(c->admin.address.empty());
  CHECK(c->log.level == LogLevel::Info);
  CHECK(c->log.access == "stdout");
  CHECK(c->routes.empty());
}

TEST_CASE("conf/dechunkd.yaml loads without errors") {
  const auto conf = std::filesystem::path(__FILE__).parent_path().parent_path().parent_path() /
                    "conf" / "dechunkd.yaml";
  const LoadResult r = load_config_file(conf.string());
  for (const ConfigError& e : r.errors) FAIL_CHECK(e.str());
  REQUIRE(r.config);
  const Config& c = *r.config;
  REQUIRE(c.listen.size() == 1);
  CHECK(c.listen[0].address == "127.0.0.1:8080");
  CHECK(c.storage.dir == "/var/lib/dechunkd");
  CHECK(c.log.access == "stdout");
  CHECK(c.admin.address.empty());
  REQUIRE(c.routes.size() == 2);
  CHECK(c.routes[0].mode == RouteMode::Proxy);
  REQUIRE(c.routes[0].targets.size() == 1);
  CHECK(c.routes[0].targets[0].url.authority == "127.0.0.1:9000");
  CHECK(c.routes[1].mode == RouteMode::Echo);
  CHECK(c.routes[1].prefix);
  CHECK(c.routes[1].path == "/debug/");
  CHECK(c.path == conf.string());
}

TEST_CASE("a missing file is one error naming the path") {
  const LoadResult r = load_config_file("/nonexistent/dechunkd.yaml");
  CHECK_FALSE(r.config);
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].str() ==
        "/nonexistent/dechunkd.yaml: cannot open the configuration file: No such file or "
        "directory");
}

TEST_CASE("a directory is not a config file") {
  const LoadResult r = load_config_file("/tmp");
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].str() == "/tmp: cannot read the configuration file: Is a directory");
}

TEST_CASE("the path is used exactly as given") {
  TempFile f("listen: [{address: \"127.0.0.1:0\"}]\nworkerz: 1\n");
  const std::string relative = "/tmp/./" + f.path.substr(5);
  const LoadResult r = load_config_file(relative);
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].str() == relative + ":2:1: unknown key 'workerz'; did you mean 'workers'?");
}

TEST_CASE("YAML syntax errors carry their position") {
  CHECK(error_of("listen: [1, 2\n") == "t.yaml:2:1: invalid YAML: end of sequence flow not found");
  CHECK(error_of(kListen + "workers: a: b\n") == "t.yaml:3:11: invalid YAML: illegal map value");
  CHECK(error_of("listen: *nope\n") ==
        "t.yaml:1:9: invalid YAML: the referenced anchor is not defined");
  // A second document would otherwise be silently ignored.
  CHECK(error_of(kListen + "---\nworkers: 2\n") == "t.yaml:3:1: only one YAML document is allowed");
}

TEST_CASE("an empty or non-mapping document") {
  CHECK(error_of("") == "t.yaml:1:1: missing required key 'listen'");
  CHECK(error_of("# only a comment\n") == "t.yaml:1:1: missing required key 'listen'");
  CHECK(error_of("- a\n- b\n") == "t.yaml:1:1: the configuration must be a mapping");
  CHECK(error_of("hello\n") == "t.yaml:1:1: the configuration must be a mapping");
}

// ---- keys --------------------------------------------------------------------------------------

TEST_CASE("unknown keys are reported at the key, with a suggestion when one is close") {
  CHECK(error_of(kListen + "limits:\n  max_body: 1MiB\n") == "t.yaml:4:3: unknown key 'max_body'");
  CHECK(error_of(kListen + "limits:\n  max_bdoy_size: 1MiB\n") ==
        "t.yaml:4:3: unknown key 'max_bdoy_size'; did you mean 'max_body_size'?");
  CHECK(error_of(kListen + "Workers: 2\n") ==
        "t.yaml:3:1: unknown key 'Workers'; did you mean 'workers'?");
  const auto errs =
      errors_of(kListen + "routes:\n  - name: a\n    pathprefix: /x\n    mode: echo\n");
  REQUIRE(errs.size() == 2);
  CHECK(errs[0] == "t.yaml:4:5: missing required key 'path' or 'path_prefix'");
  CHECK(errs[1] == "t.yaml:5:5: unknown key 'pathprefix'; did you mean 'path_prefix'?");
  // In a flow mapping the column is the key's own.
  CHECK(error_of(kListen + "log: {level: info, acess: off}\n") ==
        "t.yaml:3:20: unknown key 'acess'; did you mean 'access'?");
  CHECK(error_of(kListen + "? [a, b]\n: 1\n") == "t.yaml:3:3: keys must be plain strings");
}

TEST_CASE("duplicate keys are errors at the second key (yaml-cpp keeps both)") {
  CHECK(error_of(kListen + "workers: 1\nworkers: 2\n") ==
        "t.yaml:4:1: duplicate key 'workers' (first at line 3)");
  CHECK(error_of(kListen + "log: {level: info, level: debug}\n") ==
        "t.yaml:3:20: duplicate key 'level' (first at line 3)");
  CHECK(error_of("listen:\n  - address: \"127.0.0.1:0\"\n    address: \"127.0.0.1:1\"\n") ==
        "t.yaml:3:5: duplicate key 'address' (first at line 2)");
  // The first value is the one used.
  CHECK(error_of(kListen + "routes:\n  - name: a\n    path: /a\n    mode: echo\n    name: b\n") ==
        "t.yaml:7:5: duplicate key 'name' (first at line 4)");
  CHECK(error_of(kListen + "routes:\n  - name: a\n    path: /a\n    mode: echo\n"
                           "    request_headers:\n      set: {X-A: 1, X-A: 2}\n") ==
        "t.yaml:8:21: duplicate key 'X-A' (first at line 8)");
}

TEST_CASE("missing required keys are reported at the parent mapping") {
  CHECK(error_of("workers: 2\n") == "t.yaml:1:1: missing required key 'listen'");
  const auto errs = errors_of("listen:\n  - tls_off: 1\n");
  REQUIRE(errs.size() == 2);
  CHECK(errs[0] == "t.yaml:2:5: missing required key 'address'");
  CHECK(errs[1] == "t.yaml:2:5: unknown key 'tls_off'");
  CHECK(error_of(kListen + "routes:\n  - path: /a\n    mode: echo\n") ==
        "t.yaml:4:5: missing required key 'name'");
  CHECK(error_of(kListen + "routes:\n  - name: a\n    path: /a\n") ==
        "t.yaml:4:5: missing required key 'target' (a proxy route forwards to one target)");
  CHECK(errors_of(kListen + "admin:\n  token_file: /x\n").at(0) ==
        "t.yaml:4:3: missing required key 'address'");
}

TEST_CASE("wrong types") {
  CHECK(error_of("listen: \"0.0.0.0:8080\"\n") == "t.yaml:1:9: 'listen' must be a list");
  CHECK(error_of("listen:\n") == "t.yaml:1:1: 'listen' must not be empty");
  CHECK(error_of("listen: []\n") == "t.yaml:1:9: 'listen' must not be empty");
  CHECK(error_of("listen:\n  - \"0.0.0.0:8080\"\n") ==
        "t.yaml:2:5: each entry of 'listen' must be a mapping (e.g. - address: "
        "\"0.0.0.0:8080\")");
  CHECK(error_of(kListen + "limits: 5\n") == "t.yaml:3:9: 'limits' must be a mapping");
  CHECK(error_of(kListen + "limits:\n  max_body_size: [1]\n") ==
        "t.yaml:4:18: 'max_body_size' must be a single value, not a list");
  CHECK(error_of(kListen + "storage:\n  dir: {a: 1}\n") ==
        "t.yaml:4:8: 'dir' must be a single value, not a mapping");
  CHECK(error_of(kListen + "storage:\n  dir:\n") == "t.yaml:4:3: 'dir' needs a value");
  CHECK(error_of(kListen + "storage:\n  dir: \"\"\n") == "t.yaml:4:8: 'dir' must not be empty");
  CHECK(error_of(kListen +
                 "routes:\n  - name: a\n    path: /a\n    mode: echo\n    methods: POST\n") ==
        "t.yaml:7:14: 'methods' must be a list");
  // Empty sections read as "all defaults".
  ok(kListen + "limits:\ntimeouts:\nstorage:\nlog:\nroutes:\n");
}

// ---- values ------------------------------------------------------------------------------------

TEST_CASE("sizes: grammar errors at the value") {
  auto size_error = [](const std::string& v) {
    return error_of(kListen + "limits:\n  max_body_size: " + v + "\n");
  };
  const std::string grammar =
      " for 'max_body_size' (expected an integer, optionally followed by KiB, MiB, GiB, KB, MB "
      "or GB, e.g. 10MiB)";
  CHECK(size_error("10 MiB") == "t.yaml:4:18: invalid size '10 MiB'" + grammar);
  CHECK(size_error("10mib") == "t.yaml:4:18: invalid size '10mib'" + grammar);
  CHECK(size_error("-1") == "t.yaml:4:18: invalid size '-1'" + grammar);
  CHECK(size_error("1.5MiB") == "t.yaml:4:18: invalid size '1.5MiB'" + grammar);
  CHECK(size_error("\"+5\"") == "t.yaml:4:18: invalid size '+5'" + grammar);
  CHECK(size_error("0") == "t.yaml:4:18: 'max_body_size' must not be 0");
  CHECK(size_error("0MiB") == "t.yaml:4:18: 'max_body_size' must not be 0");
  CHECK(size_error("18446744073709551616") ==
        "t.yaml:4:18: size '18446744073709551616' for 'max_body_size' is too large");
  CHECK(size_error("99999999999GiB") ==
        "t.yaml:4:18: size '99999999999GiB' for 'max_body_size' is too large");
  auto c = ok(kListen +
              "limits:\n  max_body_size: 25MiB\n  max_header_size: 8KB\n"
              "  max_uri_size: 4096\n  memory_buffer: 0\n");
  CHECK(c->limits.max_body_size == 25 * kMiB);
  CHECK(c->limits.max_header_size == 8000);  // KB = 1000
  CHECK(c->limits.max_uri_size == 4096);
  CHECK(c->limits.memory_buffer == 0);  // 0 allowed: every body spills
}

TEST_CASE("durations: grammar errors at the value") {
  const std::string grammar =
      " (expected an integer followed by ms, s, m or h, e.g. 250ms, 10s, 5m, 2h)";
  CHECK(error_of(kListen + "timeouts:\n  header: 1.5s\n") ==
        "t.yaml:4:11: invalid duration '1.5s' for 'header'" + grammar);
  CHECK(error_of(kListen + "timeouts:\n  header: 10\n") ==
        "t.yaml:4:11: invalid duration '10' for 'header'" + grammar);
  CHECK(error_of(kListen + "timeouts:\n  header: 10 s\n") ==
        "t.yaml:4:11: invalid duration '10 s' for 'header'" + grammar);
  CHECK(error_of(kListen + "timeouts:\n  header: 0s\n") == "t.yaml:4:11: 'header' must not be 0");
  CHECK(error_of(kListen + "timeouts:\n  header: 87601h\n") ==
        "t.yaml:4:11: duration '87601h' for 'header' is too large (at most 87600h)");
  CHECK(error_of(kListen + "timeouts:\n  header: 99999999999999999999h\n") ==
        "t.yaml:4:11: duration '99999999999999999999h' for 'header' is too large (at most "
        "87600h)");
  auto c = ok(kListen + "timeouts: {header: 250ms, body: 2m, idle: 1h, drain: 0s, send: 5s}\n");
  CHECK(c->timeouts.header == Millis{250});
  CHECK(c->timeouts.body == Millis{120'000});
  CHECK(c->timeouts.idle == Millis{3'600'000});
  CHECK(c->timeouts.drain == Millis{0});  // 0 allowed: stop at once
  CHECK(c->timeouts.send == Millis{5'000});
}

TEST_CASE("integers, enums and booleans") {
  CHECK(error_of(kListen + "limits: {max_headers: 1KiB}\n") ==
        "t.yaml:3:23: 'max_headers' must be an integer of at least 1 (got '1KiB')");
  CHECK(error_of(kListen + "limits: {max_connections: 0}\n") ==
        "t.yaml:3:27: 'max_connections' must be an integer of at least 1 (got '0')");
  CHECK(error_of(kListen + "storage: {fsync: sometimes}\n") ==
        "t.yaml:3:18: invalid value 'sometimes' for 'fsync' (expected one of: always, batch, "
        "never)");
  CHECK(error_of(kListen + "log: {level: verbose}\n") ==
        "t.yaml:3:14: invalid value 'verbose' for 'level' (expected one of: error, warn, info, "
        "debug)");
  auto c = ok(kListen +
              "storage: {fsync: batch, max_queue_size: 2GB, dir: /srv/q}\n"
              "log: {level: debug}\n");
  CHECK(c->storage.fsync == FsyncPolicy::Batch);
  CHECK(c->storage.max_queue_size == 2'000'000'000u);
  CHECK(c->storage.dir == "/srv/q");
  CHECK(c->log.level == LogLevel::Debug);
}

TEST_CASE("workers: auto or 1..256") {
  auto c = ok(kListen + "workers: 3\n");
  CHECK(c->workers == 3);
  CHECK_FALSE(c->workers_auto);
  c = ok(kListen + "workers: auto\n");
  CHECK(c->workers_auto);
  CHECK(c->workers >= 1);
  CHECK(error_of(kListen + "workers: 0\n") ==
        "t.yaml:3:10: 'workers' must be an integer from 1 to 256 (got '0')");
  CHECK(error_of(kListen + "workers: 257\n") ==
        "t.yaml:3:10: 'workers' must be an integer from 1 to 256 (got '257')");
  CHECK(error_of(kListen + "workers: Auto\n") ==
        "t.yaml:3:10: 'workers' must be an integer from 1 to 256 (got 'Auto')");
}

TEST_CASE("log.access: off may be unquoted, paths must be absolute") {
  CHECK(ok(kListen + "log:\n  access: off\n")->log.access == "off");
  CHECK(ok(kListen + "log:\n  access: \"off\"\n")->log.access == "off");
  CHECK(ok(kListen + "log:\n  access: false\n")->log.access == "off");
  CHECK(ok(kListen + "log:\n  access: stderr\n")->log.access == "stderr");
  CHECK(ok(kListen + "log:\n  access: /var/log/dechunkd/access.log\n")->log.access ==
        "/var/log/dechunkd/access.log");
  CHECK(error_of(kListen + "log:\n  access: access.log\n") ==
        "t.yaml:4:11: 'access' must be stdout, stderr, off or an absolute file path (got "
        "'access.log')");
  CHECK(error_of(kListen + "log:\n  access: \"false\"\n") ==
        "t.yaml:4:11: 'access' must be stdout, stderr, off or an absolute file path (got "
        "'false')");
}

TEST_CASE("listen addresses") {
  auto c =
      ok("listen:\n  - address: \"[::]:8080\"\n  - address: localhost:8081\n"
         "  - address: \"[::1]:0\"\n  - address: \"[::1]:0\"\n");
  REQUIRE(c->listen.size() == 4);
  CHECK(c->listen[0].host == "::");
  CHECK(c->listen[0].port == 8080);
  CHECK(c->listen[0].address == "[::]:8080");
  CHECK(c->listen[1].host == "localhost");
  CHECK(c->listen[1].port == 8081);
  auto addr_error = [](const std::string& a) {
    return error_of("listen:\n  - address: \"" + a + "\"\n");
  };
  CHECK(addr_error("0.0.0.0") ==
        "t.yaml:2:14: invalid address '0.0.0.0': missing ':PORT' (write host:port, e.g. "
        "127.0.0.1:8080)");
  CHECK(addr_error("0.0.0.0:65536") ==
        "t.yaml:2:14: invalid address '0.0.0.0:65536': invalid port (expected 0-65535)");
  CHECK(addr_error("0.0.0.0:") ==
        "t.yaml:2:14: invalid address '0.0.0.0:': invalid port (expected 0-65535)");
  CHECK(addr_error(":::8080") ==
        "t.yaml:2:14: invalid address ':::8080': IPv6 addresses must be written in brackets, "
        "e.g. [::1]:8080");
  CHECK(addr_error(":8080") == "t.yaml:2:14: invalid address ':8080': missing host");
  CHECK(addr_error("[::1:8080") ==
        "t.yaml:2:14: invalid address '[::1:8080': missing ']' after an IPv6 address");
  CHECK(addr_error("[zz]:80") ==
        "t.yaml:2:14: invalid address '[zz]:80': invalid IPv6 address in brackets");
  CHECK(addr_error("300.1.1.1:80") ==
        "t.yaml:2:14: invalid address '300.1.1.1:80': invalid host name or address");
  CHECK(error_of("listen:\n  - address: \"127.0.0.1:80\"\n  - address: \"127.0.0.1:80\"\n") ==
        "t.yaml:3:14: duplicate listen address '127.0.0.1:80' (first at line 2)");
}

TEST_CASE("admin: loopback needs no token; anything else does") {
  auto c = ok(kListen + "admin:\n  address: \"127.0.0.1:9901\"\n");
  CHECK(c->admin.address == "127.0.0.1:9901");
  CHECK(c->admin.host == "127.0.0.1");
  CHECK(c->admin.port == 9901);
  CHECK(c->admin.token_file.empty());
  ok(kListen + "admin:\n  address: \"[::1]:9901\"\n");
  ok(kListen + "admin:\n  address: \"localhost:9901\"\n");
  ok(kListen + "admin:\n");  // nothing under it: no admin listener
  CHECK(error_of(kListen + "admin:\n  address: \"0.0.0.0:9901\"\n") ==
        "t.yaml:4:12: admin address '0.0.0.0:9901' is not a loopback address: set 'token_file' "
        "to protect the mutating endpoints");

  TempFile token("s3cr3t-token\r\n");
  c = ok(kListen + "admin:\n  address: \"0.0.0.0:9901\"\n  token_file: " + token.path + "\n");
  CHECK(c->admin.token_file == token.path);
  CHECK(c->admin.token == "s3cr3t-token");  // one trailing CRLF trimmed

  TempFile empty("\n");
  CHECK(error_of(kListen + "admin:\n  address: \"0.0.0.0:9901\"\n  token_file: " + empty.path +
                 "\n") == "t.yaml:5:15: admin token file '" + empty.path + "' is empty");
  CHECK(
      error_of(kListen + "admin:\n  address: \"127.0.0.1:9901\"\n  token_file: /nonexistent/t\n") ==
      "t.yaml:5:15: admin token file: cannot read '/nonexistent/t': No such file or directory");
}

TEST_CASE("admin address may not be a listen address") {
  CHECK(error_of(
            "listen:\n  - address: \"127.0.0.1:8080\"\nadmin:\n  address: \"127.0.0.1:8080\"\n") ==
        "t.yaml:4:12: admin address '127.0.0.1:8080' is also a listen address (line 2)");
}

// ---- expansion ---------------------------------------------------------------------------------

TEST_CASE("${env:NAME} and ${file:PATH} expand; $${ is a literal ${") {
  setenv("DECHUNKD_TEST_KEY", "k-123", 1);
  unsetenv("DECHUNKD_TEST_UNSET");
  TempFile url("http://127.0.0.1:9000/flow?sig=abc\n");
  TempFile secret("line1\nline2\n\n");
  const std::string routes = kListen +
                             "routes:\n"
                             "  - name: a\n"
                             "    path: /a\n"
                             "    target: \"${file:" +
                             url.path +
                             "}\"\n"
                             "    request_headers:\n"
                             "      set:\n"
                             "        X-Api-Key: \"${env:DECHUNKD_TEST_KEY}\"\n"
                             "        X-Lit: \"$${env:DECHUNKD_TEST_KEY} and $$ and $x\"\n"
                             "        X-Mix: \"a-${env:DECHUNKD_TEST_KEY}-b\"\n";
  auto c = ok(routes);
  const RouteConfig& r = c->routes.at(0);
  CHECK(r.targets.at(0).url.text == "http://127.0.0.1:9000/flow?sig=abc");
  CHECK(r.targets.at(0).url.query == "sig=abc");
  REQUIRE(r.request_headers.set.size() == 3);
  CHECK(r.request_headers.set[0] == std::pair<std::string, std::string>{"X-Api-Key", "k-123"});
  CHECK(r.request_headers.set[1].second == "${env:DECHUNKD_TEST_KEY} and $$ and $x");
  CHECK(r.request_headers.set[2].second == "a-k-123-b");

  const std::string head = kListen +
                           "routes:\n  - name: a\n    path: /a\n    mode: echo\n"
                           "    request_headers:\n      set:\n";
  CHECK(error_of(head + "        X-A: \"${env:DECHUNKD_TEST_UNSET}\"\n") ==
        "t.yaml:9:14: environment variable 'DECHUNKD_TEST_UNSET' is not set");
  CHECK(error_of(head + "        X-A: \"${file:/nonexistent/secret}\"\n") ==
        "t.yaml:9:14: cannot read '/nonexistent/secret': No such file or directory");
  CHECK(error_of(head + "        X-A: \"${env:DECHUNKD_TEST_KEY\"\n") ==
        "t.yaml:9:14: unterminated '${' (write '$${' for a literal '${')");
  CHECK(error_of(head + "        X-A: \"${DECHUNKD_TEST_KEY}\"\n") ==
        "t.yaml:9:14: unknown '${...}' expansion (use ${env:NAME} or ${file:PATH}; write '$${' "
        "for a literal '${')");
  CHECK(error_of(head + "        X-A: \"${env:1X}\"\n") ==
        "t.yaml:9:14: invalid environment variable name in '${env:...}'");
  // Only one trailing newline is trimmed: "line1\nline2\n" keeps a LF and is no header value.
  CHECK(error_of(head + "        X-A: \"${file:" + secret.path + "}\"\n") ==
        "t.yaml:9:14: the value of header 'X-A' contains a control character (CR, LF, NUL, ...)");
}

TEST_CASE("expanded text is not expanded again") {
  setenv("DECHUNKD_TEST_NESTED", "${env:HOME}", 1);
  auto c = ok(kListen +
              "routes:\n  - name: a\n    path: /a\n    mode: echo\n"
              "    request_headers: {set: {X-A: \"${env:DECHUNKD_TEST_NESTED}\"}}\n");
  CHECK(c->routes[0].request_headers.set[0].second == "${env:HOME}");
}

TEST_CASE("config_detail::read_secret_file trims exactly one newline") {
  for (auto [content, want] : std::vector<std::pair<std::string, std::string>>{{"abc", "abc"},
                                                                               {"abc\n", "abc"},
                                                                               {"abc\r\n", "abc"},
                                                                               {"abc\n\n", "abc\n"},
                                                                               {"abc\r", "abc\r"},
                                                                               {"\n", ""},
                                                                               {"", ""}}) {
    TempFile f(content);
    std::string out;
    CHECK_FALSE(config_detail::read_secret_file(f.path, out).has_value());
    CHECK(out == want);
  }
}

// ---- routes ------------------------------------------------------------------------------------

TEST_CASE("a proxy route with every key") {
  auto c = ok(kListen +
              "routes:\n"
              "  - name: orders-to-flow.v2\n"
              "    path: /hooks/orders\n"
              "    methods: [POST, PUT]\n"
              "    host: Hooks.Example.com\n"
              "    max_body_size: 25MiB\n"
              "    trailers: merge\n"
              "    request_headers:\n"
              "      set: { X-Api-Key: abc, X-Empty: \"\" }\n"
              "      remove: [Cookie, X-Debug]\n"
              "    targets:\n"
              "      - url: \"http://[::1]:8000/ingest?x=1&y\"\n"
              "        timeout: 120s\n"
              "        connect_timeout: 3s\n"
              "        preserve_host: true\n"
              "        headers: { set: { X-T: t }, remove: [X-U] }\n"
              "        idle_timeout: 4s\n"
              "        max_idle: 0\n");
  const RouteConfig& r = c->routes.at(0);
  CHECK(r.name == "orders-to-flow.v2");
  CHECK(r.path == "/hooks/orders");
  CHECK_FALSE(r.prefix);
  CHECK(r.methods == std::vector<std::string>{"POST", "PUT"});
  CHECK(r.host == "hooks.example.com");
  CHECK(r.mode == RouteMode::Proxy);
  CHECK(r.max_body_size == 25 * kMiB);
  CHECK(r.body_limit(*c) == 25 * kMiB);
  CHECK(r.trailers == TrailerMode::Merge);
  CHECK(r.request_headers.set.size() == 2);
  CHECK(r.request_headers.set[1].second.empty());
  CHECK(r.request_headers.remove == std::vector<std::string>{"Cookie", "X-Debug"});
  REQUIRE(r.targets.size() == 1);
  const TargetConfig& t = r.targets[0];
  CHECK(t.url.host == "::1");
  CHECK(t.url.authority == "[::1]:8000");
  CHECK(t.url.port == 8000);
  CHECK(t.url.path == "/ingest");
  CHECK(t.url.query == "x=1&y");
  CHECK(t.url.redacted() == "http://[::1]:8000/ingest");
  CHECK(t.timeout == Millis{120'000});
  CHECK(t.connect_timeout == Millis{3'000});
  CHECK(t.preserve_host);
  CHECK(t.headers.set.at(0).first == "X-T");
  CHECK(t.headers.remove.at(0) == "X-U");
  CHECK(t.idle_timeout == Millis{4'000});
  CHECK(t.max_idle == 0);
  CHECK(t.max_in_flight == 8);
}

TEST_CASE("route defaults and the target shorthand") {
  auto c = ok(kListen +
              "routes:\n  - name: a\n    path_prefix: /hooks/\n"
              "    target: http://example.com\n");
  const RouteConfig& r = c->routes.at(0);
  CHECK(r.prefix);
  CHECK(r.path == "/hooks/");
  CHECK(r.mode == RouteMode::Proxy);
  CHECK(r.methods.empty());
  CHECK(r.host.empty());
  CHECK_FALSE(r.max_body_size.has_value());
  CHECK(r.body_limit(*c) == 100 * kMiB);
  CHECK(r.trailers == TrailerMode::Drop);
  REQUIRE(r.targets.size() == 1);
  CHECK(r.targets[0].url.authority == "example.com");
  CHECK(r.targets[0].url.port == 80);
  CHECK(r.targets[0].url.path == "/");
  CHECK(r.targets[0].url.query.empty());
  CHECK(r.targets[0].max_idle == 32);
  CHECK(r.targets[0].idle_timeout == Millis{4'000});
  CHECK_FALSE(r.targets[0].timeout.has_value());
  CHECK(r.accept_status == 202);
  CHECK(r.retry.max_attempts == 12);
}

TEST_CASE("route names, paths and methods") {
  const std::string head = kListen + "routes:\n  - mode: echo\n";
  CHECK(error_of(head + "    name: -a\n    path: /a\n") ==
        "t.yaml:5:11: invalid route name '-a' (letters, digits, '_', '.', '-'; starting with a "
        "letter or digit)");
  CHECK(error_of(head + "    name: a b\n    path: /a\n").find("invalid route name 'a b'") !=
        std::string::npos);
  CHECK(error_of(head + "    name: a\n    path: a\n") == "t.yaml:6:11: 'path' must start with '/'");
  CHECK(error_of(head + "    name: a\n    path_prefix: \"/a?x\"\n") ==
        "t.yaml:6:18: 'path_prefix' must not contain '?', '#', spaces, control or non-ASCII "
        "characters (paths are matched raw, not percent-decoded)");
  CHECK(error_of(head + "    name: a\n    path: /a\n    path_prefix: /a/\n") ==
        "t.yaml:7:5: give either 'path' or 'path_prefix', not both");
  CHECK(error_of(head + "    name: a\n    path: /a\n    methods: [post]\n") ==
        "t.yaml:7:15: method 'post' must be upper case (methods are case-sensitive)");
  CHECK(error_of(head + "    name: a\n    path: /a\n    methods: [POST, \"GE T\"]\n") ==
        "t.yaml:7:21: invalid method 'GE T'");
  CHECK(error_of(head + "    name: a\n    path: /a\n    methods: [POST, POST]\n") ==
        "t.yaml:7:21: method 'POST' is listed twice");
  CHECK(error_of(head + "    name: a\n    path: /a\n    methods: []\n") ==
        "t.yaml:7:14: 'methods' must not be empty");
  CHECK(error_of(head + "    name: a\n    path: /a\n    host: \"example.com:8080\"\n") ==
        "t.yaml:7:11: 'host' must not include a port (the Host header's port is ignored)");
  CHECK(error_of(head + "    name: a\n    path: /a\n    host: \"exa mple\"\n") ==
        "t.yaml:7:11: invalid host 'exa mple'");
  CHECK(error_of(head + "    name: a\n    path: /a\n    mode: echo\n") ==
        "t.yaml:7:5: duplicate key 'mode' (first at line 4)");
  CHECK(error_of(head + "    name: a\n    path: /a\n    trailers: keep\n") ==
        "t.yaml:7:15: invalid value 'keep' for 'trailers' (expected one of: drop, merge)");
  ok(head + "    name: \"9.a_b-c\"\n    path: /a\n    host: \"[::1]\"\n    methods: [M-SEARCH]\n");
}

TEST_CASE("route names are unique") {
  CHECK(error_of(kListen + "routes:\n"
                           "  - {name: a, path: /a, mode: echo}\n"
                           "  - {name: a, path: /b, mode: echo}\n") ==
        "t.yaml:5:12: duplicate route name 'a' (first at line 4)");
}

TEST_CASE("targets per mode") {
  const std::string head = kListen + "routes:\n  - name: a\n    path: /a\n";
  CHECK(error_of(head + "    mode: echo\n    target: http://x/\n") ==
        "t.yaml:7:5: 'target' does not apply to echo routes");
  CHECK(error_of(head + "    mode: echo\n    targets: [{url: http://x/}]\n") ==
        "t.yaml:7:5: 'targets' does not apply to echo routes");
  CHECK(error_of(head + "    target: http://x/\n    targets: [{url: http://x/}]\n") ==
        "t.yaml:7:5: give either 'target' or 'targets', not both");
  CHECK(error_of(head + "    targets: [{url: http://x/}, {url: http://y/}]\n") ==
        "t.yaml:6:14: a proxy route takes exactly one target (use mode: queue to fan out)");
  CHECK(error_of(head + "    targets: []\n") == "t.yaml:6:14: 'targets' must not be empty");
  CHECK(error_of(head + "    targets: [http://x/]\n") ==
        "t.yaml:6:15: each entry of 'targets' must be a mapping with a 'url'");
  CHECK(error_of(head + "    targets:\n      - timeout: 1s\n") ==
        "t.yaml:7:9: missing required key 'url'");
  CHECK(error_of(head + "    mode: bounce\n") ==
        "t.yaml:6:11: invalid value 'bounce' for 'mode' (expected one of: proxy, queue, echo)");
}

TEST_CASE("target URLs") {
  auto url_error = [](const std::string& u) {
    return error_of(kListen + "routes:\n  - name: a\n    path: /a\n    target: \"" + u + "\"\n");
  };
  CHECK(url_error("ftp://x/") ==
        "t.yaml:6:13: invalid target URL: the URL must start with "
        "http:// or https://");
  CHECK(url_error("example.com/x") ==
        "t.yaml:6:13: invalid target URL: the URL must start with http:// or https://");
  CHECK(url_error("http://x/a#frag") ==
        "t.yaml:6:13: invalid target URL: the URL must not contain a fragment ('#...')");
  CHECK(url_error("http://user:pw@x/") ==
        "t.yaml:6:13: invalid target URL: the URL must not contain user info ('user:password@')");
  CHECK(url_error("http:///a") == "t.yaml:6:13: invalid target URL: the URL has no host");
  CHECK(url_error("http://x:0/") ==
        "t.yaml:6:13: invalid target URL: the URL's port must not be 0");
  CHECK(url_error("http://x:99999/") ==
        "t.yaml:6:13: invalid target URL: the URL has an invalid port (expected 0-65535)");
  CHECK(url_error("http://x/a b") ==
        "t.yaml:6:13: invalid target URL: the URL contains a space, control or non-ASCII "
        "character");
  CHECK(url_error("http://x/a%zz") ==
        "t.yaml:6:13: invalid target URL: invalid percent-escape in the URL path");
  CHECK(url_error("http://x/a\\\\b") ==
        "t.yaml:6:13: invalid target URL: the URL path contains a character that must be "
        "percent-encoded");
  CHECK(url_error("http://a_b!/") ==
        "t.yaml:6:13: invalid target URL: the URL's authority is invalid: invalid host name or "
        "address");
}

TEST_CASE("config_detail::parse_url fills every field") {
  Url u;
  REQUIRE_FALSE(config_detail::parse_url(
      "HTTPS://prod-00.westeurope.logic.azure.com:443/workflows/abc/triggers/manual/paths/"
      "invoke?api-version=2016-06-01&sig=XYZ",
      u));
  CHECK(u.tls);
  CHECK(u.host == "prod-00.westeurope.logic.azure.com");
  CHECK(u.port == 443);
  CHECK(u.authority == "prod-00.westeurope.logic.azure.com:443");
  CHECK(u.path == "/workflows/abc/triggers/manual/paths/invoke");
  CHECK(u.query == "api-version=2016-06-01&sig=XYZ");
  CHECK(
      u.redacted() ==
      "https://prod-00.westeurope.logic.azure.com:443/workflows/abc/triggers/manual/paths/invoke");
  REQUIRE_FALSE(config_detail::parse_url("http://10.0.0.5?a=b", u));
  CHECK(u.path == "/");
  CHECK(u.query == "a=b");
  CHECK(u.port == 80);
  CHECK(u.redacted() == "http://10.0.0.5/");
  REQUIRE_FALSE(config_detail::parse_url("http://h/p?", u));
  CHECK(u.query.empty());
  CHECK(u.path == "/p");
}

TEST_CASE("queue-only keys on other routes") {
  const std::string head = kListen + "routes:\n  - name: a\n    path: /a\n    target: http://x/\n";
  CHECK(error_of(head + "    retry: {max_attempts: 3}\n") ==
        "t.yaml:7:5: 'retry' applies only to queue routes (this route is proxy)");
  CHECK(error_of(head + "    dedupe: {header: webhook-id}\n") ==
        "t.yaml:7:5: 'dedupe' applies only to queue routes (this route is proxy)");
  CHECK(error_of(head + "    accept_status: 200\n") ==
        "t.yaml:7:5: 'accept_status' applies only to queue routes (this route is proxy)");
  CHECK(error_of(kListen + "routes:\n  - name: a\n    path: /a\n    mode: echo\n"
                           "    retry: {}\n") ==
        "t.yaml:7:5: 'retry' applies only to queue routes (this route is echo)");
  CHECK(error_of(kListen + "routes:\n  - name: a\n    path: /a\n"
                           "    targets: [{url: http://x/, max_in_flight: 2}]\n") ==
        "t.yaml:6:32: 'max_in_flight' applies only to queue routes");
}

TEST_CASE("header rules") {
  const std::string head = kListen + "routes:\n  - name: a\n    path: /a\n    mode: echo\n";
  CHECK(error_of(head + "    request_headers:\n      set: {\"X A\": 1}\n") ==
        "t.yaml:8:13: invalid header name 'X A'");
  CHECK(error_of(head + "    request_headers:\n      set: {Content-Length: 1}\n") ==
        "t.yaml:8:13: header 'Content-Length' cannot be set (the gateway manages it)");
  CHECK(error_of(head + "    request_headers:\n      set: {host: x}\n") ==
        "t.yaml:8:13: header 'host' cannot be set (the gateway manages it; see 'preserve_host')");
  CHECK(error_of(head + "    request_headers:\n      set: {X-A: 1, x-a: 2}\n") ==
        "t.yaml:8:21: header 'x-a' is set twice (names are case-insensitive)");
  CHECK(error_of(head + "    request_headers:\n      set: {X-A: }\n") ==
        "t.yaml:8:13: header 'X-A' needs a value (write \"\" for an empty one)");
  CHECK(error_of(head + "    request_headers:\n      set: {X-A: \"a\\r\\nX-B: b\"}\n") ==
        "t.yaml:8:18: the value of header 'X-A' contains a control character (CR, LF, NUL, ...)");
  CHECK(error_of(head + "    request_headers:\n      set: {X-A: \"a\\0b\"}\n") ==
        "t.yaml:8:18: the value of header 'X-A' contains a control character (CR, LF, NUL, ...)");
  CHECK(error_of(head + "    request_headers:\n      remove: [Host]\n") ==
        "t.yaml:8:16: header 'Host' cannot be removed (the gateway manages it)");
  CHECK(error_of(head + "    request_headers:\n      remove: [\"a:b\"]\n") ==
        "t.yaml:8:16: invalid header name 'a:b'");
  CHECK(error_of(head + "    request_headers:\n      add: {X: 1}\n") ==
        "t.yaml:8:7: unknown key 'add'");
  CHECK(error_of(head + "    request_headers:\n      set: [X-A]\n") ==
        "t.yaml:8:12: 'set' must be a mapping of header names to values");
  auto c = ok(head + "    request_headers:\n      set: {X-Tab: \"a\\tb\", X-Num: 42}\n");
  CHECK(c->routes[0].request_headers.set[0].second == "a\tb");
  CHECK(c->routes[0].request_headers.set[1].second == "42");
}

TEST_CASE("route overlap: same host and path need disjoint methods") {
  auto routes = [](const std::string& a, const std::string& b) {
    return kListen + "routes:\n" + "  - {name: a, mode: echo, " + a + "}\n" +
           "  - {name: b, mode: echo, " + b + "}\n";
  };
  CHECK(error_of(routes("path: /x", "path: /x")) ==
        "t.yaml:5:33: route 'b' has the same host and path as route 'a' (line 4); give both "
        "disjoint 'methods'");
  CHECK(error_of(routes("path_prefix: /x/", "path_prefix: /x/")) ==
        "t.yaml:5:40: route 'b' has the same host and path_prefix as route 'a' (line 4); give "
        "both disjoint 'methods'");
  // A route without methods overlaps everything.
  CHECK(errors_of(routes("path: /x, methods: [POST]", "path: /x")).size() == 1);
  CHECK(errors_of(routes("path: /x, methods: [POST, GET]", "path: /x, methods: [GET]")).size() ==
        1);
  // Host names compare case-insensitively.
  CHECK(errors_of(routes("path: /x, host: A.example", "path: /x, host: a.EXAMPLE")).size() == 1);
  // These do not overlap.
  ok(routes("path: /x, methods: [POST]", "path: /x, methods: [GET, HEAD]"));
  ok(routes("path: /x", "path_prefix: /x"));
  ok(routes("path: /x", "path: /x, host: a.example"));
  ok(routes("path: /x, host: b.example", "path: /x, host: a.example"));
  ok(routes("path_prefix: /x", "path_prefix: /x/"));
  ok(routes("path: /x", "path: /X"));
}

TEST_CASE("queue routes: every key parsed, every bad value reported") {
  const std::string yaml = kListen +
                           "routes:\n"
                           "  - name: audit\n"
                           "    path: /hooks/audit\n"
                           "    mode: queue\n"
                           "    targets:\n"
                           "      - url: http://10.0.0.5:8000/ingest\n"
                           "        max_in_flight: 1\n"
                           "      - url: http://10.0.0.6/\n"
                           "    dedupe: {header: webhook-id, window: 1h}\n"
                           "    retry:\n"
                           "      max_attempts: 3\n"
                           "      initial_backoff: 500ms\n"
                           "      max_backoff: 1m\n"
                           "      max_age: 2h\n"
                           "      dead_letter_retention: 240h\n"
                           "      on: [410, 503]\n"
                           "    accept_status: 200\n";
  auto c = ok(yaml);
  REQUIRE(c);
  const RouteConfig& r = c->routes.at(0);
  CHECK(r.mode == RouteMode::Queue);
  REQUIRE(r.targets.size() == 2);
  CHECK(r.targets[0].max_in_flight == 1);
  CHECK(r.targets[1].max_in_flight == 8);
  REQUIRE(r.dedupe);
  CHECK(r.dedupe->header == "webhook-id");
  CHECK(r.dedupe->window.count() == 3600'000);
  CHECK(r.retry.max_attempts == 3);
  CHECK(r.retry.initial_backoff.count() == 500);
  CHECK(r.retry.max_backoff.count() == 60'000);
  CHECK(r.retry.max_age.count() == 2 * 3600'000);
  CHECK(r.retry.dead_letter_retention.count() == 240LL * 3600'000);
  CHECK(r.retry.on == std::vector<int>{410, 503});
  CHECK(r.accept_status == 200);

  const std::string head = kListen + "routes:\n  - name: q\n    path: /q\n    mode: queue\n";
  auto errs = errors_of(head + "    target: http://x/\n    retry: {on: [200, 503, 503, 600]}\n");
  REQUIRE(errs.size() == 3);
  CHECK(errs[0] == "t.yaml:8:18: status 200 is a success and cannot be retried");
  CHECK(errs[1] == "t.yaml:8:28: status 503 is listed twice");
  CHECK(errs[2] == "t.yaml:8:33: an entry of 'on' must be an integer from 100 to 599 (got '600')");
  errs = errors_of(head +
                   "    target: http://x/\n    retry: {initial_backoff: 2m, max_backoff: 1m}\n");
  REQUIRE(errs.size() == 1);
  CHECK(errs[0] ==
        "t.yaml:8:47: 'max_backoff' (1m) must not be smaller than 'initial_backoff' (2m)");
  errs = errors_of(head + "    target: http://x/\n    accept_status: 204\n");
  REQUIRE(errs.size() == 1);
  CHECK(errs[0] ==
        "t.yaml:8:20: 'accept_status' must be a 2xx status that carries a body (not 204)");
  errs = errors_of(head + "    target: http://x/\n    accept_status: 302\n");
  REQUIRE(errs.size() == 1);
  CHECK(errs[0] == "t.yaml:8:20: 'accept_status' must be an integer from 200 to 299 (got '302')");
  errs = errors_of(head + "    targets: []\n");
  REQUIRE(errs.size() == 1);
  CHECK(errs[0] == "t.yaml:7:14: 'targets' must not be empty");
  errs = errors_of(head);
  REQUIRE(errs.size() == 1);
  CHECK(errs[0] == "t.yaml:4:5: missing required key 'targets' (a queue route needs at least one)");
  errs = errors_of(head + "    target: http://x/\n    dedupe: {window: 1h}\n");
  REQUIRE(errs.size() == 1);
  CHECK(errs[0] == "t.yaml:8:13: missing required key 'header'");
}

TEST_CASE("auth parses and validates per type") {
  const std::string head = kListen + "routes:\n  - name: a\n    path: /a\n    mode: echo\n";
  setenv("DECHUNKD_TEST_PW", "pw", 1);
  CHECK(errors_of(head +
                 "    auth: {type: basic, username: u, password: \"${env:DECHUNKD_TEST_PW}\"}\n").empty());
  CHECK(errors_of(head + "    auth: {type: bearer, token: abc.def}\n").empty());
  CHECK(errors_of(head + "    auth: {type: header, name: X-API-Key, value: v}\n").empty());
  // A header the gateway writes, echoes or forwards in its own way would carry the secret on.
  for (const char* name : {"X-Request-Id", "host", "Content-Length", "X-Forwarded-Host", "connection"}) {
    CAPTURE(name);
    CHECK(error_of(head + "    auth: {type: header, name: " + name + ", value: v}\n") ==
          "t.yaml:7:32: header '" + std::string(name) +
              "' cannot carry the credential: the gateway manages it (choose a header of your own, e.g. X-Api-Key)");
  }
  CHECK(errors_of(head + "    auth: {type: header, name: Authorization, value: \"Token v\"}\n").empty());
  CHECK(errors_of(head + "    auth: {type: hmac, header: X-Signature, secret: s, algorithm: sha512, "
                        "encoding: base64, prefix: \"sha256=\"}\n").empty());
  CHECK(errors_of(head + "    auth: {type: standard_webhooks, secrets: [\"whsec_c2VjcmV0\"], "
                        "tolerance: 1m}\n").empty());
  auto keyerr = errors_of(head + "    auth: {type: standard_webhooks, public_keys: [/etc/k.pem]}\n");
  REQUIRE(keyerr.size() == 1);  // the key is read at load: a missing file names its path
  CHECK(keyerr[0].rfind("t.yaml:7:51: auth: public key /etc/k.pem: cannot be read", 0) == 0);  // at the entry

  auto errs = errors_of(head + "    auth: {type: standard_webhooks}\n");
  REQUIRE(errs.size() == 1);
  CHECK(errs[0] == "t.yaml:7:11: standard_webhooks needs 'secrets' or 'public_keys' (or both)");
  errs = errors_of(head + "    auth: {type: standard_webhooks, secrets: [nope]}\n");
  REQUIRE(errs.size() == 1);
  CHECK(errs[0] == "t.yaml:7:47: a standard_webhooks secret must be 'whsec_' followed by base64");
  errs = errors_of(head + "    auth: {type: basic, username: u, token: t}\n");
  REQUIRE(errs.size() == 2);
  CHECK(errs[0] == "t.yaml:7:11: missing required key 'password' for auth type 'basic'");
  CHECK(errs[1] == "t.yaml:7:38: 'token' does not apply to auth type 'basic'");
  errs = errors_of(head + "    auth: {type: hmac, header: X-S, secret: s, algorithm: md5}\n");
  REQUIRE(errs.size() == 1);
  CHECK(errs[0] ==
        "t.yaml:7:59: invalid value 'md5' for 'algorithm' (expected one of: sha256, sha512)");
  errs = errors_of(head + "    auth: {type: oauth}\n");
  REQUIRE(errs.size() == 1);
  CHECK(errs[0] ==
        "t.yaml:7:18: invalid value 'oauth' for 'type' (expected one of: basic, "
        "bearer, header, hmac, standard_webhooks)");
  errs = errors_of(head + "    auth: {type: bearer, tokne: x}\n");
  REQUIRE(errs.size() == 2);
  CHECK(errs[0] == "t.yaml:7:11: missing required key 'token' for auth type 'bearer'");
  CHECK(errs[1] == "t.yaml:7:26: unknown key 'tokne'; did you mean 'token'?");
}

TEST_CASE("TLS files are loaded at validation; their errors name the path") {
  TempFile token("t\n");
  const std::string yaml =
      "listen:\n"                                                                    // 1
      "  - address: \"0.0.0.0:8443\"\n"                                              // 2
      "    tls: {certificate: /c.pem, private_key: /k.pem, min_version: \"1.3\"}\n"  // 3
      "    trusted_proxies: [\"10.0.0.0/8\", \"::1\"]\n"                             // 4
      "admin:\n"                                                                     // 5
      "  address: \"0.0.0.0:9901\"\n"                                                // 6
      "  token_file: " +
      token.path +
      "\n"                                                 // 7
      "routes:\n"                                          // 8
      "  - name: x\n"                                      // 9
      "    path: /x\n"                                     // 10
      "    allow_from: [\"203.0.113.0/24\"]\n"             // 11
      "    auth: {type: bearer, token: t}\n"               // 12
      "    targets:\n"                                     // 13
      "      - url: https://legacy.example.com/webhook\n"  // 14
      "        tls: {verify: false, ca_file: /ca.pem, client_certificate: /c, "
      "client_private_key: /k, server_name: legacy.example.com}\n"  // 15
      "        proxy: \"http://proxy.corp:3128\"\n";                // 16
  const auto errs = errors_of(yaml);
  // TLS and egress proxies are supported: their files are loaded, and a missing one is an error
  // naming the path at the value of the file's own key; a key is tried also after its
  // certificate failed, so every error shows at once.
  const std::vector<std::string> want = {
      "t.yaml:3:24: cannot load the certificate chain /c.pem: error:80000002:system library::No such file or directory",
      "t.yaml:3:45: cannot load the private key /k.pem: error:80000002:system library::No such file or directory",
      "t.yaml:15:68: cannot load the client certificate /c: error:80000002:system library::No such file or directory",
      "t.yaml:15:92: cannot load the client private key /k: error:80000002:system library::No such file or directory",
  };
  CHECK(errs == want);
}

TEST_CASE("network policy, TLS and proxy keys are validated") {
  auto errs =
      errors_of("listen:\n  - address: \"0.0.0.0:1\"\n    trusted_proxies: [\"10.0.0.1/8\"]\n");
  REQUIRE(errs.size() == 1);
  CHECK(errs[0] ==
        "t.yaml:3:23: invalid CIDR block '10.0.0.1/8' (e.g. 10.0.0.0/8 or "
        "2001:db8::/32; host bits must be zero)");
  errs = errors_of(kListen +
                   "routes:\n  - name: a\n    path: /a\n"
                   "    targets: [{url: http://x/, proxy: \"https://p:1\"}]\n");
  REQUIRE(errs.size() == 1);
  CHECK(errs[0] ==
        "t.yaml:6:39: the proxy URL must be http:// (CONNECT proxies are reached in "
        "plain HTTP)");
  errs = errors_of(kListen +
                   "routes:\n  - name: a\n    path: /a\n"
                   "    targets: [{url: http://x/, tls: {verify: true}}]\n");
  REQUIRE(errs.size() == 1);
  CHECK(errs[0] == "t.yaml:6:32: 'tls' applies only to https:// targets");
}

TEST_CASE("all errors are reported in one run, in file order") {
  const std::string yaml =
      "listen:\n"                   // 1
      "  - address: \"0.0.0.0\"\n"  // 2
      "workers: many\n"             // 3
      "limits:\n"                   // 4
      "  max_body_size: 10 MiB\n"   // 5
      "  max_body_size: 1MiB\n"     // 6
      "timeouts:\n"                 // 7
      "  header: 1.5s\n"            // 8
      "log:\n"                      // 9
      "  access: off\n"             // 10
      "  levle: info\n"             // 11
      "routes:\n"                   // 12
      "  - name: a\n"               // 13
      "    path: /a\n"              // 14
      "    retry: {}\n"             // 15
      "    target: ftp://x/\n";     // 16
  const std::vector<std::string> want = {
      "t.yaml:2:14: invalid address '0.0.0.0': missing ':PORT' (write host:port, e.g. "
      "127.0.0.1:8080)",
      "t.yaml:3:10: 'workers' must be an integer from 1 to 256 (got 'many')",
      "t.yaml:5:18: invalid size '10 MiB' for 'max_body_size' (expected an integer, optionally "
      "followed by KiB, MiB, GiB, KB, MB or GB, e.g. 10MiB)",
      "t.yaml:6:3: duplicate key 'max_body_size' (first at line 5)",
      "t.yaml:8:11: invalid duration '1.5s' for 'header' (expected an integer followed by ms, "
      "s, m or h, e.g. 250ms, 10s, 5m, 2h)",
      "t.yaml:11:3: unknown key 'levle'; did you mean 'level'?",
      "t.yaml:15:5: 'retry' applies only to queue routes (this route is proxy)",
      "t.yaml:16:13: invalid target URL: the URL must start with http:// or https://",
  };
  CHECK(errors_of(yaml) == want);
}

TEST_CASE("the loader never throws on hostile input") {
  for (const char* yaml : {"\t", "[", "{", "&a [*a]", "*x", "!!binary xx", "? ? ?",
                           "%YAML 9.9\n---\n", "listen: &l [*l]", "a: !<tag> b", "\xff\xfe",
                           "listen:\n  - address: &a\n"
                           "      <<: *a\n"}) {
    CAPTURE(yaml);
    LoadResult r;
    CHECK_NOTHROW(r = load_config_string(yaml, "t.yaml"));
    CHECK_FALSE(r.config);
    CHECK_FALSE(r.errors.empty());
  }
  std::string deep(5000, '[');
  CHECK_NOTHROW(load_config_string(deep, "t.yaml"));
}

TEST_CASE("inputs on which yaml-cpp 0.7's LoadAll never returns give an error") {
  // jbeder/yaml-cpp#1040 (found by fuzz_config): the loader must answer, not loop and allocate.
  for (const char* text : {", (,4ru-:   m-> 40", "- a\n,", "\"a\"\n,", "&a ,", "--- !t ,", "\xef\xbb\xbf,"}) {
    CAPTURE(text);
    auto errs = errors_of(text);
    CHECK_FALSE(errs.empty());
  }
  auto errs = errors_of("# comment\n---\n  , x: 1\n");
  REQUIRE_FALSE(errs.empty());
  CHECK(std::find(errs.begin(), errs.end(), "t.yaml:3:3: only one YAML document is allowed") != errs.end());
  CHECK(errors_of(kListen + "routes: [{name: a, path: /a, mode: echo, methods: [GET\n, POST]}]\n").empty());
}
