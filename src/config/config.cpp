// Loads and validates dechunkd.yaml (SPEC 3, 11). yaml-cpp parses the text; a Loader then walks
// the node tree with the schema written out as code, collecting every error with its position
// instead of stopping at the first, and hands out a Config only when there were none.
//
// Positions: an unknown or misplaced key is reported at the key, a bad value at the value, a
// missing key at the mapping that should hold it. yaml-cpp marks are 0-based; ours are 1-based.
#include "config/config.hpp"

#include <fcntl.h>
#include <sched.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <initializer_list>
#include <thread>

#include "config/config_detail.hpp"

namespace dechunkd {

std::string ConfigError::str() const {
  if (line <= 0) return file + ": " + message;
  return file + ":" + std::to_string(line) + ":" + std::to_string(col) + ": " + message;
}

std::string Url::redacted() const {
  return std::string(tls ? "https://" : "http://") + authority + path;
}

namespace {

using config_detail::iequals;
using config_detail::to_lower;

// ---- Features that later releases implement ------------------------------------------------
// The loader parses and validates each of these fully, then refuses the config with
// "<what> is not supported yet" at the key (for mode: queue and https:// URLs: the value) that
// asks for it. When a feature ships, delete its line from kNotSupportedYet; nothing else changes.
enum class Feature {
  ListenTls,       // listen[].tls
  TrustedProxies,  // listen[].trusted_proxies
  QueueMode,       // routes[].mode: queue
  RouteAuth,       // routes[].auth
  AllowFrom,       // routes[].allow_from
  HttpsTarget,     // https:// target URLs
  TargetTls,       // targets[].tls
  TargetProxy,     // targets[].proxy
};

struct PendingFeature {
  Feature feature;
  const char* what;
};

constexpr PendingFeature kNotSupportedYet[] = {
    {Feature::ListenTls, "listener 'tls' (HTTPS)"},
    {Feature::TrustedProxies, "'trusted_proxies'"},
    {Feature::QueueMode, "mode 'queue'"},
    {Feature::RouteAuth, "route 'auth'"},
    {Feature::AllowFrom, "'allow_from'"},
    {Feature::HttpsTarget, "an https:// target URL"},
    {Feature::TargetTls, "target 'tls'"},
    {Feature::TargetProxy, "target 'proxy'"},
};
// ---------------------------------------------------------------------------------------------

constexpr unsigned kMaxWorkers = 256;
constexpr size_t kMaxConfigFile = 16 * kMiB;
constexpr Millis kMaxDuration{87600LL * 3600'000};  // 10 years: far from any clock overflow

struct Pos {
  int line = 0;  // 1-based; 0 = unknown
  int col = 0;
};

Pos pos_of(const YAML::Mark& m) {
  if (m.is_null() || m.line < 0 || m.column < 0) return {};
  return {m.line + 1, m.column + 1};
}

Pos pos_of(const YAML::Node& n) {
  if (!n.IsDefined()) return {};
  return pos_of(n.Mark());
}

bool is_missing(const YAML::Node& n) { return !n.IsDefined() || n.IsNull(); }

// Quotes a (non-secret) value for a message, cut short so a stray blob stays readable.
std::string quote(std::string_view s) {
  constexpr size_t kMax = 40;
  if (s.size() <= kMax) return "'" + std::string(s) + "'";
  return "'" + std::string(s.substr(0, kMax)) + "...'";
}

// One "key: value" entry of a mapping, or one item of a list.
struct Field {
  std::string label;  // for messages: "'max_body_size'" or "an entry of 'methods'"
  YAML::Node value;
  Pos key_pos;        // the key (for list items: the item)
  Pos value_pos;      // the value; a missing value (`key:`) points at the key
};

Field make_field(std::string label, const YAML::Node& value, Pos key_pos) {
  Field f{std::move(label), value, key_pos, key_pos};
  if (!is_missing(value)) f.value_pos = pos_of(value);
  return f;
}

unsigned affinity_cpus() {
  // cpu_set_t covers 1024 CPUs; grow the set while the kernel says it is too small.
  for (int n = CPU_SETSIZE; n <= (1 << 16); n *= 2) {
    cpu_set_t* set = CPU_ALLOC(n);
    if (set == nullptr) break;
    const size_t size = CPU_ALLOC_SIZE(n);
    CPU_ZERO_S(size, set);
    if (sched_getaffinity(0, size, set) == 0) {
      const int count = CPU_COUNT_S(size, set);
      CPU_FREE(set);
      return count > 0 ? static_cast<unsigned>(count) : 1;
    }
    const int err = errno;
    CPU_FREE(set);
    if (err != EINVAL) break;
  }
  const unsigned hc = std::thread::hardware_concurrency();
  return hc > 0 ? hc : 1;
}

// Header fields the gateway itself manages (SPEC 4): `set` cannot write them, and the framing
// ones cannot be removed either.
bool managed_header(std::string_view name) {
  for (std::string_view h : {"host", "content-length", "transfer-encoding", "connection",
                             "keep-alive", "proxy-connection", "te", "trailer", "upgrade",
                             "expect"}) {
    if (iequals(name, h)) return true;
  }
  return false;
}

bool unremovable_header(std::string_view name) {
  return iequals(name, "host") || iequals(name, "content-length") ||
         iequals(name, "transfer-encoding");
}

// YAML 1.1 reads these plain scalars as false; `access: off` must work unquoted (SPEC 3).
bool yaml11_false(std::string_view s) {
  for (std::string_view f : {"off", "Off", "OFF", "false", "False", "FALSE", "no", "No", "NO"}) {
    if (s == f) return true;
  }
  return false;
}

bool valid_route_name(std::string_view s) {
  auto alnum = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
  };
  if (s.empty() || !alnum(s.front())) return false;
  return std::all_of(s.begin(), s.end(),
                     [&](char c) { return alnum(c) || c == '_' || c == '.' || c == '-'; });
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

  bool ok() const { return ok_; }        // false: not a mapping (already reported)
  bool empty() const { return entries_.empty(); }
  Pos pos() const { return pos_; }       // where a missing key is reported
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

  void use(Feature feature, Pos p) { uses_.emplace_back(feature, p); }
  void report_unsupported();

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
  std::vector<std::pair<Feature, Pos>> uses_;
  std::vector<RouteMeta> route_meta_;   // parallel to Config::routes
  std::vector<ListenMeta> listen_meta_; // parallel to Config::listen
  Pos admin_address_pos_;
};

// ---- MapReader ----------------------------------------------------------------------------

MapReader::MapReader(Loader& loader, const Field& f, std::string not_map_message)
    : loader_(loader), pos_(f.value_pos) {
  if (is_missing(f.value)) return;
  if (!f.value.IsMap()) {
    ok_ = false;
    loader_.error(f.value_pos,
                  not_map_message.empty() ? f.label + " must be a mapping" : not_map_message);
    return;
  }
  for (auto it = f.value.begin(); it != f.value.end(); ++it) {
    // Copies, not references: the iterator hands out a temporary pair.
    const YAML::Node key = it->first;
    const YAML::Node value = it->second;
    const Pos kp = pos_of(key);
    if (!key.IsScalar()) {
      loader_.error(kp, "keys must be plain strings");
      continue;
    }
    std::string name = key.Scalar();
    const auto prev = std::find_if(entries_.begin(), entries_.end(),
                                   [&](const Entry& e) { return e.name == name; });
    if (prev != entries_.end()) {
      loader_.error(kp, "duplicate key " + quote(name) + " (first at line " +
                            std::to_string(prev->field.key_pos.line) + ")");
      continue;
    }
    Field field = make_field("'" + name + "'", value, kp);
    entries_.push_back(Entry{std::move(name), std::move(field), false});
  }
}

std::optional<Field> MapReader::take(std::string_view key) {
  asked_.emplace_back(key);
  for (Entry& e : entries_) {
    if (e.name == key && !e.taken) {
      e.taken = true;
      return e.field;
    }
  }
  return std::nullopt;
}

std::optional<Field> MapReader::require(std::string_view key) {
  auto f = take(key);
  if (!f && ok_) loader_.error(pos_, "missing required key '" + std::string(key) + "'");
  return f;
}

std::vector<std::pair<std::string, Field>> MapReader::take_all() {
  std::vector<std::pair<std::string, Field>> out;
  for (Entry& e : entries_) {
    e.taken = true;
    out.emplace_back(e.name, e.field);
  }
  return out;
}

void MapReader::finish() {
  if (finished_) return;
  finished_ = true;
  for (const Entry& e : entries_) {
    if (e.taken) continue;
    std::string message = "unknown key " + quote(e.name);
    const std::string* best = nullptr;
    size_t best_distance = 0;
    for (const std::string& known : asked_) {
      const size_t d = config_detail::edit_distance(to_lower(e.name), known);
      if (best == nullptr || d < best_distance) {
        best = &known;
        best_distance = d;
      }
    }
    const size_t threshold = std::max<size_t>(1, e.name.size() / 3);
    if (best != nullptr && best_distance <= threshold) message += "; did you mean '" + *best + "'?";
    loader_.error(e.field.key_pos, std::move(message));
  }
}

// ---- typed readers ---------------------------------------------------------------------------

std::optional<std::string> Loader::scalar(const Field& f) {
  if (is_missing(f.value)) {
    error(f.key_pos, f.label + " needs a value");
    return std::nullopt;
  }
  if (f.value.IsMap()) {
    error(f.value_pos, f.label + " must be a single value, not a mapping");
    return std::nullopt;
  }
  if (f.value.IsSequence()) {
    error(f.value_pos, f.label + " must be a single value, not a list");
    return std::nullopt;
  }
  return f.value.Scalar();
}

std::optional<std::string> Loader::string(const Field& f, bool expand, bool allow_empty) {
  auto raw = scalar(f);
  if (!raw) return std::nullopt;
  std::string value;
  if (expand) {
    if (auto err = config_detail::expand(*raw, value)) {
      error(f.value_pos, *err);
      return std::nullopt;
    }
  } else {
    value = std::move(*raw);
  }
  if (value.empty() && !allow_empty) {
    error(f.value_pos, f.label + " must not be empty");
    return std::nullopt;
  }
  return value;
}

std::optional<uint64_t> Loader::size(const Field& f, bool allow_zero) {
  auto text = scalar(f);
  if (!text) return std::nullopt;
  const auto v = parse_size(*text);
  if (!v) {
    // Digits and a valid unit that still failed: the product overflowed 64 bits.
    const size_t digits = text->find_first_not_of("0123456789");
    const bool grammar_ok =
        digits != 0 && (digits == std::string::npos ||
                        parse_size("1" + text->substr(digits)).has_value());
    if (grammar_ok) {
      error(f.value_pos, "size " + quote(*text) + " for " + f.label + " is too large");
    } else {
      error(f.value_pos, "invalid size " + quote(*text) + " for " + f.label +
                             " (expected an integer, optionally followed by KiB, MiB, GiB, KB, "
                             "MB or GB, e.g. 10MiB)");
    }
    return std::nullopt;
  }
  if (*v == 0 && !allow_zero) {
    error(f.value_pos, f.label + " must not be 0");
    return std::nullopt;
  }
  return v;
}

std::optional<Millis> Loader::duration(const Field& f, bool allow_zero) {
  auto text = scalar(f);
  if (!text) return std::nullopt;
  const auto v = parse_duration(*text);
  if (!v) {
    const size_t digits = text->find_first_not_of("0123456789");
    const bool grammar_ok = digits != 0 && digits != std::string::npos &&
                            parse_duration("1" + text->substr(digits)).has_value();
    if (grammar_ok) {
      error(f.value_pos, "duration " + quote(*text) + " for " + f.label +
                             " is too large (at most 87600h)");
    } else {
      error(f.value_pos, "invalid duration " + quote(*text) + " for " + f.label +
                             " (expected an integer followed by ms, s, m or h, e.g. 250ms, 10s, "
                             "5m, 2h)");
    }
    return std::nullopt;
  }
  if (*v > kMaxDuration) {
    error(f.value_pos,
          "duration " + quote(*text) + " for " + f.label + " is too large (at most 87600h)");
    return std::nullopt;
  }
  if (v->count() == 0 && !allow_zero) {
    error(f.value_pos, f.label + " must not be 0");
    return std::nullopt;
  }
  return v;
}

std::optional<uint64_t> Loader::integer(const Field& f, uint64_t min, uint64_t max) {
  auto text = scalar(f);
  if (!text) return std::nullopt;
  const bool digits = !text->empty() && text->find_first_not_of("0123456789") == std::string::npos;
  const auto v = digits ? parse_size(*text) : std::nullopt;
  if (!v || *v < min || *v > max) {
    std::string range = max == UINT64_MAX ? (min == 0 ? "a non-negative integer"
                                                      : "an integer of at least " +
                                                            std::to_string(min))
                                          : "an integer from " + std::to_string(min) + " to " +
                                                std::to_string(max);
    error(f.value_pos, f.label + " must be " + range + " (got " + quote(*text) + ")");
    return std::nullopt;
  }
  return v;
}

std::optional<bool> Loader::boolean(const Field& f) {
  auto text = scalar(f);
  if (!text) return std::nullopt;
  if (*text == "true" || *text == "True" || *text == "TRUE") return true;
  if (*text == "false" || *text == "False" || *text == "FALSE") return false;
  error(f.value_pos, f.label + " must be true or false (got " + quote(*text) + ")");
  return std::nullopt;
}

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

std::optional<std::vector<Field>> Loader::list(const Field& f, bool allow_empty) {
  std::vector<Field> items;
  if (is_missing(f.value)) {
    if (!allow_empty) {
      error(f.key_pos, f.label + " must not be empty");
      return std::nullopt;
    }
    return items;
  }
  if (!f.value.IsSequence()) {
    error(f.value_pos, f.label + " must be a list");
    return std::nullopt;
  }
  for (auto it = f.value.begin(); it != f.value.end(); ++it) {
    const YAML::Node item = *it;
    const Pos p = is_missing(item) ? f.value_pos : pos_of(item);
    items.push_back(make_field("an entry of " + f.label, item, p));
  }
  if (items.empty() && !allow_empty) {
    error(f.value_pos, f.label + " must not be empty");
    return std::nullopt;
  }
  return items;
}

std::optional<std::vector<Cidr>> Loader::cidrs(const Field& f) {
  auto items = list(f, false);
  if (!items) return std::nullopt;
  std::vector<Cidr> out;
  bool ok = true;
  for (const Field& item : *items) {
    auto text = string(item, false);
    if (!text) {
      ok = false;
      continue;
    }
    auto c = Cidr::parse(*text);
    if (!c) {
      error(item.value_pos, "invalid CIDR block " + quote(*text) +
                                " (e.g. 10.0.0.0/8 or 2001:db8::/32; host bits must be zero)");
      ok = false;
      continue;
    }
    out.push_back(*c);
  }
  if (!ok) return std::nullopt;
  return out;
}

void Loader::report_unsupported() {
  for (const auto& [feature, pos] : uses_) {
    for (const PendingFeature& p : kNotSupportedYet) {
      if (p.feature == feature) error(pos, std::string(p.what) + " is not supported yet");
    }
  }
}

// ---- the schema --------------------------------------------------------------------------------

LoadResult Loader::load(std::string_view text) {
  LoadResult result;
  auto cfg = std::make_shared<Config>();
  cfg->path = file_;
  try {
    std::vector<YAML::Node> docs;
    bool parsed = true;
    try {
      docs = YAML::LoadAll(std::string(text));
    } catch (const YAML::Exception& e) {
      error(pos_of(e.mark), "invalid YAML: " + e.msg);
      parsed = false;
    }
    if (parsed) {
      YAML::Node root = docs.empty() ? YAML::Node() : docs.front();
      if (docs.size() > 1) error(pos_of(docs[1]), "only one YAML document is allowed");
      Pos root_pos = pos_of(root);
      if (root_pos.line == 0 || is_missing(root)) root_pos = {1, 1};
      parse_root(root, root_pos, *cfg);
      report_unsupported();
    }
  } catch (const std::exception& e) {
    error({}, std::string("internal error while reading the configuration: ") + e.what());
  }
  std::stable_sort(errors_.begin(), errors_.end(),
                   [](const ConfigError& a, const ConfigError& b) {
                     return a.line != b.line ? a.line < b.line : a.col < b.col;
                   });
  result.errors = std::move(errors_);
  if (result.errors.empty()) result.config = std::move(cfg);
  return result;
}

void Loader::parse_root(const YAML::Node& root, Pos root_pos, Config& c) {
  Field root_field{"the configuration", root, root_pos, root_pos};
  MapReader m(*this, root_field);
  if (!m.ok()) return;
  if (auto f = m.require("listen")) parse_listeners(*f, c);
  c.workers_auto = true;
  c.workers = std::min(affinity_cpus(), kMaxWorkers);
  if (auto f = m.take("workers")) parse_workers(*f, c);
  if (auto f = m.take("limits")) parse_limits(*f, c.limits);
  if (auto f = m.take("timeouts")) parse_timeouts(*f, c.timeouts);
  if (auto f = m.take("storage")) parse_storage(*f, c.storage);
  if (auto f = m.take("admin")) parse_admin(*f, c);
  if (auto f = m.take("log")) parse_log(*f, c.log);
  if (auto f = m.take("routes")) parse_routes(*f, c);
}

bool Loader::parse_address(const Field& f, std::string& address, std::string& host,
                           uint16_t& port) {
  auto text = string(f, true);
  if (!text) return false;
  if (auto err = config_detail::parse_host_port(*text, host, port)) {
    error(f.value_pos, "invalid address " + quote(*text) + ": " + *err);
    return false;
  }
  address = std::move(*text);
  return true;
}

void Loader::parse_listeners(const Field& f, Config& c) {
  auto items = list(f, false);
  if (!items) return;
  for (const Field& item : *items) {
    MapReader m(*this, item,
                "each entry of 'listen' must be a mapping (e.g. - address: \"0.0.0.0:8080\")");
    if (!m.ok()) continue;
    ListenConfig l;
    Pos address_pos;
    bool address_ok = false;
    if (auto a = m.require("address")) {
      address_pos = a->value_pos;
      address_ok = parse_address(*a, l.address, l.host, l.port);
    }
    if (auto t = m.take("tls")) {
      use(Feature::ListenTls, t->key_pos);
      MapReader tm(*this, *t);
      if (tm.ok() && tm.empty()) error(t->value_pos, "'tls' must not be empty");
      TlsListenConfig tls;
      if (auto x = tm.require("certificate")) {
        if (auto v = string(*x, true)) tls.certificate = *v;
      }
      if (auto x = tm.require("private_key")) {
        if (auto v = string(*x, true)) tls.private_key = *v;
      }
      if (auto x = tm.take("min_version")) {
        if (auto v = choice<std::string_view>(*x, {{"1.2", "1.2"}, {"1.3", "1.3"}})) {
          tls.min_version = std::string(*v);
        }
      }
      l.tls = std::move(tls);
    }
    if (auto t = m.take("trusted_proxies")) {
      use(Feature::TrustedProxies, t->key_pos);
      if (auto v = cidrs(*t)) l.trusted_proxies = std::move(*v);
    }
    if (address_ok && l.port != 0) {
      for (size_t i = 0; i < c.listen.size(); ++i) {
        if (c.listen[i].port == l.port && iequals(c.listen[i].host, l.host)) {
          error(address_pos, "duplicate listen address " + quote(l.address) + " (first at line " +
                                 std::to_string(listen_meta_[i].pos.line) + ")");
        }
      }
    }
    c.listen.push_back(std::move(l));
    listen_meta_.push_back({address_pos});
  }
}

void Loader::parse_workers(const Field& f, Config& c) {
  auto text = scalar(f);
  if (!text) return;
  if (*text == "auto") return;  // already resolved by the caller
  if (auto v = integer(f, 1, kMaxWorkers)) {
    c.workers = static_cast<unsigned>(*v);
    c.workers_auto = false;
  }
}

void Loader::parse_limits(const Field& f, Limits& l) {
  MapReader m(*this, f);
  if (auto x = m.take("max_body_size")) {
    if (auto v = size(*x, false)) l.max_body_size = *v;
  }
  if (auto x = m.take("max_header_size")) {
    if (auto v = size(*x, false)) l.max_header_size = *v;
  }
  if (auto x = m.take("max_headers")) {
    if (auto v = integer(*x, 1, UINT64_MAX)) l.max_headers = *v;
  }
  if (auto x = m.take("max_uri_size")) {
    if (auto v = size(*x, false)) l.max_uri_size = *v;
  }
  if (auto x = m.take("max_connections")) {
    if (auto v = integer(*x, 1, UINT64_MAX)) l.max_connections = *v;
  }
  if (auto x = m.take("memory_buffer")) {
    if (auto v = size(*x, true)) l.memory_buffer = *v;  // 0: every non-empty body spills
  }
}

void Loader::parse_timeouts(const Field& f, Timeouts& t) {
  MapReader m(*this, f);
  const std::pair<const char*, Millis Timeouts::*> keys[] = {
      {"header", &Timeouts::header},
      {"body", &Timeouts::body},
      {"idle", &Timeouts::idle},
      {"upstream_connect", &Timeouts::upstream_connect},
      {"upstream_response", &Timeouts::upstream_response},
      {"drain", &Timeouts::drain},
      {"send", &Timeouts::send},
      {"upstream_idle", &Timeouts::upstream_idle},
  };
  for (const auto& [name, member] : keys) {
    auto x = m.take(name);
    if (!x) continue;
    const bool allow_zero = member == &Timeouts::drain;  // drain: 0s = stop at once
    if (auto v = duration(*x, allow_zero)) t.*member = *v;
  }
}

void Loader::parse_storage(const Field& f, StorageConfig& s) {
  MapReader m(*this, f);
  if (auto x = m.take("dir")) {
    if (auto v = string(*x, true)) s.dir = *v;
  }
  if (auto x = m.take("fsync")) {
    if (auto v = choice<FsyncPolicy>(*x, {{"always", FsyncPolicy::Always},
                                          {"batch", FsyncPolicy::Batch},
                                          {"never", FsyncPolicy::Never}})) {
      s.fsync = *v;
    }
  }
  if (auto x = m.take("max_queue_size")) {
    if (auto v = size(*x, false)) s.max_queue_size = *v;
  }
}

void Loader::parse_admin(const Field& f, Config& c) {
  MapReader m(*this, f);
  // `admin:` with nothing under it (everything commented out) means no admin listener.
  if (!m.ok() || m.empty()) return;
  AdminConfig& a = c.admin;
  bool address_ok = false;
  if (auto x = m.require("address")) {
    admin_address_pos_ = x->value_pos;
    address_ok = parse_address(*x, a.address, a.host, a.port);
  }
  bool token_ok = true;
  if (auto x = m.take("token_file")) {
    token_ok = false;
    if (auto path = string(*x, true)) {
      std::string token;
      if (auto err = config_detail::read_secret_file(*path, token)) {
        error(x->value_pos, "admin token file: " + *err);
      } else if (token.empty()) {
        error(x->value_pos, "admin token file '" + *path + "' is empty");
      } else if (std::any_of(token.begin(), token.end(), [](char ch) {
                   const auto u = static_cast<unsigned char>(ch);
                   return u <= 0x20 || u == 0x7f;
                 })) {
        error(x->value_pos, "admin token file '" + *path +
                                "' must hold one token without spaces or control characters");
      } else {
        a.token_file = *path;
        a.token = std::move(token);
        token_ok = true;
      }
    }
  }
  if (address_ok && token_ok && a.token_file.empty() &&
      !config_detail::is_loopback_host(a.host)) {
    error(admin_address_pos_, "admin address " + quote(a.address) +
                                  " is not a loopback address: set 'token_file' to protect the "
                                  "mutating endpoints");
  }
  if (address_ok && a.port != 0) {
    for (size_t i = 0; i < c.listen.size(); ++i) {
      if (c.listen[i].port == a.port && iequals(c.listen[i].host, a.host)) {
        error(admin_address_pos_, "admin address " + quote(a.address) +
                                      " is also a listen address (line " +
                                      std::to_string(listen_meta_[i].pos.line) + ")");
      }
    }
  }
}

void Loader::parse_log(const Field& f, LogConfig& l) {
  MapReader m(*this, f);
  if (auto x = m.take("level")) {
    if (auto v = choice<LogLevel>(*x, {{"error", LogLevel::Error},
                                       {"warn", LogLevel::Warn},
                                       {"info", LogLevel::Info},
                                       {"debug", LogLevel::Debug}})) {
      l.level = *v;
    }
  }
  if (auto x = m.take("access")) {
    // Plain `off` (and the other YAML 1.1 spellings of false) arrive as their text.
    if (x->value.IsScalar() && x->value.Tag() == "?" && yaml11_false(x->value.Scalar())) {
      l.access = "off";
    } else if (auto v = string(*x, true)) {
      if (*v == "stdout" || *v == "stderr" || *v == "off" || v->front() == '/') {
        l.access = *v;
      } else {
        error(x->value_pos, "'access' must be stdout, stderr, off or an absolute file path (got " +
                                quote(*v) + ")");
      }
    }
  }
}

void Loader::parse_routes(const Field& f, Config& c) {
  auto items = list(f, true);
  if (!items) return;
  for (const Field& item : *items) parse_route(item, c);

  // Cross-route rules (SPEC 3, 11): unique names; one host+path+kind only with disjoint methods.
  for (size_t j = 0; j < c.routes.size(); ++j) {
    const RouteConfig& b = c.routes[j];
    for (size_t i = 0; i < j; ++i) {
      const RouteConfig& a = c.routes[i];
      if (!a.name.empty() && a.name == b.name) {
        error(route_meta_[j].name_pos, "duplicate route name " + quote(b.name) +
                                           " (first at line " +
                                           std::to_string(route_meta_[i].name_pos.line) + ")");
      }
      if (a.path.empty() || b.path.empty()) continue;
      if (a.prefix != b.prefix || a.path != b.path || a.host != b.host) continue;
      bool disjoint = !a.methods.empty() && !b.methods.empty();
      for (const std::string& m : b.methods) {
        if (std::find(a.methods.begin(), a.methods.end(), m) != a.methods.end()) disjoint = false;
      }
      if (!disjoint) {
        error(route_meta_[j].path_pos,
              "route " + quote(b.name) + " has the same host and " +
                  (b.prefix ? "path_prefix" : "path") + " as route " + quote(a.name) +
                  " (line " + std::to_string(route_meta_[i].path_pos.line) +
                  "); give both disjoint 'methods'");
      }
    }
  }
}

void Loader::parse_route(const Field& item, Config& c) {
  MapReader m(*this, item, "each entry of 'routes' must be a mapping");
  if (!m.ok()) return;
  RouteConfig r;
  RouteMeta meta{m.pos(), m.pos()};

  // The mode decides which other keys apply, so it is read first. nullopt: invalid (reported),
  // and mode-dependent checks are skipped rather than guessed.
  std::optional<RouteMode> mode = RouteMode::Proxy;
  if (auto x = m.take("mode")) {
    mode = choice<RouteMode>(
        *x, {{"proxy", RouteMode::Proxy}, {"queue", RouteMode::Queue}, {"echo", RouteMode::Echo}});
    if (mode) r.mode = *mode;
    if (mode == RouteMode::Queue) use(Feature::QueueMode, x->value_pos);
  }
  const bool is_queue = mode == RouteMode::Queue;
  const std::string mode_name = !mode                       ? ""
                                : *mode == RouteMode::Proxy ? "proxy"
                                : *mode == RouteMode::Queue ? "queue"
                                                            : "echo";

  if (auto x = m.require("name")) {
    meta.name_pos = x->value_pos;
    if (auto v = string(*x, false)) {
      if (valid_route_name(*v)) {
        r.name = *v;
      } else {
        error(x->value_pos, "invalid route name " + quote(*v) +
                                " (letters, digits, '_', '.', '-'; starting with a letter or "
                                "digit)");
      }
    }
  }

  {
    auto p = m.take("path");
    auto pp = m.take("path_prefix");
    if (p && pp) {
      error(pp->key_pos, "give either 'path' or 'path_prefix', not both");
    } else if (!p && !pp) {
      error(m.pos(), "missing required key 'path' or 'path_prefix'");
    } else {
      const Field& x = p ? *p : *pp;
      meta.path_pos = x.value_pos;
      if (auto v = string(x, false)) {
        const bool bad_char = std::any_of(v->begin(), v->end(), [](char ch) {
          const auto u = static_cast<unsigned char>(ch);
          return u <= 0x20 || u >= 0x7f || ch == '?' || ch == '#';
        });
        if (v->front() != '/') {
          error(x.value_pos, x.label + " must start with '/'");
        } else if (bad_char) {
          error(x.value_pos, x.label +
                                 " must not contain '?', '#', spaces, control or non-ASCII "
                                 "characters (paths are matched raw, not percent-decoded)");
        } else {
          r.path = *v;
          r.prefix = !p.has_value();
        }
      }
    }
  }

  if (auto x = m.take("methods")) {
    if (auto items = list(*x, false)) {
      for (const Field& it : *items) {
        auto v = string(it, false);
        if (!v) continue;
        if (!config_detail::is_token(*v)) {
          error(it.value_pos, "invalid method " + quote(*v));
        } else if (std::any_of(v->begin(), v->end(),
                               [](char ch) { return ch >= 'a' && ch <= 'z'; })) {
          error(it.value_pos, "method " + quote(*v) +
                                  " must be upper case (methods are case-sensitive)");
        } else if (*v == "CONNECT") {
          error(it.value_pos, "method 'CONNECT' is never forwarded (the gateway answers 501)");
        } else if (std::find(r.methods.begin(), r.methods.end(), *v) != r.methods.end()) {
          error(it.value_pos, "method " + quote(*v) + " is listed twice");
        } else {
          r.methods.push_back(*v);
        }
      }
    }
  }

  if (auto x = m.take("host")) {
    if (auto v = string(*x, false)) {
      const bool bracketed = v->front() == '[';
      const bool has_port = bracketed ? v->find("]:") != std::string::npos
                                      : v->find(':') != std::string::npos;
      if (has_port && (bracketed || std::count(v->begin(), v->end(), ':') == 1)) {
        error(x->value_pos, "'host' must not include a port (the Host header's port is ignored)");
      } else if (!config_detail::valid_host(*v, true)) {
        error(x->value_pos, "invalid host " + quote(*v));
      } else {
        r.host = to_lower(*v);
      }
    }
  }

  {
    auto t = m.take("target");
    auto ts = m.take("targets");
    if (mode == RouteMode::Echo) {
      if (t) error(t->key_pos, "'target' does not apply to echo routes");
      if (ts) error(ts->key_pos, "'targets' does not apply to echo routes");
    } else if (t && ts) {
      error(ts->key_pos, "give either 'target' or 'targets', not both");
    } else if (!t && !ts) {
      if (mode == RouteMode::Proxy) {
        error(m.pos(), "missing required key 'target' (a proxy route forwards to one target)");
      } else if (mode == RouteMode::Queue) {
        error(m.pos(), "missing required key 'targets' (a queue route needs at least one)");
      }
    } else if (t) {
      TargetConfig tc;
      if (parse_target_url(*t, tc.url)) r.targets.push_back(std::move(tc));
    } else if (auto items = list(*ts, false)) {
      if (mode == RouteMode::Proxy && items->size() != 1) {
        error(ts->value_pos, "a proxy route takes exactly one target (use mode: queue to fan out)");
      }
      for (const Field& it : *items) parse_target(it, mode, r);
    }
  }

  if (auto x = m.take("max_body_size")) {
    if (auto v = size(*x, false)) r.max_body_size = *v;
  }
  if (auto x = m.take("trailers")) {
    if (auto v = choice<TrailerMode>(*x, {{"drop", TrailerMode::Drop},
                                          {"merge", TrailerMode::Merge}})) {
      r.trailers = *v;
    }
  }
  if (auto x = m.take("request_headers")) parse_header_rules(*x, r.request_headers);
  if (auto x = m.take("auth")) {
    use(Feature::RouteAuth, x->key_pos);
    AuthConfig auth;
    parse_auth(*x, auth);
    r.auth = std::move(auth);
  }
  if (auto x = m.take("allow_from")) {
    use(Feature::AllowFrom, x->key_pos);
    if (auto v = cidrs(*x)) r.allow_from = std::move(*v);
  }

  // Queue-only keys (SPEC 3: keys that do not apply to the route's mode are errors).
  auto queue_only = [&](const Field& x, std::string_view key) {
    if (!mode || is_queue) return true;
    error(x.key_pos, "'" + std::string(key) + "' applies only to queue routes (this route is " +
                         mode_name + ")");
    return false;
  };
  if (auto x = m.take("dedupe")) {
    if (queue_only(*x, "dedupe")) {
      DedupeConfig d;
      parse_dedupe(*x, d);
      r.dedupe = std::move(d);
    }
  }
  if (auto x = m.take("retry")) {
    if (queue_only(*x, "retry")) parse_retry(*x, r.retry);
  }
  if (auto x = m.take("accept_status")) {
    if (queue_only(*x, "accept_status")) {
      int status = 0;
      if (parse_status(*x, 200, 299, status)) {
        if (status == 204 || status == 205 || status == 206) {
          error(x->value_pos, "'accept_status' must be a 2xx status that carries a body (not " +
                                  std::to_string(status) + ")");
        } else {
          r.accept_status = status;
        }
      }
    }
  }

  c.routes.push_back(std::move(r));
  route_meta_.push_back(meta);
}

bool Loader::parse_target_url(const Field& f, Url& url) {
  auto text = string(f, true);
  if (!text) return false;
  if (auto err = config_detail::parse_url(*text, url)) {
    error(f.value_pos, "invalid target URL: " + *err);
    return false;
  }
  if (url.tls) use(Feature::HttpsTarget, f.value_pos);
  return true;
}

void Loader::parse_target(const Field& f, std::optional<RouteMode> mode, RouteConfig& r) {
  MapReader m(*this, f, "each entry of 'targets' must be a mapping with a 'url'");
  if (!m.ok()) return;
  TargetConfig t;
  bool url_ok = false;
  if (auto x = m.require("url")) url_ok = parse_target_url(*x, t.url);
  if (auto x = m.take("max_in_flight")) {
    if (mode && *mode != RouteMode::Queue) {
      error(x->key_pos, "'max_in_flight' applies only to queue routes");
    } else if (auto v = integer(*x, 1, UINT64_MAX)) {
      t.max_in_flight = *v;
    }
  }
  if (auto x = m.take("timeout")) {
    if (auto v = duration(*x, false)) t.timeout = *v;
  }
  if (auto x = m.take("connect_timeout")) {
    if (auto v = duration(*x, false)) t.connect_timeout = *v;
  }
  if (auto x = m.take("preserve_host")) {
    if (auto v = boolean(*x)) t.preserve_host = *v;
  }
  if (auto x = m.take("tls")) {
    use(Feature::TargetTls, x->key_pos);
    if (url_ok && !t.url.tls) error(x->key_pos, "'tls' applies only to https:// targets");
    parse_target_tls(*x, t.tls);
  }
  if (auto x = m.take("headers")) parse_header_rules(*x, t.headers);
  if (auto x = m.take("proxy")) {
    use(Feature::TargetProxy, x->key_pos);
    if (auto text = string(*x, true)) {
      Url p;
      if (auto err = config_detail::parse_url(*text, p)) {
        error(x->value_pos, "invalid proxy URL: " + *err);
      } else if (p.tls) {
        error(x->value_pos, "the proxy URL must be http:// (CONNECT proxies are reached in plain "
                            "HTTP)");
      } else if (p.path != "/" || !p.query.empty()) {
        error(x->value_pos, "the proxy URL must not have a path or query");
      } else {
        t.proxy = std::move(p);
      }
    }
  }
  if (auto x = m.take("idle_timeout")) {
    if (auto v = duration(*x, false)) t.idle_timeout = *v;
  }
  if (auto x = m.take("max_idle")) {
    if (auto v = integer(*x, 0, UINT64_MAX)) t.max_idle = *v;  // 0: no pooling
  }
  if (url_ok) r.targets.push_back(std::move(t));
}

void Loader::parse_target_tls(const Field& f, TargetTls& tls) {
  MapReader m(*this, f);
  if (auto x = m.take("verify")) {
    if (auto v = boolean(*x)) tls.verify = *v;
  }
  if (auto x = m.take("ca_file")) {
    if (auto v = string(*x, true)) tls.ca_file = *v;
  }
  auto cert = m.take("client_certificate");
  auto key = m.take("client_private_key");
  if (cert) {
    if (auto v = string(*cert, true)) tls.client_certificate = *v;
  }
  if (key) {
    if (auto v = string(*key, true)) tls.client_private_key = *v;
  }
  if (cert && !key) error(m.pos(), "missing required key 'client_private_key' (with 'client_certificate')");
  if (key && !cert) error(m.pos(), "missing required key 'client_certificate' (with 'client_private_key')");
  if (auto x = m.take("server_name")) {
    if (auto v = string(*x, true)) {
      if (config_detail::valid_host(*v, false)) {
        tls.server_name = *v;
      } else {
        error(x->value_pos, "invalid 'server_name' " + quote(*v));
      }
    }
  }
}

void Loader::parse_header_rules(const Field& f, HeaderRules& rules) {
  MapReader m(*this, f);
  if (auto s = m.take("set")) {
    MapReader sm(*this, *s, "'set' must be a mapping of header names to values");
    for (auto& [name, x] : sm.take_all()) {
      if (!config_detail::is_token(name)) {
        error(x.key_pos, "invalid header name " + quote(name));
        continue;
      }
      if (managed_header(name)) {
        error(x.key_pos, "header " + quote(name) + " cannot be set (the gateway manages it" +
                             (iequals(name, "host") ? "; see 'preserve_host')" : ")"));
        continue;
      }
      const auto dup = std::find_if(rules.set.begin(), rules.set.end(),
                                    [&](const auto& h) { return iequals(h.first, name); });
      if (dup != rules.set.end()) {
        error(x.key_pos, "header " + quote(name) + " is set twice (names are case-insensitive)");
        continue;
      }
      if (is_missing(x.value)) {
        error(x.key_pos, "header " + quote(name) + " needs a value (write \"\" for an empty one)");
        continue;
      }
      auto v = string(x, true, true);
      if (!v) continue;
      if (!config_detail::is_field_value(*v)) {
        // The value is not repeated: it may be a secret.
        error(x.value_pos, "the value of header " + quote(name) +
                               " contains a control character (CR, LF, NUL, ...)");
        continue;
      }
      rules.set.emplace_back(name, std::move(*v));
    }
  }
  if (auto r = m.take("remove")) {
    if (auto items = list(*r, true)) {
      for (const Field& it : *items) {
        auto v = string(it, false);
        if (!v) continue;
        if (!config_detail::is_token(*v)) {
          error(it.value_pos, "invalid header name " + quote(*v));
        } else if (unremovable_header(*v)) {
          error(it.value_pos, "header " + quote(*v) + " cannot be removed (the gateway manages it)");
        } else {
          rules.remove.push_back(*v);
        }
      }
    }
  }
}

void Loader::parse_auth(const Field& f, AuthConfig& auth) {
  MapReader m(*this, f);
  if (!m.ok()) return;
  std::optional<AuthType> type;
  std::string type_name;
  if (auto x = m.require("type")) {
    type = choice<AuthType>(*x, {{"basic", AuthType::Basic},
                                 {"bearer", AuthType::Bearer},
                                 {"header", AuthType::Header},
                                 {"hmac", AuthType::Hmac},
                                 {"standard_webhooks", AuthType::StandardWebhooks}});
    if (type) {
      auth.type = *type;
      type_name = x->value.Scalar();
    }
  }
  // Every key of every type is taken, so a key of another type gets a clear message (and an
  // unknown key a suggestion); a key applies when its type matches or the type is unknown.
  auto key = [&](std::string_view name, AuthType owner, bool required) -> std::optional<Field> {
    auto x = m.take(name);
    if (!type) return x;
    if (x && *type != owner) {
      error(x->key_pos, "'" + std::string(name) + "' does not apply to auth type '" +
                            type_name + "'");
      return std::nullopt;
    }
    if (!x && required && *type == owner) {
      error(m.pos(), "missing required key '" + std::string(name) + "' for auth type '" +
                         type_name + "'");
    }
    return x;
  };
  auto header_value = [&](const Field& x, std::string& out) {
    if (auto v = string(x, true)) {
      if (config_detail::is_field_value(*v)) {
        out = std::move(*v);
      } else {
        error(x.value_pos, x.label + " contains a control character (CR, LF, NUL, ...)");
      }
    }
  };
  auto header_name = [&](const Field& x, std::string& out) {
    if (auto v = string(x, false)) {
      if (config_detail::is_token(*v)) {
        out = std::move(*v);
      } else {
        error(x.value_pos, "invalid header name " + quote(*v));
      }
    }
  };

  if (auto x = key("username", AuthType::Basic, true)) {
    if (auto v = string(*x, true)) {
      if (v->find(':') != std::string::npos || !config_detail::is_field_value(*v)) {
        error(x->value_pos, "'username' must not contain ':' or control characters");
      } else {
        auth.username = std::move(*v);
      }
    }
  }
  if (auto x = key("password", AuthType::Basic, true)) {
    if (auto v = string(*x, true)) auth.password = std::move(*v);
  }
  if (auto x = key("token", AuthType::Bearer, true)) {
    if (auto v = string(*x, true)) {
      if (std::any_of(v->begin(), v->end(), [](char ch) {
            const auto u = static_cast<unsigned char>(ch);
            return u <= 0x20 || u >= 0x7f;
          })) {
        error(x->value_pos, "'token' must not contain spaces, control or non-ASCII characters");
      } else {
        auth.token = std::move(*v);
      }
    }
  }
  if (auto x = key("name", AuthType::Header, true)) header_name(*x, auth.name);
  if (auto x = key("value", AuthType::Header, true)) header_value(*x, auth.value);
  if (auto x = key("header", AuthType::Hmac, true)) header_name(*x, auth.header);
  if (auto x = key("secret", AuthType::Hmac, true)) {
    if (auto v = string(*x, true)) auth.secret = std::move(*v);
  }
  if (auto x = key("algorithm", AuthType::Hmac, false)) {
    if (auto v = choice<std::string_view>(*x, {{"sha256", "sha256"}, {"sha512", "sha512"}})) {
      auth.algorithm = std::string(*v);
    }
  }
  if (auto x = key("encoding", AuthType::Hmac, false)) {
    if (auto v = choice<std::string_view>(*x, {{"hex", "hex"}, {"base64", "base64"}})) {
      auth.encoding = std::string(*v);
    }
  }
  if (auto x = key("prefix", AuthType::Hmac, false)) header_value(*x, auth.prefix);
  auto secrets = key("secrets", AuthType::StandardWebhooks, false);
  auto keys = key("public_keys", AuthType::StandardWebhooks, false);
  if (secrets) {
    if (auto items = list(*secrets, true)) {
      for (const Field& it : *items) {
        auto v = string(it, true);
        if (!v) continue;
        constexpr std::string_view kPrefix = "whsec_";
        if (v->compare(0, kPrefix.size(), kPrefix) != 0 ||
            !config_detail::is_base64(std::string_view(*v).substr(kPrefix.size()))) {
          // Not repeated: it is a secret.
          error(it.value_pos, "a standard_webhooks secret must be 'whsec_' followed by base64");
          continue;
        }
        auth.secrets.push_back(std::move(*v));
      }
    }
  }
  if (keys) {
    if (auto items = list(*keys, true)) {
      for (const Field& it : *items) {
        if (auto v = string(it, true)) auth.public_keys.push_back(std::move(*v));
      }
    }
  }
  const bool sw = type == AuthType::StandardWebhooks;
  if (sw && (!secrets || is_missing(secrets->value) || secrets->value.size() == 0) &&
      (!keys || is_missing(keys->value) || keys->value.size() == 0)) {
    error(m.pos(), "standard_webhooks needs 'secrets' or 'public_keys' (or both)");
  }
  if (auto x = key("tolerance", AuthType::StandardWebhooks, false)) {
    if (auto v = duration(*x, false)) auth.tolerance = *v;
  }
}

bool Loader::parse_status(const Field& f, int min, int max, int& out) {
  auto v = integer(f, static_cast<uint64_t>(min), static_cast<uint64_t>(max));
  if (!v) return false;
  out = static_cast<int>(*v);
  return true;
}

void Loader::parse_retry(const Field& f, RetryConfig& retry) {
  MapReader m(*this, f);
  if (auto x = m.take("max_attempts")) {
    if (auto v = integer(*x, 1, UINT64_MAX)) retry.max_attempts = *v;
  }
  Pos initial_pos, max_pos;
  bool backoff_ok = true;
  if (auto x = m.take("initial_backoff")) {
    initial_pos = x->value_pos;
    if (auto v = duration(*x, false)) {
      retry.initial_backoff = *v;
    } else {
      backoff_ok = false;
    }
  }
  if (auto x = m.take("max_backoff")) {
    max_pos = x->value_pos;
    if (auto v = duration(*x, false)) {
      retry.max_backoff = *v;
    } else {
      backoff_ok = false;
    }
  }
  if (backoff_ok && retry.max_backoff < retry.initial_backoff) {
    error(max_pos.line != 0 ? max_pos : initial_pos,
          "'max_backoff' (" + format_duration(retry.max_backoff) +
              ") must not be smaller than 'initial_backoff' (" +
              format_duration(retry.initial_backoff) + ")");
  }
  if (auto x = m.take("max_age")) {
    if (auto v = duration(*x, false)) retry.max_age = *v;
  }
  if (auto x = m.take("dead_letter_retention")) {
    if (auto v = duration(*x, false)) retry.dead_letter_retention = *v;
  }
  if (auto x = m.take("on")) {
    if (auto items = list(*x, true)) {
      std::vector<int> on;
      for (const Field& it : *items) {
        int status = 0;
        if (!parse_status(it, 100, 599, status)) continue;
        if (status >= 200 && status <= 299) {
          error(it.value_pos, "status " + std::to_string(status) +
                                  " is a success and cannot be retried");
        } else if (std::find(on.begin(), on.end(), status) != on.end()) {
          error(it.value_pos, "status " + std::to_string(status) + " is listed twice");
        } else {
          on.push_back(status);
        }
      }
      retry.on = std::move(on);
    }
  }
}

void Loader::parse_dedupe(const Field& f, DedupeConfig& d) {
  MapReader m(*this, f);
  if (!m.ok()) return;
  if (auto x = m.require("header")) {
    if (auto v = string(*x, false)) {
      if (config_detail::is_token(*v)) {
        d.header = std::move(*v);
      } else {
        error(x->value_pos, "invalid header name " + quote(*v));
      }
    }
  }
  if (auto x = m.take("window")) {
    if (auto v = duration(*x, false)) d.window = *v;
  }
}

LoadResult single_error(const std::string& name, std::string message) {
  LoadResult r;
  r.errors.push_back(ConfigError{name, 0, 0, std::move(message)});
  return r;
}

}  // namespace

LoadResult load_config_string(std::string_view yaml, const std::string& name) {
  try {
    Loader loader(name);
    return loader.load(yaml);
  } catch (const std::exception& e) {  // bad_alloc and friends: never escape the loader
    return single_error(name, std::string("internal error: ") + e.what());
  }
}

LoadResult load_config_file(const std::string& path) {
  try {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
      return single_error(path,
                          std::string("cannot open the configuration file: ") +
                              std::strerror(errno));
    }
    std::string text;
    char buf[16384];
    for (;;) {
      const ssize_t n = ::read(fd, buf, sizeof buf);
      if (n < 0) {
        if (errno == EINTR) continue;
        const int err = errno;
        ::close(fd);
        return single_error(path, std::string("cannot read the configuration file: ") +
                                      std::strerror(err));
      }
      if (n == 0) break;
      if (text.size() + static_cast<size_t>(n) > kMaxConfigFile) {
        ::close(fd);
        return single_error(path, "the configuration file is larger than 16MiB");
      }
      text.append(buf, static_cast<size_t>(n));
    }
    ::close(fd);
    return load_config_string(text, path);
  } catch (const std::exception& e) {
    return single_error(path, std::string("internal error: ") + e.what());
  }
}

}  // namespace dechunkd
