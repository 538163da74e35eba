// Outbound request-target mapping and the exact outbound head (SPEC 4, 5, 11).
#include <doctest/doctest.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/outbound.hpp"

using namespace dechunkd;

namespace {

// ---------------------------------------------------------------------------------------------
// map_request_target

Url url(std::string path, std::string query = {}) {
  Url u;
  u.host = "t.example";
  u.authority = "t.example";
  u.port = 443;
  u.tls = true;
  u.path = std::move(path);
  u.query = std::move(query);
  return u;
}

RouteConfig prefix_route(std::string prefix) {
  RouteConfig r;
  r.name = "p";
  r.path = std::move(prefix);
  r.prefix = true;
  return r;
}

RouteConfig exact_route(std::string path) {
  RouteConfig r;
  r.name = "e";
  r.path = std::move(path);
  return r;
}

}  // namespace

TEST_CASE("outbound: map_request_target") {
  struct Case {
    bool prefix;
    std::string_view route_path;   // the route's path / path_prefix
    std::string_view target_path;  // Url::path
    std::string_view target_query;
    std::string_view request_path;
    std::string_view request_query;
    std::string_view want;
  } const cases[] = {
      // Exact routes: the target path as is, whatever the request path.
      {false, "/hooks/orders", "/workflows/abc/triggers/manual/paths/invoke",
       "api-version=2016-06-01&sig=XYZ", "/hooks/orders", "",
       "/workflows/abc/triggers/manual/paths/invoke?api-version=2016-06-01&sig=XYZ"},
      {false, "/hooks/orders", "/workflows/abc/invoke", "api-version=2016-06-01&sig=XYZ",
       "/hooks/orders", "event=created&id=7",
       "/workflows/abc/invoke?api-version=2016-06-01&sig=XYZ&event=created&id=7"},
      {false, "/a", "/ingest", "", "/a", "x=1", "/ingest?x=1"},
      {false, "/a", "/ingest", "", "/a", "", "/ingest"},
      {false, "/a", "/", "", "/a", "", "/"},
      {false, "/a", "/", "k=v", "/a", "", "/?k=v"},
      // Prefix without trailing slash.
      {true, "/hooks", "/", "", "/hooks/a/b", "", "/a/b"},
      {true, "/hooks", "/in", "", "/hooks/a", "", "/in/a"},
      {true, "/hooks", "/in/", "", "/hooks/a", "", "/in/a"},
      {true, "/hooks", "/in", "", "/hooks", "", "/in"},
      {true, "/hooks", "/in/", "", "/hooks", "", "/in/"},
      {true, "/hooks", "/in", "", "/hooks/", "", "/in"},    // SPEC 11: target path as is
      {true, "/hooks", "/in/", "", "/hooks/", "", "/in/"},  // SPEC 11: target path as is
      {true, "/hooks", "/", "", "/hooks/", "", "/"},
      {true, "/hooks", "/", "", "/hooks", "", "/"},
      // Prefix with trailing slash.
      {true, "/hooks/", "/in", "", "/hooks/a", "", "/in/a"},
      {true, "/hooks/", "/in/", "", "/hooks/a", "", "/in/a"},
      {true, "/hooks/", "/in", "", "/hooks/", "", "/in"},
      {true, "/hooks/", "/in/", "", "/hooks/", "", "/in/"},
      {true, "/hooks/", "/", "", "/hooks/a/b/", "", "/a/b/"},
      // Double slashes: only one is stripped on each side; inner ones are kept.
      {true, "/hooks", "/in", "", "/hooks//x", "", "/in//x"},
      {true, "/hooks/", "/in", "", "/hooks//x", "", "/in/x"},
      {true, "/hooks/", "/in", "", "/hooks///x", "", "/in//x"},
      {true, "/hooks", "/in//", "", "/hooks/x", "", "/in//x"},
      {true, "/hooks", "/in//", "", "/hooks/", "", "/in//"},
      {true, "/hooks", "/in", "", "/hooks/a//b//", "", "/in/a//b//"},
      {true, "/hooks", "/in", "", "/hooks//", "", "/in//"},
      {true, "/", "/in", "", "/", "", "/in"},
      {true, "/", "/in", "", "/x/y", "", "/in/x/y"},
      {true, "/", "/in/", "", "//x", "", "/in/x"},
      {true, "/", "/in/", "", "///x", "", "/in//x"},
      // Raw bytes: never decoded or re-encoded.
      {true, "/hooks", "/in", "", "/hooks/a%2Fb/%7e", "", "/in/a%2Fb/%7e"},
      // Queries.
      {true, "/hooks", "/in", "sig=XYZ", "/hooks/a", "", "/in/a?sig=XYZ"},
      {true, "/hooks", "/in", "sig=XYZ", "/hooks/a", "b=1&c=2", "/in/a?sig=XYZ&b=1&c=2"},
      {true, "/hooks", "/in", "", "/hooks/a", "b=1", "/in/a?b=1"},
      {true, "/hooks", "/in/", "sig=a%26b==", "/hooks", "q=%3F", "/in/?sig=a%26b==&q=%3F"},
      {true, "/hooks", "/in", "&sig=&", "/hooks/a", "&", "/in/a?&sig=&&&"},
  };
  for (const Case& tc : cases) {
    CAPTURE(tc.route_path);
    CAPTURE(tc.target_path);
    CAPTURE(tc.request_path);
    CAPTURE(tc.request_query);
    const RouteConfig r = tc.prefix ? prefix_route(std::string(tc.route_path))
                                    : exact_route(std::string(tc.route_path));
    const std::string_view rem =
        tc.prefix ? tc.request_path.substr(tc.route_path.size()) : std::string_view("/ignored");
    const std::string got = map_request_target(
        r, url(std::string(tc.target_path), std::string(tc.target_query)), rem, tc.request_query);
    CHECK(got == tc.want);
  }
}

