// Private to the config loader: the Loader that walks yaml-cpp's node tree and the MapReader
// that reads one mapping. Split from config.cpp so the route schema (config_routes.cpp) reads on
// its own; nothing outside src/config/ includes this.
#pragma once
#include <yaml-cpp/yaml.h>

#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "config/config.hpp"

namespace dechunkd::config_detail {


struct Pos {
  int line = 0;  // 1-based; 0 = unknown
  int col = 0;
};

inline Pos pos_of(const YAML::Mark& m) {
  if (m.is_null() || m.line < 0 || m.column < 0) return {};
  return {m.line + 1, m.column + 1};
}

inline Pos pos_of(const YAML::Node& n) {
  if (!n.IsDefined()) return {};
  return pos_of(n.Mark());
}

inline bool is_missing(const YAML::Node& n) { return !n.IsDefined() || n.IsNull(); }

// Quotes a (non-secret) value for a message, cut short so a stray blob stays readable.
inline std::string quote(std::string_view s) {
  constexpr size_t kMax = 40;
  if (s.size() <= kMax) return "'" + std::string(s) + "'";
  return "'" + std::string(s.substr(0, kMax)) + "...'";
}

// One "key: value" entry of a mapping, or one item of a list.
struct Field {
  std::string label;  // for messages: "'max_body_size'" or "an entry of 'methods'"
  YAML::Node value;
  Pos key_pos;    // the key (for list items: the item)
  Pos value_pos;  // the value; a missing value (`key:`) points at the key
};

inline Field make_field(std::string label, const YAML::Node& value, Pos key_pos) {
  Field f{std::move(label), value, key_pos, key_pos};
  if (!is_missing(value)) f.value_pos = pos_of(value);
  return f;
}

class Loader;

// A mapping being read. Duplicate and non-string keys are reported up front; entries are handed
// out by name; finish() reports every entry nobody asked for as an unknown key, suggesting the
// closest name that was asked for. A null value (`limits:` with nothing under it) reads as an
// empty mapping.
class MapReader {
 public:
  MapReader(Loader& loader, const Field& f, std::string not_map_message = "");
  ~MapReader() { finish(); }
  MapReader(const MapReader&) = delete;
  MapReader& operator=(const MapReader&) = delete;

  bool ok() const { return ok_; }  // false: not a mapping (already reported)
  bool empty() const { return entries_.empty(); }
  Pos pos() const { return pos_; }  // where a missing key is reported
  std::optional<Field> take(std::string_view key);
  std::optional<Field> require(std::string_view key);
  // Free-form mappings (header names): every entry, as (name, field).
  std::vector<std::pair<std::string, Field>> take_all();
  void finish();

 private:
  struct Entry {
    std::string name;
    Field field;
    bool taken = false;
  };
  Loader& loader_;
  Pos pos_;
  bool ok_ = true;
  bool finished_ = false;
  std::vector<Entry> entries_;
  std::vector<std::string> asked_;
};

class Loader {
 public:
  explicit Loader(std::string file) : file_(std::move(file)) {}

  LoadResult load(std::string_view text);

  void error(Pos p, std::string message) {
    errors_.push_back(ConfigError{file_, p.line, p.col, std::move(message)});
  }
  size_t error_count() const { return errors_.size(); }

 private:
  // Typed readers: each reports its own errors and returns nullopt on any.
  std::optional<std::string> scalar(const Field& f);
  std::optional<std::string> string(const Field& f, bool expand, bool allow_empty = false);
  std::optional<uint64_t> size(const Field& f, bool allow_zero);
  std::optional<Millis> duration(const Field& f, bool allow_zero);
  std::optional<uint64_t> integer(const Field& f, uint64_t min, uint64_t max);
  std::optional<bool> boolean(const Field& f);
  template <class E>
  std::optional<E> choice(const Field& f,
                          std::initializer_list<std::pair<std::string_view, E>> options);
  std::optional<std::vector<Field>> list(const Field& f, bool allow_empty);
  std::optional<std::vector<Cidr>> cidrs(const Field& f);


  void parse_root(const YAML::Node& root, Pos root_pos, Config& c);
  void parse_listeners(const Field& f, Config& c);
  void parse_workers(const Field& f, Config& c);
  void parse_limits(const Field& f, Limits& l);
  void parse_timeouts(const Field& f, Timeouts& t);
  void parse_storage(const Field& f, StorageConfig& s);
  void parse_admin(const Field& f, Config& c);
  void parse_log(const Field& f, LogConfig& l);
  void parse_routes(const Field& f, Config& c);
  void parse_route(const Field& f, Config& c);
  bool parse_address(const Field& f, std::string& address, std::string& host, uint16_t& port);
  bool parse_target_url(const Field& f, Url& url);
  void parse_target(const Field& f, std::optional<RouteMode> mode, RouteConfig& r);
  void parse_target_tls(const Field& f, TargetTls& tls);
  void parse_header_rules(const Field& f, HeaderRules& rules);
  void parse_auth(const Field& f, AuthConfig& auth);
  void parse_retry(const Field& f, RetryConfig& retry);
  void parse_dedupe(const Field& f, DedupeConfig& dedupe);
  bool parse_status(const Field& f, int min, int max, int& out);

  // Where things were written, for "first at line N" and cross-route checks.
  struct RouteMeta {
    Pos name_pos;
    Pos path_pos;
  };
  struct ListenMeta {
    Pos pos;
  };

  std::string file_;
  std::vector<ConfigError> errors_;
  std::vector<RouteMeta> route_meta_;    // parallel to Config::routes
  std::vector<ListenMeta> listen_meta_;  // parallel to Config::listen
  Pos admin_address_pos_;
};

template <class E>
std::optional<E> Loader::choice(const Field& f,
                                std::initializer_list<std::pair<std::string_view, E>> options) {
  auto text = scalar(f);
  if (!text) return std::nullopt;
  std::string names;
  for (const auto& [name, value] : options) {
    if (*text == name) return value;
    if (!names.empty()) names += ", ";
    names += name;
  }
  error(f.value_pos,
        "invalid value " + quote(*text) + " for " + f.label + " (expected one of: " + names + ")");
  return std::nullopt;
}

}  // namespace dechunkd::config_detail
