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
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <initializer_list>
#include <sstream>
#include <thread>

#include "config/config_detail.hpp"
#include "config/config_loader.hpp"
#include "net/tls_context.hpp"

namespace dechunkd {

std::string ConfigError::str() const {
  if (line <= 0) return file + ": " + message;
  return file + ":" + std::to_string(line) + ":" + std::to_string(col) + ": " + message;
}

std::string Url::redacted() const {
  return std::string(tls ? "https://" : "http://") + authority + path;
}

namespace config_detail {
namespace {


constexpr unsigned kMaxWorkers = 256;
constexpr Millis kMaxDuration{87600LL * 3600'000};  // 10 years: far from any clock overflow

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

// YAML 1.1 reads these plain scalars as false; `access: off` must work unquoted (SPEC 3).
bool yaml11_false(std::string_view s) {
  for (std::string_view f : {"off", "Off", "OFF", "false", "False", "FALSE", "no", "No", "NO"}) {
    if (s == f) return true;
  }
  return false;
}

}  // namespace

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
    const bool grammar_ok = digits != 0 && (digits == std::string::npos ||
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
      error(f.value_pos,
            "duration " + quote(*text) + " for " + f.label + " is too large (at most 87600h)");
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
    std::string range =
        max == UINT64_MAX ? (min == 0 ? "a non-negative integer"
                                      : "an integer of at least " + std::to_string(min))
                          : "an integer from " + std::to_string(min) + " to " + std::to_string(max);
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


// ---- the schema --------------------------------------------------------------------------------

namespace {
// yaml-cpp 0.7's LoadAll() can loop forever, allocating, on some invalid inputs (a ',' after a
// document's first node; upstream jbeder/yaml-cpp#1040, found by fuzz_config). So the root is
// read with Load() (which returns on those inputs) and documents are counted with the
// event parser, stopping at two.
class NullHandler : public YAML::EventHandler {
 public:
  void OnDocumentStart(const YAML::Mark&) override {}
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t, const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
};

// The mark of the second document's start, if there is one.
std::optional<YAML::Mark> second_document(const std::string& text) {
  std::istringstream in(text);
  YAML::Parser parser(in);
  NullHandler h;
  if (!parser.HandleNextDocument(h)) return std::nullopt;
  struct Marker : NullHandler {
    std::optional<YAML::Mark> at;
    void OnDocumentStart(const YAML::Mark& m) override { at = m; }
  } second;
  if (!parser.HandleNextDocument(second)) return std::nullopt;
  return second.at ? second.at : std::optional<YAML::Mark>(YAML::Mark());
}
}  // namespace

LoadResult Loader::load(std::string_view text) {
  LoadResult result;
  auto cfg = std::make_shared<Config>();
  cfg->path = file_;
  try {
    YAML::Node root;
    bool parsed = true;
    try {
      const std::string owned(text);
      root = YAML::Load(owned);
      if (auto second = second_document(owned)) error(pos_of(*second), "only one YAML document is allowed");
    } catch (const YAML::Exception& e) {
      error(pos_of(e.mark), "invalid YAML: " + e.msg);
      parsed = false;
    }
    if (parsed) {
      Pos root_pos = pos_of(root);
      if (root_pos.line == 0 || is_missing(root)) root_pos = {1, 1};
      parse_root(root, root_pos, *cfg);
    }
  } catch (const std::exception& e) {
    error({}, std::string("internal error while reading the configuration: ") + e.what());
  }
  std::stable_sort(errors_.begin(), errors_.end(), [](const ConfigError& a, const ConfigError& b) {
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
      MapReader tm(*this, *t);
      if (tm.ok() && tm.empty()) error(t->value_pos, "'tls' must not be empty");
      TlsListenConfig tls;
      Pos cert_pos = t->value_pos;
      Pos key_pos = t->value_pos;
      if (auto x = tm.require("certificate")) {
        cert_pos = x->value_pos;
        if (auto v = string(*x, true)) tls.certificate = *v;
      }
      if (auto x = tm.require("private_key")) {
        key_pos = x->value_pos;
        if (auto v = string(*x, true)) tls.private_key = *v;
      }
      if (auto x = tm.take("min_version")) {
        if (auto v = choice<std::string_view>(*x, {{"1.2", "1.2"}, {"1.3", "1.3"}})) {
          tls.min_version = std::string(*v);
        }
      }
      // A bad certificate or key is a config error naming the path (also for --check).
      if (!tls.certificate.empty() && !tls.private_key.empty()) {
        std::string why;
        TlsFile failed = TlsFile::Other;
        if (!make_server_ctx(tls, &why, &failed)) {
          error(failed == TlsFile::PrivateKey ? key_pos : cert_pos, why);
          // Every error at once: the key is not tried after a failed certificate otherwise.
          std::string key_why;
          if (failed == TlsFile::Certificate && !private_key_loads(tls.private_key, "private key", &key_why))
            error(key_pos, key_why);
        }
      }
      l.tls = std::move(tls);
    }
    if (auto t = m.take("trusted_proxies")) {
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
  if (address_ok && token_ok && a.token_file.empty() && !config_detail::is_loopback_host(a.host)) {
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

}  // namespace config_detail

namespace {

constexpr size_t kMaxConfigFile = 16 * kMiB;

LoadResult single_error(const std::string& name, std::string message) {
  LoadResult r;
  r.errors.push_back(ConfigError{name, 0, 0, std::move(message)});
  return r;
}

}  // namespace

LoadResult load_config_string(std::string_view yaml, const std::string& name) {
  try {
    config_detail::Loader loader(name);
    return loader.load(yaml);
  } catch (const std::exception& e) {  // bad_alloc and friends: never escape the loader
    return single_error(name, std::string("internal error: ") + e.what());
  }
}

LoadResult load_config_file(const std::string& path) {
  try {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
      return single_error(
          path, std::string("cannot open the configuration file: ") + std::strerror(errno));
    }
    std::string text;
    char buf[16384];
    for (;;) {
      const ssize_t n = ::read(fd, buf, sizeof buf);
      if (n < 0) {
        if (errno == EINTR) continue;
        const int err = errno;
        ::close(fd);
        return single_error(
            path, std::string("cannot read the configuration file: ") + std::strerror(err));
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