// ---------------------------------------------------------------------------------------------
// build_outbound_head

namespace {

TargetConfig target(std::string authority = "flow.example.com",
                    std::vector<std::pair<std::string, std::string>> set = {},
                    std::vector<std::string> remove = {}, bool preserve_host = false) {
  TargetConfig t;
  t.url = url("/in");
  t.url.authority = std::move(authority);
  t.headers.set = std::move(set);
  t.headers.remove = std::move(remove);
  t.preserve_host = preserve_host;
  return t;
}

RouteConfig route(std::vector<std::pair<std::string, std::string>> set = {},
                  std::vector<std::string> remove = {},
                  TrailerMode trailers = TrailerMode::Drop) {
  RouteConfig r;
  r.name = "r";
  r.path = "/hooks";
  r.request_headers.set = std::move(set);
  r.request_headers.remove = std::move(remove);
  r.trailers = trailers;
  return r;
}

struct HeadCase {
  const char* name;
  std::string_view method = "POST";
  std::vector<HeaderField> fields{};
  Framing framing = Framing::ContentLength;
  uint64_t body_length = 5;
  RouteConfig route_cfg = route();
  std::optional<TargetConfig> target_cfg = target();  // nullopt: echo mode
  std::string_view request_target = "/in";
  std::string_view client = "203.0.113.7";
  bool tls = false;
  std::string_view request_id = "rid-1";
  bool generated = true;
  std::vector<HeaderField> trailers{};
  std::vector<std::string_view> strip{};
  std::string_view want{};
};

std::string build(const HeadCase& tc, std::string prefix = {}) {
  RequestHead h;
  h.method = tc.method;
  h.target = tc.request_target;
  h.fields = tc.fields;
  h.framing = tc.framing;
  for (const HeaderField& f : tc.fields) {
    if (f.name.size() == 4 && (f.name == "Host" || f.name == "host" || f.name == "HOST")) {
      h.host = f.value;
      h.has_host = true;
    }
  }
  OutboundInput in;
  in.head = &h;
  in.route = &tc.route_cfg;
  in.target = tc.target_cfg ? &*tc.target_cfg : nullptr;
  in.request_target = tc.request_target;
  in.client_addr = tc.client;
  in.inbound_tls = tc.tls;
  in.request_id = tc.request_id;
  in.request_id_generated = tc.generated;
  in.trailers = &tc.trailers;
  in.body_length = tc.body_length;
  in.strip_names = tc.strip;
  std::string out = std::move(prefix);
  build_outbound_head(in, out);
  return out;
}

const std::vector<HeadCase>& head_cases() {
  static const std::vector<HeadCase> cases = [] {
    std::vector<HeadCase> v;
    v.push_back({
        .name = "basic: Host replaced in place, XFF appended, then proto/host/id/CL",
        .fields = {{"Host", "gw.example:8080"},
                   {"User-Agent", "epilot/1"},
                   {"Content-Type", "application/json"},
                   {"Content-Length", "5"}},
        .want = "POST /in HTTP/1.1\r\n"
                "Host: flow.example.com\r\n"
                "User-Agent: epilot/1\r\n"
                "Content-Type: application/json\r\n"
                "X-Forwarded-For: 203.0.113.7\r\n"
                "X-Forwarded-Proto: http\r\n"
                "X-Forwarded-Host: gw.example:8080\r\n"
                "X-Request-Id: rid-1\r\n"
                "Content-Length: 5\r\n"
                "\r\n",
    });
    v.push_back({
        .name = "Host keeps its received position; names keep their case",
        .fields = {{"user-agent", "x"}, {"HOST", "gw"}, {"accept", "*/*"}},
        .framing = Framing::None,
        .want = "POST /in HTTP/1.1\r\n"
                "user-agent: x\r\n"
                "Host: flow.example.com\r\n"
                "accept: */*\r\n"
                "X-Forwarded-For: 203.0.113.7\r\n"
                "X-Forwarded-Proto: http\r\n"
                "X-Forwarded-Host: gw\r\n"
                "X-Request-Id: rid-1\r\n"
                "Content-Length: 0\r\n"
                "\r\n",
    });
    v.push_back({
        .name = "no Host received (HTTP/1.0): Host then XFF appended, no X-Forwarded-Host",
        .method = "GET",
        .fields = {{"A", "1"}},
        .framing = Framing::None,
        .target_cfg = target("10.0.0.5:8000"),
        .tls = true,
        .want = "GET /in HTTP/1.1\r\n"
                "A: 1\r\n"
                "Host: 10.0.0.5:8000\r\n"
                "X-Forwarded-For: 203.0.113.7\r\n"
                "X-Forwarded-Proto: https\r\n"
                "X-Request-Id: rid-1\r\n"
                "\r\n",
    });
    v.push_back({
        .name = "XFF lines combined at the first one's position, client appended",
        .fields = {{"X-Forwarded-For", "198.51.100.1"},
                   {"Host", "gw"},
                   {"x-forwarded-for", "10.1.1.1, 10.2.2.2"},
                   {"B", "2"},
                   {"X-FORWARDED-FOR", ""},
                   {"X-Forwarded-For", "10.3.3.3"}},
        .client = "2001:db8::7",
        .want = "POST /in HTTP/1.1\r\n"
                "X-Forwarded-For: 198.51.100.1, 10.1.1.1, 10.2.2.2, 10.3.3.3, 2001:db8::7\r\n"
                "Host: flow.example.com\r\n"
                "B: 2\r\n"
                "X-Forwarded-Proto: http\r\n"
                "X-Forwarded-Host: gw\r\n"
                "X-Request-Id: rid-1\r\n"
                "Content-Length: 5\r\n"
                "\r\n",
    });
    v.push_back({
        .name = "hop-by-hop fields removed; chunked becomes Content-Length",
        .fields = {{"Host", "gw"},
                   {"Connection", "keep-alive"},
                   {"Keep-Alive", "timeout=5"},
                   {"Proxy-Connection", "keep-alive"},
                   {"TE", "trailers"},
                   {"Trailer", "X-Sig"},
                   {"Transfer-Encoding", "chunked"},
                   {"Upgrade", "h2c"},
                   {"Expect", "100-continue"},
                   {"content-length", "11"},
                   {"X-Keep", "yes"}},
        .framing = Framing::Chunked,
        .body_length = 11,
        .want = "POST /in HTTP/1.1\r\n"
                "Host: flow.example.com\r\n"
                "X-Keep: yes\r\n"
                "X-Forwarded-For: 203.0.113.7\r\n"
                "X-Forwarded-Proto: http\r\n"
                "X-Forwarded-Host: gw\r\n"
                "X-Request-Id: rid-1\r\n"
                "Content-Length: 11\r\n"
                "\r\n",
    });
    v.push_back({
        .name = "fields listed in Connection are removed (case-insensitive, any line)",
        .fields = {{"Host", "gw"},
                   {"Connection", "close, X-Foo"},
                   {"x-foo", "1"},
                   {"X-Bar", "2"},
                   {"connection", " x-BAR ,, "},
                   {"X-Baz", "3"},
                   {"X-Foo", "4"}},
        .want = "POST /in HTTP/1.1\r\n"
                "Host: flow.example.com\r\n"
                "X-Baz: 3\r\n"
                "X-Forwarded-For: 203.0.113.7\r\n"
                "X-Forwarded-Proto: http\r\n"
                "X-Forwarded-Host: gw\r\n"
                "X-Request-Id: rid-1\r\n"
                "Content-Length: 5\r\n"
                "\r\n",
    });
    v.push_back({
        .name = "many Connection tokens (beyond the fixed array) are all honoured",
        .fields = {{"Host", "gw"},
                   {"Connection", "a1, a2, a3, a4, a5, a6, a7, a8, a9, a10"},
                   {"Connection", "b1, b2, b3, b4, b5, b6, b7, b8, b9, X-Last"},
                   {"a1", "x"},
                   {"X-Last", "x"},
                   {"b5", "x"},
                   {"X-Stay", "y"}},
        .want = "POST /in HTTP/1.1\r\n"
                "Host: flow.example.com\r\n"
                "X-Stay: y\r\n"
                "X-Forwarded-For: 203.0.113.7\r\n"
                "X-Forwarded-Proto: http\r\n"
                "X-Forwarded-Host: gw\r\n"
                "X-Request-Id: rid-1\r\n"
                "Content-Length: 5\r\n"
                "\r\n",
    });
    v.push_back({
        .name = "route and target remove lists, case-insensitive",
        .fields = {{"Host", "gw"},
                   {"Cookie", "a=1"},
                   {"X-Internal", "1"},
                   {"COOKIE", "b=2"},
                   {"x-internal", "2"},
                   {"X-Other", "3"}},
        .route_cfg = route({}, {"cookie"}),
        .target_cfg = target("flow.example.com", {}, {"X-INTERNAL"}),
        .want = "POST /in HTTP/1.1\r\n"
                "Host: flow.example.com\r\n"
                "X-Other: 3\r\n"
                "X-Forwarded-For: 203.0.113.7\r\n"
                "X-Forwarded-Proto: http\r\n"
                "X-Forwarded-Host: gw\r\n"
                "X-Request-Id: rid-1\r\n"
                "Content-Length: 5\r\n"
                "\r\n",
    });
    v.push_back({
        .name = "set removes every received field of that name, appended in config order",
        .fields = {{"x-api-key", "evil"},
                   {"Host", "gw"},
                   {"X-API-KEY", "evil2"},
                   {"X-Tenant", "t0"},
                   {"Accept", "*/*"}},
        .route_cfg = route({{"X-Api-Key", "k1"}, {"X-Tenant", "t1"}}),
        .target_cfg = target("flow.example.com", {{"X-Target", "v"}}),
        .want = "POST /in HTTP/1.1\r\n"
                "Host: flow.example.com\r\n"
                "Accept: */*\r\n"
                "X-Forwarded-For: 203.0.113.7\r\n"
                "X-Api-Key: k1\r\n"
                "X-Tenant: t1\r\n"
                "X-Target: v\r\n"
                "X-Forwarded-Proto: http\r\n"
                "X-Forwarded-Host: gw\r\n"
                "X-Request-Id: rid-1\r\n"
                "Content-Length: 5\r\n"
                "\r\n",
    });
    v.push_back({
        .name = "target set wins over a route set of the same name, at the target's position",
        .fields = {{"Host", "gw"}, {"X-Env", "sender"}},
        .route_cfg = route({{"X-Env", "route"}, {"X-A", "a"}}),
        .target_cfg = target("flow.example.com", {{"X-B", "b"}, {"x-env", "target"}}),
        .want = "POST /in HTTP/1.1\r\n"
                "Host: flow.example.com\r\n"
                "X-Forwarded-For: 203.0.113.7\r\n"
                "X-A: a\r\n"
                "X-B: b\r\n"
                "x-env: target\r\n"
                "X-Forwarded-Proto: http\r\n"
                "X-Forwarded-Host: gw\r\n"
                "X-Request-Id: rid-1\r\n"
                "Content-Length: 5\r\n"
                "\r\n",
    });
    v.push_back({
        .name = "target remove drops a route set; target set beats a route remove",
        .fields = {{"Host", "gw"}, {"X-A", "sender-a"}, {"X-B", "sender-b"}},
        .route_cfg = route({{"X-A", "route-a"}}, {"X-B"}),
        .target_cfg = target("flow.example.com", {{"X-B", "target-b"}}, {"x-a"}),
        .want = "POST /in HTTP/1.1\r\n"
                "Host: flow.example.com\r\n"
                "X-Forwarded-For: 203.0.113.7\r\n"
                "X-B: target-b\r\n"
                "X-Forwarded-Proto: http\r\n"
                "X-Forwarded-Host: gw\r\n"
                "X-Request-Id: rid-1\r\n"
                "Content-Length: 5\r\n"
                "\r\n",
    });
    v.push_back({
        .name = "within one block set beats remove; later duplicate set (other case) wins",
        .fields = {{"Host", "gw"}, {"X-A", "sender"}},
        .route_cfg = route({{"X-A", "first"}, {"X-C", "c"}, {"x-a", "second"}}, {"X-A"}),
        .want = "POST /in HTTP/1.1\r\n"
                "Host: flow.example.com\r\n"
                "X-Forwarded-For: 203.0.113.7\r\n"
                "X-C: c\r\n"
                "x-a: second\r\n"
                "X-Forwarded-Proto: http\r\n"
                "X-Forwarded-Host: gw\r\n"
                "X-Request-Id: rid-1\r\n"
                "Content-Length: 5\r\n"
                "\r\n",
    });
    v.push_back({
        .name = "credentials checked by auth are stripped; a set Authorization is sent",
        .fields = {{"Host", "gw"},
                   {"authorization", "Basic dTpw"},
                   {"X-Api-Key", "secret"},
                   {"webhook-signature", "v1,abc"}},
        .target_cfg = target("flow.example.com", {{"Authorization", "Bearer target-token"}}),
        .strip = {"Authorization", "x-api-key"},
        .want = "POST /in HTTP/1.1\r\n"
                "Host: flow.example.com\r\n"
                "webhook-signature: v1,abc\r\n"
                "X-Forwarded-For: 203.0.113.7\r\n"
                "Authorization: Bearer target-token\r\n"
                "X-Forwarded-Proto: http\r\n"
                "X-Forwarded-Host: gw\r\n"
                "X-Request-Id: rid-1\r\n"
                "Content-Length: 5\r\n"
                "\r\n",
    });
    v.push_back({
        .name = "preserve_host keeps the received Host value and position",
        .fields = {{"A", "1"}, {"host", "Hooks.Example.com:8443"}},
        .target_cfg = target("flow.example.com", {}, {}, true),
        .want = "POST /in HTTP/1.1\r\n"
                "A: 1\r\n"
                "Host: Hooks.Example.com:8443\r\n"
                "X-Forwarded-For: 203.0.113.7\r\n"
                "X-Forwarded-Proto: http\r\n"
                "X-Forwarded-Host: Hooks.Example.com:8443\r\n"
                "X-Request-Id: rid-1\r\n"
                "Content-Length: 5\r\n"
                "\r\n",
    });
    v.push_back({
        .name = "preserve_host without a received Host falls back to the target authority",
        .method = "GET",
        .fields = {},
        .framing = Framing::None,
        .target_cfg = target("[2001:db8::5]:8443", {}, {}, true),
        .want = "GET /in HTTP/1.1\r\n"
                "Host: [2001:db8::5]:8443\r\n"
                "X-Forwarded-For: 203.0.113.7\r\n"
                "X-Forwarded-Proto: http\r\n"
                "X-Request-Id: rid-1\r\n"
                "\r\n",
    });
    v.push_back({
        .name = "echo mode: received Host, route rules, incoming request-target",
        .fields = {{"Host", "gw.example"},
                   {"Transfer-Encoding", "chunked"},
                   {"Cookie", "c"},
                   {"X-Request-Id", "sender-id"},
                   {"X-Forwarded-Proto", "https"}},
        .framing = Framing::Chunked,
        .body_length = 0,
        .route_cfg = route({{"X-Set", "s"}}, {"Cookie"}),
        .target_cfg = std::nullopt,
        .request_target = "/debug/x?y=1",
        .tls = true,
        .request_id = "sender-id",
        .generated = false,
        .want = "POST /debug/x?y=1 HTTP/1.1\r\n"
                "Host: gw.example\r\n"
                "X-Request-Id: sender-id\r\n"
                "X-Forwarded-For: 203.0.113.7\r\n"
                "X-Set: s\r\n"
                "X-Forwarded-Proto: https\r\n"
                "X-Forwarded-Host: gw.example\r\n"
                "Content-Length: 0\r\n"
                "\r\n",
    });
    v.push_back({
        .name = "echo mode without a received Host shows none",
        .method = "GET",
        .fields = {{"A", "1"}},
        .framing = Framing::None,
        .target_cfg = std::nullopt,
        .request_target = "/debug/",
        .want = "GET /debug/ HTTP/1.1\r\n"
                "A: 1\r\n"
                "X-Forwarded-For: 203.0.113.7\r\n"
                "X-Forwarded-Proto: http\r\n"
                "X-Request-Id: rid-1\r\n"
                "\r\n",
    });
    v.push_back({
        .name = "received X-Request-Id stays in place when not generated",
        .fields = {{"X-Request-Id", "abc"}, {"Host", "gw"}},
        .request_id = "abc",
        .generated = false,
        .want = "POST /in HTTP/1.1\r\n"
                "X-Request-Id: abc\r\n"
                "Host: flow.example.com\r\n"
                "X-Forwarded-For: 203.0.113.7\r\n"
                "X-Forwarded-Proto: http\r\n"
                "X-Forwarded-Host: gw\r\n"
                "Content-Length: 5\r\n"
                "\r\n",
    });
    v.push_back({
        .name = "several received X-Request-Id fields: only the one used is forwarded, in place",
        .fields = {{"X-Request-Id", "bad\x01id"}, {"Host", "gw"}, {"X-Request-Id", "abc"},
                   {"x-request-id", "second"}},
        .request_id = "abc",
        .generated = false,
        .want = "POST /in HTTP/1.1\r\n"
                "Host: flow.example.com\r\n"
                "X-Request-Id: abc\r\n"
                "X-Forwarded-For: 203.0.113.7\r\n"
                "X-Forwarded-Proto: http\r\n"
                "X-Forwarded-Host: gw\r\n"
                "Content-Length: 5\r\n"
                "\r\n",
    });
    v.push_back({
        .name = "generated id (received one unusable, e.g. empty): only the generated one",
        .fields = {{"x-request-id", ""}, {"Host", "gw"}},
        .request_id = "gen-9",
        .generated = true,
        .want = "POST /in HTTP/1.1\r\n"
                "Host: flow.example.com\r\n"
                "X-Forwarded-For: 203.0.113.7\r\n"
                "X-Forwarded-Proto: http\r\n"
                "X-Forwarded-Host: gw\r\n"
                "X-Request-Id: gen-9\r\n"
                "Content-Length: 5\r\n"
                "\r\n",
    });
    v.push_back({
        .name = "received X-Forwarded-Proto/-Host are replaced",
        .fields = {{"X-Forwarded-Host", "spoof"},
                   {"Host", "gw:80"},
                   {"x-forwarded-proto", "https"},
                   {"X-Forwarded-Port", "443"}},
        .want = "POST /in HTTP/1.1\r\n"
                "Host: flow.example.com\r\n"
                "X-Forwarded-Port: 443\r\n"
                "X-Forwarded-For: 203.0.113.7\r\n"
                "X-Forwarded-Proto: http\r\n"
                "X-Forwarded-Host: gw:80\r\n"
                "X-Request-Id: rid-1\r\n"
                "Content-Length: 5\r\n"
                "\r\n",
    });
    v.push_back({
        .name = "set of gateway fields wins: Host and X-Forwarded-Proto at set position",
        .fields = {{"Host", "gw"}, {"A", "1"}},
        .route_cfg = route({{"X-Forwarded-Proto", "https"}, {"Host", "internal.example"}}),
        .want = "POST /in HTTP/1.1\r\n"
                "A: 1\r\n"
                "X-Forwarded-For: 203.0.113.7\r\n"
                "X-Forwarded-Proto: https\r\n"
                "Host: internal.example\r\n"
                "X-Forwarded-Host: gw\r\n"
                "X-Request-Id: rid-1\r\n"
                "Content-Length: 5\r\n"
                "\r\n",
    });
    v.push_back({
        .name = "remove suppresses X-Forwarded-*/X-Request-Id but never Host",
        .fields = {{"Host", "gw"}, {"X-Forwarded-For", "10.0.0.1"}, {"A", "1"}},
        .route_cfg = route({}, {"x-forwarded-for", "Host", "X-Forwarded-Host"}),
        .target_cfg = target("flow.example.com", {}, {"X-Forwarded-Proto", "X-Request-Id"}),
        .want = "POST /in HTTP/1.1\r\n"
                "Host: flow.example.com\r\n"
                "A: 1\r\n"
                "Content-Length: 5\r\n"
                "\r\n",
    });
    v.push_back({
        .name = "X-Forwarded-For named in Connection: received dropped, client appended",
        .fields = {{"X-Forwarded-For", "6.6.6.6"}, {"Host", "gw"}, {"Connection", "X-Forwarded-For"}},
        .want = "POST /in HTTP/1.1\r\n"
                "Host: flow.example.com\r\n"
                "X-Forwarded-For: 203.0.113.7\r\n"
                "X-Forwarded-Proto: http\r\n"
                "X-Forwarded-Host: gw\r\n"
                "X-Request-Id: rid-1\r\n"
                "Content-Length: 5\r\n"
                "\r\n",
    });
    v.push_back({
        .name = "set of framing fields is ignored; never Transfer-Encoding or Expect",
        .fields = {{"Host", "gw"}},
        .route_cfg = route({{"Content-Length", "999"},
                            {"Transfer-Encoding", "chunked"},
                            {"Expect", "100-continue"},
                            {"Connection", "close"}}),
        .want = "POST /in HTTP/1.1\r\n"
                "Host: flow.example.com\r\n"
                "X-Forwarded-For: 203.0.113.7\r\n"
                "X-Forwarded-Proto: http\r\n"
                "X-Forwarded-Host: gw\r\n"
                "X-Request-Id: rid-1\r\n"
                "Content-Length: 5\r\n"
                "\r\n",
    });
    v.push_back({
        .name = "target set of X-Forwarded-For / X-Request-Id replaces received and generated",
        .fields = {{"X-Request-Id", "sender"}, {"Host", "gw"}, {"X-Forwarded-For", "10.0.0.1"}},
        .target_cfg = target("flow.example.com",
                             {{"x-forwarded-for", "192.0.2.1"}, {"X-Request-Id", "fixed"}}),
        .want = "POST /in HTTP/1.1\r\n"
                "Host: flow.example.com\r\n"
                "x-forwarded-for: 192.0.2.1\r\n"
                "X-Request-Id: fixed\r\n"
                "X-Forwarded-Proto: http\r\n"
                "X-Forwarded-Host: gw\r\n"
                "Content-Length: 5\r\n"
                "\r\n",
    });
    v.push_back({
        .name = "GET without body: no Content-Length; query kept in request-target",
        .method = "GET",
        .fields = {{"Host", "gw"}, {"Accept", "application/json"}},
        .framing = Framing::None,
        .body_length = 0,
        .request_target = "/in?sig=XYZ&x=1",
        .generated = false,
        .want = "GET /in?sig=XYZ&x=1 HTTP/1.1\r\n"
                "Host: flow.example.com\r\n"
                "Accept: application/json\r\n"
                "X-Forwarded-For: 203.0.113.7\r\n"
                "X-Forwarded-Proto: http\r\n"
                "X-Forwarded-Host: gw\r\n"
                "\r\n",
    });
    v.push_back({
        .name = "no client address and no received XFF: no XFF line",
        .fields = {{"Host", "gw"}, {"X-Forwarded-For", ""}},
        .client = "",
        .want = "POST /in HTTP/1.1\r\n"
                "Host: flow.example.com\r\n"
                "X-Forwarded-Proto: http\r\n"
                "X-Forwarded-Host: gw\r\n"
                "X-Request-Id: rid-1\r\n"
                "Content-Length: 5\r\n"
                "\r\n",
    });
    return v;
  }();
  return cases;
}

}  // namespace

