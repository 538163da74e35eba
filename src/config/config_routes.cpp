// The route schema (SPEC 3 "routes", 7, 11): matching keys, modes and targets, header rules,
// auth, queue settings, and the cross-route checks (unique names, overlapping routes).
#include <algorithm>

#include "config/config_detail.hpp"
#include "config/config_loader.hpp"
#include "auth/auth.hpp"
#include "net/tls_context.hpp"

namespace dechunkd::config_detail {
namespace {

// Fields the gateway writes or frames itself: a header rule cannot set them, and the framing
// ones cannot be removed either.
bool managed_header(std::string_view name) {
  for (std::string_view h :
       {"host", "content-length", "transfer-encoding", "connection", "keep-alive",
        "proxy-connection", "te", "trailer", "upgrade", "expect"}) {
    if (iequals(name, h)) return true;
  }
  return false;
}

bool unremovable_header(std::string_view name) {
  return iequals(name, "host") || iequals(name, "content-length") ||
         iequals(name, "transfer-encoding");
}

bool valid_route_name(std::string_view s) {
  auto alnum = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
  };
  if (s.empty() || !alnum(s.front())) return false;
  return std::all_of(s.begin(), s.end(),
                     [&](char c) { return alnum(c) || c == '_' || c == '.' || c == '-'; });
}

}  // namespace

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
                  (b.prefix ? "path_prefix" : "path") + " as route " + quote(a.name) + " (line " +
                  std::to_string(route_meta_[i].path_pos.line) + "); give both disjoint 'methods'");
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
          error(it.value_pos,
                "method " + quote(*v) + " must be upper case (methods are case-sensitive)");
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
      const bool has_port =
          bracketed ? v->find("]:") != std::string::npos : v->find(':') != std::string::npos;
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
    if (auto v =
            choice<TrailerMode>(*x, {{"drop", TrailerMode::Drop}, {"merge", TrailerMode::Merge}})) {
      r.trailers = *v;
    }
  }
  if (auto x = m.take("request_headers")) parse_header_rules(*x, r.request_headers);
  if (auto x = m.take("auth")) {
    AuthConfig auth;
    size_t errors_before = error_count();
    parse_auth(*x, auth);
    if (error_count() == errors_before) {
      // Keys and secrets are loaded now, so --check reports an unreadable PEM file.
      std::string why;
      if (!Authenticator::create(auth, &why)) error(x->value_pos, "auth: " + why);
    }
    r.auth = std::move(auth);
  }
  if (auto x = m.take("allow_from")) {
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
    if (url_ok && !t.url.tls) error(x->key_pos, "'tls' applies only to https:// targets");
    parse_target_tls(*x, t.tls);
  }
  if (auto x = m.take("headers")) parse_header_rules(*x, t.headers);
  if (auto x = m.take("proxy")) {
    if (auto text = string(*x, true)) {
      Url p;
      if (auto err = config_detail::parse_url(*text, p)) {
        error(x->value_pos, "invalid proxy URL: " + *err);
      } else if (p.tls) {
        error(x->value_pos,
              "the proxy URL must be http:// (CONNECT proxies are reached in plain "
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
  Pos ca_pos = m.pos();
  if (auto x = m.take("ca_file")) {
    ca_pos = x->value_pos;
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
  if (cert && !key)
    error(m.pos(), "missing required key 'client_private_key' (with 'client_certificate')");
  if (key && !cert)
    error(m.pos(), "missing required key 'client_certificate' (with 'client_private_key')");
  if (!(cert && !key) && !(key && !cert)) {
    std::string why;
    TlsFile failed = TlsFile::Other;
    if (!make_client_ctx(tls, &why, &failed)) {
      Pos at = m.pos();
      if (failed == TlsFile::CaFile) at = ca_pos;
      if (failed == TlsFile::Certificate && cert) at = cert->value_pos;
      if (failed == TlsFile::PrivateKey && key) at = key->value_pos;
      error(at, why);
      std::string key_why;  // every error at once (see the listener's)
      if (failed == TlsFile::Certificate && key &&
          !private_key_loads(tls.client_private_key, "client private key", &key_why))
        error(key->value_pos, key_why);
    }
  }
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
    for (const auto& entry : sm.take_all()) {
      // Named references, not structured bindings: clang 14 cannot capture those in lambdas.
      const std::string& name = entry.first;
      const Field& x = entry.second;
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
          error(it.value_pos,
                "header " + quote(*v) + " cannot be removed (the gateway manages it)");
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
      error(x->key_pos,
            "'" + std::string(name) + "' does not apply to auth type '" + type_name + "'");
      return std::nullopt;
    }
    if (!x && required && *type == owner) {
      error(m.pos(),
            "missing required key '" + std::string(name) + "' for auth type '" + type_name + "'");
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
  if (auto x = key("name", AuthType::Header, true)) {
    header_name(*x, auth.name);
    // The secret must leave with the checked header: one the gateway writes, echoes or
    // forwards in its own way would carry it on (X-Request-Id into the response and the log,
    // Host into X-Forwarded-Host).
    if (!auth.name.empty() && (managed_header(auth.name) || iequals(auth.name, "x-request-id") ||
                               (auth.name.size() > 12 && iequals(auth.name.substr(0, 12), "x-forwarded-")))) {
      error(x->value_pos, "header " + quote(auth.name) +
                              " cannot carry the credential: the gateway manages it (choose a header of your own, e.g. X-Api-Key)");
      auth.name.clear();
    }
  }
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
        auto v = string(it, true);
        if (!v) continue;
        std::string why;  // read now, so --check reports an unusable PEM file at its entry
        if (!ed25519_public_key_usable(*v, &why)) {
          error(it.value_pos, "auth: " + why);
          continue;
        }
        auth.public_keys.push_back(std::move(*v));
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
          error(it.value_pos,
                "status " + std::to_string(status) + " is a success and cannot be retried");
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
}  // namespace dechunkd::config_detail
