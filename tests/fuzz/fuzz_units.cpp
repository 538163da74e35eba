// libFuzzer target for the size and duration grammar (SPEC 3, core/units.hpp): the whole input
// is offered to parse_size and to parse_duration.
// Invariants: whatever parses, its format_* spelling parses back to the same value, that
// spelling is a fixed point (formatting it again gives the same text) and is never longer than
// plain digits; a size's plain decimal digits parse as well. Nothing that parses holds a byte
// outside the grammar (digits followed by one of the units).
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>

#include "core/units.hpp"
#include "fuzz_check.hpp"

using namespace dechunkd;

namespace {

bool grammar_ok(std::string_view s, std::initializer_list<std::string_view> units) {
  size_t i = 0;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
  if (i == 0) return false;
  const std::string_view unit = s.substr(i);
  for (std::string_view u : units) {
    if (unit == u) return true;
  }
  return false;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);

  if (const auto v = parse_size(text)) {
    FUZZ_CHECK(grammar_ok(text, {"", "KiB", "MiB", "GiB", "KB", "MB", "GB"}));
    const std::string f = format_size(*v);
    const auto back = parse_size(f);
    FUZZ_CHECK(back.has_value() && *back == *v);
    FUZZ_CHECK(format_size(*back) == f);
    const std::string digits = std::to_string(*v);
    FUZZ_CHECK(f.size() <= digits.size());
    const auto plain = parse_size(digits);
    FUZZ_CHECK(plain.has_value() && *plain == *v);
  }

  if (const auto d = parse_duration(text)) {
    FUZZ_CHECK(grammar_ok(text, {"ms", "s", "m", "h"}));
    FUZZ_CHECK(d->count() >= 0);
    const std::string f = format_duration(*d);
    const auto back = parse_duration(f);
    FUZZ_CHECK(back.has_value() && *back == *d);
    FUZZ_CHECK(format_duration(*back) == f);
    const auto ms = parse_duration(std::to_string(d->count()) + "ms");
    FUZZ_CHECK(ms.has_value() && *ms == *d);
  }
  return 0;
}
