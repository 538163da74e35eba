// Size and duration grammar (SPEC 3): every edge the config loader relies on.
#include <doctest/doctest.h>

#include "core/units.hpp"

using dechunkd::format_duration;
using dechunkd::format_size;
using dechunkd::Millis;
using dechunkd::parse_duration;
using dechunkd::parse_size;

TEST_CASE("parse_size: plain integers are bytes") {
  CHECK(parse_size("0") == 0u);
  CHECK(parse_size("1") == 1u);
  CHECK(parse_size("1048576") == 1048576u);
  CHECK(parse_size("007") == 7u);
  CHECK(parse_size("18446744073709551615") == UINT64_MAX);
}

TEST_CASE("parse_size: binary and decimal units") {
  CHECK(parse_size("512KiB") == 512u * 1024);
  CHECK(parse_size("10MiB") == 10u * 1024 * 1024);
  CHECK(parse_size("1GiB") == 1024ull * 1024 * 1024);
  CHECK(parse_size("1KB") == 1000u);
  CHECK(parse_size("100MB") == 100'000'000u);
  CHECK(parse_size("2GB") == 2'000'000'000u);
  CHECK(parse_size("0KiB") == 0u);
}

TEST_CASE("parse_size: rejects everything else") {
  for (const char* bad : {"",    " 1",   "1 ",  "10 MiB", "10mib",  "10MIB", "10Mib", "10kb",
                          "10K", "10M",  "10G", "10B",    "10TiB",  "-1",    "+1",    "1.5MiB",
                          "1e6", "0x10", "MiB", "1_000",  "10MiB ", "１"}) {
    CAPTURE(bad);
    CHECK_FALSE(parse_size(bad).has_value());
  }
}

TEST_CASE("parse_size: overflow is an error, not a wrap") {
  CHECK_FALSE(parse_size("18446744073709551616").has_value());
  CHECK_FALSE(parse_size("99999999999999999999999").has_value());
  CHECK(parse_size("17179869183GiB") == 17179869183ull * 1024 * 1024 * 1024);
  CHECK_FALSE(parse_size("17179869184GiB").has_value());
  CHECK_FALSE(parse_size("18446744073709552KB").has_value());
}

TEST_CASE("parse_duration: units") {
  CHECK(parse_duration("250ms") == Millis{250});
  CHECK(parse_duration("10s") == Millis{10'000});
  CHECK(parse_duration("5m") == Millis{300'000});
  CHECK(parse_duration("2h") == Millis{7'200'000});
  CHECK(parse_duration("0s") == Millis{0});
  CHECK(parse_duration("0ms") == Millis{0});
}

TEST_CASE("parse_duration: rejects everything else") {
  for (const char* bad : {"", "0", "10", "1.5s", "-1s", "+1s", "10 s", " 10s", "10S", "10sec",
                          "10min", "1d", "ms", "s", "10Ms", "1h30m", "10s ", "PT10S"}) {
    CAPTURE(bad);
    CHECK_FALSE(parse_duration(bad).has_value());
  }
}

TEST_CASE("parse_duration: overflow of 64-bit milliseconds is an error") {
  CHECK(parse_duration("9223372036854775807ms") == Millis{INT64_MAX});
  CHECK_FALSE(parse_duration("9223372036854775808ms").has_value());
  CHECK(parse_duration("2562047788015h") == Millis{2562047788015LL * 3600'000});
  CHECK_FALSE(parse_duration("2562047788016h").has_value());
  CHECK_FALSE(parse_duration("99999999999999999999s").has_value());
}

TEST_CASE("format_size: shortest exact spelling, round-trips") {
  CHECK(format_size(0) == "0");
  CHECK(format_size(1) == "1");
  CHECK(format_size(1000) == "1KB");
  CHECK(format_size(1024) == "1KiB");
  CHECK(format_size(1536) == "1536");
  CHECK(format_size(10 * 1024 * 1024) == "10MiB");
  CHECK(format_size(1024ull * 1024 * 1024) == "1GiB");
  CHECK(format_size(100'000'000) == "100MB");
  CHECK(format_size(512 * 1024) == "512KiB");
  for (uint64_t v : {uint64_t{0}, uint64_t{1}, uint64_t{999}, uint64_t{1000}, uint64_t{1024},
                     uint64_t{4096}, uint64_t{123456789}, uint64_t{1} << 40, UINT64_MAX}) {
    CAPTURE(v);
    CHECK(parse_size(format_size(v)) == v);
  }
}

TEST_CASE("format_duration: largest exact unit, round-trips") {
  CHECK(format_duration(Millis{0}) == "0s");
  CHECK(format_duration(Millis{1500}) == "1500ms");
  CHECK(format_duration(Millis{30'000}) == "30s");
  CHECK(format_duration(Millis{300'000}) == "5m");
  CHECK(format_duration(Millis{7'200'000}) == "2h");
  CHECK(format_duration(Millis{90'000}) == "90s");
  for (long long v : {1LL, 999LL, 1000LL, 61'000LL, 3'600'000LL, 86'400'000LL}) {
    CAPTURE(v);
    CHECK(parse_duration(format_duration(Millis{v})) == Millis{v});
  }
}