TEST_CASE("outbound: build_outbound_head exact bytes") {
  for (const HeadCase& tc : head_cases()) {
    CAPTURE(tc.name);
    CHECK(build(tc) == tc.want);
  }
}

TEST_CASE("outbound: appends to what the caller already has") {
  const HeadCase& tc = head_cases().front();
  CHECK(build(tc, "PREFIX") == std::string("PREFIX") + std::string(tc.want));
}

TEST_CASE("outbound: Content-Length by framing and method") {
  struct {
    std::string_view method;
    Framing framing;
    uint64_t body_length;
    std::string_view want_cl;  // "" = no Content-Length line
  } const cases[] = {
      {"GET", Framing::None, 0, ""},
      {"HEAD", Framing::None, 0, ""},
      {"DELETE", Framing::None, 0, ""},
      {"OPTIONS", Framing::None, 0, ""},
      {"POST", Framing::None, 0, "Content-Length: 0\r\n"},
      {"PUT", Framing::None, 0, "Content-Length: 0\r\n"},
      {"PATCH", Framing::None, 0, "Content-Length: 0\r\n"},
      {"post", Framing::None, 0, ""},  // methods are case-sensitive
      {"POST", Framing::Chunked, 0, "Content-Length: 0\r\n"},
      {"GET", Framing::Chunked, 3, "Content-Length: 3\r\n"},
      {"DELETE", Framing::ContentLength, 0, "Content-Length: 0\r\n"},
      {"POST", Framing::ContentLength, 104857600, "Content-Length: 104857600\r\n"},
      {"POST", Framing::Chunked, 18446744073709551615ULL,
       "Content-Length: 18446744073709551615\r\n"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.method);
    CAPTURE(static_cast<int>(c.framing));
    HeadCase tc{.name = "cl", .fields = {}};
    tc.method = c.method;
    tc.framing = c.framing;
    tc.body_length = c.body_length;
    tc.client = "";
    tc.generated = false;
    tc.target_cfg = target("t");
    const std::string want = std::string(c.method) +
                             " /in HTTP/1.1\r\nHost: t\r\nX-Forwarded-Proto: http\r\n" +
                             std::string(c.want_cl) + "\r\n";
    CHECK(build(tc) == want);
  }
}

