// Strict decoders for the credential and signature encodings of SPEC 7 (Basic credentials,
// hmac signatures, Standard Webhooks secrets and signatures). Private to src/auth; pure
// functions, no exceptions, so they are safe on the request path and easy to test.
#pragma once
#include <string>
#include <string_view>

namespace dechunkd::auth_detail {

// Standard base64 (RFC 4648 section 4: A-Z a-z 0-9 + /) with padding: a non-empty input whose
// length is a multiple of 4, '=' only as one or two final characters, no whitespace, no
// URL-safe alphabet. The bits the padding discards are not checked (as in most decoders and in
// the config loader's is_base64, so every secret the loader accepts also decodes here).
// Appends the bytes to *out; false (and *out unspecified) on malformed input.
bool base64_decode(std::string_view in, std::string* out);

// Hex digits in either case, even length, non-empty. Appends the bytes to *out.
bool hex_decode(std::string_view in, std::string* out);

}  // namespace dechunkd::auth_detail
