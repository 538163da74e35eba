// The outbound request head (SPEC 4 "Outbound request to the target", SPEC 11 "Routing and
// headers"). Built once per request straight into the caller's string: one reserve, appends of
// string_views, integers via std::to_chars; no per-field allocation, no maps, no snprintf.
//
// How the header rules combine (decisions where SPEC 4/11 are silent are marked "Choice"):
// - Operator rules are applied as a sequence: route `remove`, route `set`, target `remove`,
//   target `set`. Within one block `set` wins over `remove` of the same name; a later block wins
//   over an earlier one. A `set` field removes every field of that name — received ones and the
//   ones the gateway would add (Host, X-Forwarded-*, X-Request-Id) — and is appended in that
//   sequence's order. So a target `set` that overrides a route `set` of the same name appears
//   once, at the target's position (Choice: the literal "removes every field of that name and is
//   appended" applied step by step), with the target's value.
// - Choice: a `remove` also suppresses the gateway's own X-Forwarded-For / X-Forwarded-Proto /
//   X-Forwarded-Host / X-Request-Id: an operator who lists `X-Forwarded-For` does not want client
//   addresses to reach the target. It never suppresses `Host` (HTTP/1.1 requires it) or
//   `Content-Length` (framing).
// - Choice: `set` entries naming a hop-by-hop field (Connection, Transfer-Encoding,
//   Content-Length, Expect, ...) are ignored: framing is the gateway's; the loader should refuse
//   them anyway.
// - Fields named in `Connection` by the sender and the credentials auth checked (strip_names)
//   are dropped from the received fields and from merged trailers, never from `set` fields (a
//   route may set the target's own Authorization after auth stripped the sender's). Choice: a
//   sender listing `X-Forwarded-For` in Connection (a known trick to hide the chain) loses its
//   received XFF values, but the gateway still sends its own line with the client address,
//   appended after the received fields; a listed `Host` changes nothing (Host is ours to write).
// - Choice: merged trailer fields whose name a rule removes or sets are dropped (the set value is
//   the one the operator wants the target to see).
#include "proxy/outbound.hpp"

#include <array>

#include "core/append.hpp"

