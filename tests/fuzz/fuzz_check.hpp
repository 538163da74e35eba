// FUZZ_CHECK: the fuzz targets' invariant check. On a violation it names the condition and the
// line on stderr, then traps, so libFuzzer (and the CTest replay) report a crash with a reason
// instead of a bare SIGILL. Used only by tests/fuzz/; never on the daemon's data path.
#pragma once
#include <cstdio>

#define FUZZ_CHECK(cond)                                                                  \
  do {                                                                                    \
    if (!(cond)) {                                                                        \
      std::fprintf(stderr, "%s:%d: invariant violated: %s\n", __FILE__, __LINE__, #cond); \
      std::fflush(stderr);                                                                \
      __builtin_trap();                                                                   \
    }                                                                                     \
  } while (0)
