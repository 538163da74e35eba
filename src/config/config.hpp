// The configuration model (SPEC 3) and its loader. A Config is immutable once loaded and is
// shared between worker threads through std::shared_ptr<const Config>; a reload builds a new one.
#pragma once
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/cidr.hpp"
#include "core/units.hpp"

namespace dechunkd {

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;
constexpr uint64_t kGiB = 1024 * kMiB;

// A parsed http:// or https:// URL as written in the config.
struct Url {
  std::string text;          // exactly as configured (may contain a secret query: never log it)
  bool tls = false;          // https
  std::string host;          // host name or address literal, without brackets
  uint16_t port = 0;         // explicit or 80/443
  std::string authority;     // host[:port] as written (brackets kept): the Host header value
  std::string path;          // starts with "/" ("/" when the URL had none)
  std::string query;         // without the '?', may be empty
  std::string redacted() const;  // scheme://authority/path, no query: safe for logs and labels
};

struct TlsListenConfig {
  std::string certificate;   // PEM chain path
  std::string private_key;   // PEM key path
  std::string min_version = "1.2";  // "1.2" or "1.3"
};

struct ListenConfig {
  std::string address;       // as written, e.g. "0.0.0.0:8080" or "[::]:8080"
  std::string host;          // without brackets; may be a name such as "localhost"
  uint16_t port = 0;         // 0 = ephemeral (tests)
  std::optional<TlsListenConfig> tls;
  std::vector<Cidr> trusted_proxies;
};

struct Limits {
  uint64_t max_body_size = 100 * kMiB;
  uint64_t max_header_size = 16 * kKiB;
  uint64_t max_headers = 100;
  uint64_t max_uri_size = 8 * kKiB;
  uint64_t max_connections = 10000;
  uint64_t memory_buffer = 1 * kMiB;
};

struct Timeouts {
  Millis header{10'000};
  Millis body{60'000};
  Millis idle{75'000};
  Millis upstream_connect{5'000};
  Millis upstream_response{30'000};
  Millis drain{30'000};
  Millis send{60'000};
  Millis upstream_idle{30'000};
};

enum class FsyncPolicy { Always, Batch, Never };

struct StorageConfig {
  std::string dir = "/var/lib/dechunkd";
  FsyncPolicy fsync = FsyncPolicy::Always;
  uint64_t max_queue_size = 1 * kGiB;
};

struct AdminConfig {
  std::string address;       // empty: no admin listener
  std::string host;
  uint16_t port = 0;
  std::string token_file;    // empty: mutating endpoints need no token (loopback only)
  std::string token;         // the file's content, one trailing newline trimmed
};

enum class LogLevel { Error, Warn, Info, Debug };

struct LogConfig {
  LogLevel level = LogLevel::Info;
  std::string access = "stdout";   // "stdout" | "stderr" | "off" | a file path
};

struct HeaderRules {
  std::vector<std::pair<std::string, std::string>> set;  // in config order, values expanded
  std::vector<std::string> remove;                       // field names
};

struct TargetTls {
  bool verify = true;
  std::string ca_file;
  std::string client_certificate;
  std::string client_private_key;
  std::string server_name;         // empty: the URL host
};

struct TargetConfig {
  Url url;
  uint64_t max_in_flight = 8;
  std::optional<Millis> timeout;          // overrides timeouts.upstream_response
  std::optional<Millis> connect_timeout;  // overrides timeouts.upstream_connect
  bool preserve_host = false;
  TargetTls tls;
  HeaderRules headers;
  std::optional<Url> proxy;               // HTTP CONNECT proxy
  Millis idle_timeout{4'000};             // pooled idle connections closed after this
  uint64_t max_idle = 32;                 // idle pooled connections kept per worker
};

enum class RouteMode { Proxy, Queue, Echo };
enum class TrailerMode { Drop, Merge };

enum class AuthType { Basic, Bearer, Header, Hmac, StandardWebhooks };

struct AuthConfig {
  AuthType type = AuthType::Basic;
  std::string username, password;   // basic
  std::string token;                // bearer
  std::string name, value;          // header
  std::string header;               // hmac: signature header
  std::string secret;               // hmac
  std::string algorithm = "sha256"; // hmac: sha256 | sha512
  std::string encoding = "hex";     // hmac: hex | base64
  std::string prefix;               // hmac
  std::vector<std::string> secrets;       // standard_webhooks: "whsec_..."
  std::vector<std::string> public_keys;   // standard_webhooks: PEM paths
  Millis tolerance{5 * 60'000};           // standard_webhooks
};

struct RetryConfig {
  uint64_t max_attempts = 12;
  Millis initial_backoff{1'000};
  Millis max_backoff{10 * 60'000};
  Millis max_age{24 * 3600'000LL};
  Millis dead_letter_retention{30 * 24 * 3600'000LL};
  std::vector<int> on{408, 425, 429, 500, 502, 503, 504};
};

struct DedupeConfig {
  std::string header;
  Millis window{24 * 3600'000LL};
};

struct RouteConfig {
  std::string name;
  std::string path;                 // the exact path or the prefix
  bool prefix = false;              // path_prefix instead of path
  std::vector<std::string> methods; // empty: any method
  std::string host;                 // empty: any host; compared case-insensitively, port ignored
  RouteMode mode = RouteMode::Proxy;
  std::vector<TargetConfig> targets;  // proxy: exactly one; queue: one or more; echo: none
  std::optional<uint64_t> max_body_size;  // overrides limits.max_body_size
  TrailerMode trailers = TrailerMode::Drop;
  HeaderRules request_headers;
  std::optional<AuthConfig> auth;
  std::vector<Cidr> allow_from;     // empty: everyone
  std::optional<DedupeConfig> dedupe;
  RetryConfig retry;
  int accept_status = 202;

  uint64_t body_limit(const struct Config& c) const;
};

struct Config {
  std::string path;                 // the file it was loaded from, as given
  std::vector<ListenConfig> listen;
  unsigned workers = 1;             // resolved: "auto" = CPUs in the affinity mask
  bool workers_auto = true;
  Limits limits;
  Timeouts timeouts;
  StorageConfig storage;
  AdminConfig admin;
  LogConfig log;
  std::vector<RouteConfig> routes;
};

inline uint64_t RouteConfig::body_limit(const Config& c) const {
  return max_body_size ? *max_body_size : c.limits.max_body_size;
}

struct ConfigError {
  std::string file;
  int line = 0;  // 1-based; 0 when no position is known
  int col = 0;   // 1-based
  std::string message;
  std::string str() const;  // "FILE:LINE:COL: message"
};

struct LoadResult {
  std::shared_ptr<const Config> config;  // null when errors is non-empty
  std::vector<ConfigError> errors;
};

// Reads, parses and validates. Every error found is reported, not only the first.
LoadResult load_config_file(const std::string& path);
// Same, from text; `name` is used as FILE in messages.
LoadResult load_config_string(std::string_view yaml, const std::string& name);

}  // namespace dechunkd