namespace dechunkd {
namespace {

bool ieq(std::string_view a, std::string_view b) { return iequals(a, b); }  // the one shared compare

bool istarts_with(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && ieq(s.substr(0, prefix.size()), prefix);
}

bool is_ows(char c) { return c == ' ' || c == '\t'; }

std::string_view trim_ows(std::string_view s) {
  while (!s.empty() && is_ows(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_ows(s.back())) s.remove_suffix(1);
  return s;
}

constexpr std::string_view kHost = "Host";
constexpr std::string_view kXff = "X-Forwarded-For";
constexpr std::string_view kXfp = "X-Forwarded-Proto";
constexpr std::string_view kXfh = "X-Forwarded-Host";
constexpr std::string_view kRequestId = "X-Request-Id";

// The names the builder treats specially, told apart with one switch on the length and (at
// most) two comparisons: this runs for every received field.
enum class Known {
  Other,
  Host,
  Xff,
  Xfp,
  Xfh,
  RequestId,
  HopByHop,  // SPEC 4's list, see is_hop_by_hop
};

Known classify(std::string_view n) {
  switch (n.size()) {
    case 2:
      return ieq(n, "TE") ? Known::HopByHop : Known::Other;
    case 4:
      return ieq(n, kHost) ? Known::Host : Known::Other;
    case 6:
      return ieq(n, "Expect") ? Known::HopByHop : Known::Other;
    case 7:
      return ieq(n, "Trailer") || ieq(n, "Upgrade") ? Known::HopByHop : Known::Other;
    case 10:
      return ieq(n, "Connection") || ieq(n, "Keep-Alive") ? Known::HopByHop : Known::Other;
    case 12:
      return ieq(n, kRequestId) ? Known::RequestId : Known::Other;
    case 14:
      return ieq(n, "Content-Length") ? Known::HopByHop : Known::Other;
    case 15:
      return ieq(n, kXff) ? Known::Xff : Known::Other;
    case 16:
      if (ieq(n, kXfh)) return Known::Xfh;
      return ieq(n, "Proxy-Connection") ? Known::HopByHop : Known::Other;
    case 17:
      if (ieq(n, kXfp)) return Known::Xfp;
      return ieq(n, "Transfer-Encoding") ? Known::HopByHop : Known::Other;
    default:
      return Known::Other;
  }
}

// Calls fn(token) for every non-empty element of a comma-separated list.
template <typename Fn>
bool any_token(std::string_view list, Fn&& fn) {
  while (!list.empty()) {
    const size_t comma = list.find(',');
    const std::string_view tok = trim_ows(list.substr(0, comma));
    if (!tok.empty() && fn(tok)) return true;
    if (comma == std::string_view::npos) break;
    list.remove_prefix(comma + 1);
  }
  return false;
}

// A one-word filter over name lengths: most fields are told "not in this list" with one bit
// test instead of a walk over the list (the builder asks several lists for every field).
class LengthMask {
 public:
  void add(size_t len) { bits_ |= uint64_t{1} << (len & 63); }
  bool maybe(size_t len) const { return (bits_ >> (len & 63)) & 1; }

 private:
  uint64_t bits_ = 0;
};

// The field names the sender listed in its Connection field(s). Held as views in a fixed array;
// a head listing more tokens than fit falls back to rescanning the Connection fields.
class ConnectionTokens {
 public:
  explicit ConnectionTokens(const std::vector<HeaderField>& fields) : fields_(fields) {
    for (const HeaderField& f : fields) {
      if (!ieq(f.name, "Connection")) continue;
      any_token(f.value, [this](std::string_view t) {
        mask_.add(t.size());
        if (n_ == tokens_.size()) {
          overflow_ = true;
        } else {
          tokens_[n_++] = t;
        }
        return false;
      });
    }
  }

  bool contains(std::string_view name) const {
    if (!mask_.maybe(name.size())) return false;
    if (!overflow_) {
      for (size_t i = 0; i < n_; ++i) {
        if (ieq(tokens_[i], name)) return true;
      }
      return false;
    }
    for (const HeaderField& f : fields_) {
      if (!ieq(f.name, "Connection")) continue;
      if (any_token(f.value, [name](std::string_view t) { return ieq(t, name); })) return true;
    }
    return false;
  }

 private:
  const std::vector<HeaderField>& fields_;
  std::array<std::string_view, 8> tokens_;  // real heads list one or two tokens
  size_t n_ = 0;
  bool overflow_ = false;  // more tokens than tokens_ holds: contains() rescans the fields
  LengthMask mask_;        // lengths of all tokens, also those beyond tokens_
};

bool in_list(const std::vector<std::string>& list, std::string_view name) {
  for (const std::string& n : list) {
    if (ieq(n, name)) return true;
  }
  return false;
}

// A `set` entry counts only when its name may be set at all (not hop-by-hop).
bool sets(const HeaderRules& r, std::string_view name) {
  for (const auto& [n, v] : r.set) {
    if (ieq(n, name) && !is_hop_by_hop(n)) return true;
  }
  return false;
}

enum class Rule {
  Keep,     // no rule names it
  Removed,  // the last rule naming it is a `remove`
  Set,      // the last rule naming it is a `set`: the set field replaces every other
};

class Rules {
 public:
  Rules(const HeaderRules& route, const HeaderRules* target) : route_(route), target_(target) {
    add(route);
    if (target != nullptr) add(*target);
  }

  Rule of(std::string_view name) const {
    Rule r = Rule::Keep;
    if (!mask_.maybe(name.size())) return r;
    if (in_list(route_.remove, name)) r = Rule::Removed;
    if (sets(route_, name)) r = Rule::Set;
    if (target_ != nullptr) {
      if (in_list(target_->remove, name)) r = Rule::Removed;
      if (sets(*target_, name)) r = Rule::Set;
    }
    return r;
  }

  // Calls fn(name, value) for each `set` field that survives the later rules, in order.
  template <typename Fn>
  void for_each_set(Fn&& fn) const {
    const auto& rs = route_.set;
    for (size_t i = 0; i < rs.size(); ++i) {
      const std::string_view name = rs[i].first;
      if (is_hop_by_hop(name) || later_set(rs, i, name)) continue;
      if (target_ != nullptr && (in_list(target_->remove, name) || sets(*target_, name))) continue;
      fn(name, std::string_view(rs[i].second));
    }
    if (target_ == nullptr) return;
    const auto& ts = target_->set;
    for (size_t i = 0; i < ts.size(); ++i) {
      const std::string_view name = ts[i].first;
      if (is_hop_by_hop(name) || later_set(ts, i, name)) continue;
      fn(name, std::string_view(ts[i].second));
    }
  }

  size_t set_bytes() const {
    size_t n = 0;
    for (const auto& [k, v] : route_.set) n += k.size() + v.size() + 4;
    if (target_ != nullptr) {
      for (const auto& [k, v] : target_->set) n += k.size() + v.size() + 4;
    }
    return n;
  }

 private:
  static bool later_set(const std::vector<std::pair<std::string, std::string>>& s, size_t i,
                        std::string_view name) {
    for (size_t j = i + 1; j < s.size(); ++j) {
      if (ieq(s[j].first, name)) return true;
    }
    return false;
  }

  void add(const HeaderRules& r) {
    for (const std::string& n : r.remove) mask_.add(n.size());
    for (const auto& [n, v] : r.set) mask_.add(n.size());
  }

  const HeaderRules& route_;
  const HeaderRules* target_;
  LengthMask mask_;  // lengths of every name the rules mention
};

void put_field(StringWriter& out, std::string_view name, std::string_view value) {
  out.put(name);
  out.put(": ");
  out.put(value);
  out.put("\r\n");
}

bool sends_empty_length(std::string_view method) {
  return method == "POST" || method == "PUT" || method == "PATCH";
}

}  // namespace

bool is_hop_by_hop(std::string_view name) { return classify(name) == Known::HopByHop; }

bool trailer_mergeable(std::string_view name, const RouteConfig& route) {
  static constexpr std::string_view kNever[] = {
      "Host",          "Authorization",    "Proxy-Authorization", "Cookie",
      "Set-Cookie",    "Content-Type",     "Content-Encoding",    "Content-Range",
      "Max-Forwards",  "X-Request-Id",
  };
  if (name.empty() || is_hop_by_hop(name)) return false;
  for (std::string_view n : kNever) {
    if (ieq(n, name)) return false;
  }
  if (istarts_with(name, "X-Forwarded-") || istarts_with(name, "webhook-")) return false;
  if (route.auth) {
    const AuthConfig& a = *route.auth;
    switch (a.type) {
      case AuthType::Basic:
      case AuthType::Bearer:
        break;  // Authorization: listed above
      case AuthType::Header:
        if (ieq(name, a.name)) return false;
        break;
      case AuthType::Hmac:
        if (ieq(name, a.header)) return false;
        break;
      case AuthType::StandardWebhooks:
        break;  // webhook-*: excluded above
    }
  }
  return true;
}

std::string map_request_target(const RouteConfig& route, const Url& target,
                               std::string_view remainder, std::string_view request_query) {
  std::string_view path = target.path;
  std::string_view rest;
  if (route.prefix) {
    rest = remainder;
    if (!rest.empty() && rest.front() == '/') rest.remove_prefix(1);
    if (!rest.empty() && !path.empty() && path.back() == '/') path.remove_suffix(1);
  }
  const std::string_view tq = target.query;
  std::string out;
  out.reserve(path.size() + 1 + rest.size() + 2 + tq.size() + request_query.size());
  out.append(path);
  if (!rest.empty()) {
    out.push_back('/');
    out.append(rest);
  }
  if (out.empty()) out.push_back('/');  // Url::path starts with "/"; stay well-formed regardless
  if (!tq.empty() || !request_query.empty()) {
    out.push_back('?');
    out.append(tq);
    if (!tq.empty() && !request_query.empty()) out.push_back('&');
    out.append(request_query);
  }
  return out;
}

void build_outbound_head(const OutboundInput& in, std::string& out) {
  const RequestHead& h = *in.head;
  const RouteConfig& route = *in.route;
  const TargetConfig* target = in.target;
  const Rules rules(route.request_headers, target != nullptr ? &target->headers : nullptr);
  const ConnectionTokens conn(h.fields);

  auto stripped = [&in](std::string_view name) {
    for (std::string_view s : in.strip_names) {
      if (ieq(s, name)) return true;
    }
    return false;
  };

  // The received Host (the first Host field; the parser guarantees at most one for HTTP/1.1).
  std::string_view recv_host;
  bool has_recv_host = false;
  size_t fields_bytes = 0;
  for (const HeaderField& f : h.fields) {
    fields_bytes += f.name.size() + f.value.size() + 4;
    if (!has_recv_host && ieq(f.name, kHost)) {
      recv_host = f.value;
      has_recv_host = true;
    }
  }
  if (!has_recv_host && h.has_host) {
    recv_host = h.host;
    has_recv_host = true;
  }

  // Host: the target's authority, or the received value with preserve_host and in echo mode.
  // Choice: preserve_host without a received Host (HTTP/1.0) sends the target's authority (an
  // HTTP/1.1 request needs one); echo without a received Host shows none.
  std::string_view host_value;
  bool host_emit = rules.of(kHost) != Rule::Set;
  if (target != nullptr && (!target->preserve_host || !has_recv_host)) {
    host_value = target->url.authority;
  } else if (has_recv_host) {
    host_value = recv_host;
  } else {
    host_emit = false;
  }

  // X-Forwarded-For: the received lines the sender did not mark hop-by-hop, combined, plus the
  // client address. Omitted when a rule removes or sets it, or when there is nothing to say.
  const bool xff_rule_keep = rules.of(kXff) == Rule::Keep;
  auto xff_kept = [&](const HeaderField& f) {
    return ieq(f.name, kXff) && !conn.contains(f.name) && !stripped(f.name);
  };
  bool xff_emit = xff_rule_keep && !in.client_addr.empty();
  for (size_t i = 0; xff_rule_keep && !xff_emit && i < h.fields.size(); ++i) {
    xff_emit = !h.fields[i].value.empty() && xff_kept(h.fields[i]);
  }
  auto put_xff = [&](StringWriter& w, size_t from) {
    w.put(kXff);
    w.put(": ");
    bool first = true;
    for (size_t i = from; i < h.fields.size(); ++i) {
      const HeaderField& f = h.fields[i];
      if (f.value.empty() || !xff_kept(f)) continue;
      if (!first) w.put(", ");
      w.put(f.value);
      first = false;
    }
    if (!in.client_addr.empty()) {
      if (!first) w.put(", ");
      w.put(in.client_addr);
    }
    w.put("\r\n");
  };

  const size_t estimate = h.method.size() + in.request_target.size() + 12 + fields_bytes +
                          rules.set_bytes() + host_value.size() + in.client_addr.size() +
                          2 * recv_host.size() + in.request_id.size() + 160;
  size_t trailer_bytes = 0;
  const bool merge = route.trailers == TrailerMode::Merge && in.trailers != nullptr;
  if (merge) {
    for (const HeaderField& t : *in.trailers) trailer_bytes += t.name.size() + t.value.size() + 4;
  }
  // The estimate is an upper bound in practice (a received X-Forwarded-For is counted once in
  // fields_bytes however it is combined); StringWriter grows if it is not.
  StringWriter w(out, estimate + trailer_bytes);

  w.put(h.method);
  w.put(' ');
  w.put(in.request_target);
  w.put(" HTTP/1.1\r\n");

  bool host_done = false;
  bool xff_done = false;
  bool rid_done = false;
  for (size_t i = 0; i < h.fields.size(); ++i) {
    const HeaderField& f = h.fields[i];
    switch (classify(f.name)) {
      case Known::Host:
        if (host_emit && !host_done) put_field(w, kHost, host_value);
        host_done = true;
        continue;
      case Known::Xff:
        if (xff_emit && !xff_done && xff_kept(f)) {
          put_xff(w, i);
          xff_done = true;
        }
        continue;
      case Known::Xfp:
      case Known::Xfh:
      case Known::HopByHop:
        continue;  // X-Forwarded-Proto/-Host are replaced below
      case Known::RequestId:
        // The sender's id stays in place when it is the one used; when the caller generated
        // one (the received value was unusable, e.g. empty) only the generated one is sent.
        // Of several received fields only the one used goes on: the target gets the id the
        // sender is told.
        if (in.request_id_generated || rid_done || f.value != in.request_id) continue;
        rid_done = true;
        break;
      case Known::Other:
        break;
    }
    if (conn.contains(f.name) || stripped(f.name)) continue;
    if (rules.of(f.name) != Rule::Keep) continue;
    put_field(w, f.name, f.value);
  }
  if (host_emit && !host_done) put_field(w, kHost, host_value);
  if (xff_emit && !xff_done) put_xff(w, 0);

  rules.for_each_set([&w](std::string_view name, std::string_view value) {
    put_field(w, name, value);
  });

  if (merge) {
    for (const HeaderField& t : *in.trailers) {
      if (!trailer_mergeable(t.name, route)) continue;
      if (conn.contains(t.name) || stripped(t.name) || rules.of(t.name) != Rule::Keep) continue;
      put_field(w, t.name, t.value);
    }
  }

  if (rules.of(kXfp) == Rule::Keep) put_field(w, kXfp, in.inbound_tls ? "https" : "http");
  if (has_recv_host && rules.of(kXfh) == Rule::Keep) put_field(w, kXfh, recv_host);
  if (in.request_id_generated && !in.request_id.empty() && rules.of(kRequestId) == Rule::Keep) {
    put_field(w, kRequestId, in.request_id);
  }

  if (h.framing != Framing::None || sends_empty_length(h.method)) {
    w.put("Content-Length: ");
    w.decimal(h.framing != Framing::None ? in.body_length : uint64_t{0});
    w.put("\r\n");
  }
  w.put("\r\n");
}

}  // namespace dechunkd