TEST_CASE("outbound: trailers merge filtering and position") {
  RouteConfig r = route({{"X-Set", "s"}, {"X-Dup", "route"}}, {"X-Removed"}, TrailerMode::Merge);
  AuthConfig a;
  a.type = AuthType::Hmac;
  a.header = "X-Signature";
  r.auth = a;
  HeadCase tc{
      .name = "merge",
      .fields = {{"Host", "gw"}, {"Connection", "X-Hop"}, {"X-Checksum", "in-head"}},
      .framing = Framing::Chunked,
      .body_length = 9,
      .route_cfg = r,
      .trailers = {{"X-Checksum", "abc"},
                   {"x-signature", "sig"},
                   {"Content-Type", "text/plain"},
                   {"Content-Length", "9"},
                   {"Transfer-Encoding", "chunked"},
                   {"Host", "evil"},
                   {"Authorization", "Bearer x"},
                   {"Proxy-Authorization", "x"},
                   {"Cookie", "x"},
                   {"Set-Cookie", "x"},
                   {"Content-Encoding", "gzip"},
                   {"Content-Range", "bytes 0-1/2"},
                   {"Expect", "100-continue"},
                   {"Max-Forwards", "1"},
                   {"X-Forwarded-For", "1.2.3.4"},
                   {"x-forwarded-anything", "x"},
                   {"X-Request-Id", "x"},
                   {"webhook-id", "x"},
                   {"Webhook-Signature", "x"},
                   {"Connection", "close"},
                   {"Keep-Alive", "x"},
                   {"TE", "x"},
                   {"Trailer", "x"},
                   {"Upgrade", "x"},
                   {"Proxy-Connection", "x"},
                   {"X-Hop", "listed in Connection"},
                   {"X-Removed", "x"},
                   {"x-dup", "trailer"},
                   {"X-Amz-Meta", "z"}},
      .want = "POST /in HTTP/1.1\r\n"
              "Host: flow.example.com\r\n"
              "X-Checksum: in-head\r\n"
              "X-Forwarded-For: 203.0.113.7\r\n"
              "X-Set: s\r\n"
              "X-Dup: route\r\n"
              "X-Checksum: abc\r\n"
              "X-Amz-Meta: z\r\n"
              "X-Forwarded-Proto: http\r\n"
              "X-Forwarded-Host: gw\r\n"
              "X-Request-Id: rid-1\r\n"
              "Content-Length: 9\r\n"
              "\r\n",
  };
  CHECK(build(tc) == tc.want);

  // trailers: drop (the default) forwards none of them.
  tc.route_cfg.trailers = TrailerMode::Drop;
  CHECK(build(tc) ==
        "POST /in HTTP/1.1\r\n"
        "Host: flow.example.com\r\n"
        "X-Checksum: in-head\r\n"
        "X-Forwarded-For: 203.0.113.7\r\n"
        "X-Set: s\r\n"
        "X-Dup: route\r\n"
        "X-Forwarded-Proto: http\r\n"
        "X-Forwarded-Host: gw\r\n"
        "X-Request-Id: rid-1\r\n"
        "Content-Length: 9\r\n"
        "\r\n");
}

TEST_CASE("outbound: trailer_mergeable and the route's auth header") {
  RouteConfig r;
  CHECK(trailer_mergeable("X-Checksum", r));
  CHECK(trailer_mergeable("X-Forwarded", r));  // not an X-Forwarded-* name
  CHECK(trailer_mergeable("Webhook", r));
  CHECK_FALSE(trailer_mergeable("", r));
  for (std::string_view n :
       {"Connection", "keep-alive", "Proxy-Connection", "te", "Trailer", "TRANSFER-ENCODING",
        "Upgrade", "Expect", "Content-Length", "host", "Authorization", "proxy-authorization",
        "Cookie", "Set-Cookie", "content-type", "Content-Encoding", "Content-Range",
        "Max-Forwards", "X-Forwarded-For", "x-forwarded-proto", "X-Forwarded-Host",
        "X-Forwarded-Port", "x-request-id", "webhook-id", "WEBHOOK-TIMESTAMP",
        "webhook-signature"}) {
    CAPTURE(n);
    CHECK_FALSE(trailer_mergeable(n, r));
  }

  AuthConfig a;
  a.type = AuthType::Header;
  a.name = "X-API-Key";
  r.auth = a;
  CHECK_FALSE(trailer_mergeable("x-api-key", r));
  CHECK(trailer_mergeable("X-Signature", r));

  a.type = AuthType::Hmac;
  a.name.clear();
  a.header = "X-Signature";
  r.auth = a;
  CHECK_FALSE(trailer_mergeable("x-SIGNATURE", r));
  CHECK(trailer_mergeable("x-api-key", r));

  a.type = AuthType::Bearer;
  r.auth = a;
  CHECK_FALSE(trailer_mergeable("Authorization", r));
  CHECK(trailer_mergeable("X-Signature", r));
}

TEST_CASE("outbound: is_hop_by_hop") {
  for (std::string_view n : {"Connection", "KEEP-ALIVE", "proxy-connection", "TE", "Trailer",
                             "transfer-encoding", "Upgrade", "expect", "Content-Length"}) {
    CAPTURE(n);
    CHECK(is_hop_by_hop(n));
  }
  for (std::string_view n : {"Trailers", "Host", "Content-Type", "X-Connection", "TEx", ""}) {
    CAPTURE(n);
    CHECK_FALSE(is_hop_by_hop(n));
  }
}
