# Runs one libFuzzer binary for a bounded time, for the CTest tests fuzz.run.<name>:
#   cmake -DFUZZER=... -DCORPUS=... -DWORK=... -DSECONDS=... [-DDICT=...] -P run_fuzzer.cmake
# WORK is wiped and gets a copy of the seed corpus as the first (writable) corpus directory, so
# new inputs and crash artifacts land in the build tree, not in the repository. Fails (with the
# fuzzer's report) on any crash, leak, timeout or invariant violation.
foreach(v FUZZER CORPUS WORK SECONDS)
  if(NOT DEFINED ${v} OR "${${v}}" STREQUAL "")
    message(FATAL_ERROR "run_fuzzer.cmake: -D${v}=... is required")
  endif()
endforeach()

file(REMOVE_RECURSE "${WORK}")
file(MAKE_DIRECTORY "${WORK}/artifacts")
file(COPY "${CORPUS}/" DESTINATION "${WORK}/corpus")

set(args -seed=1 -max_total_time=${SECONDS} -rss_limit_mb=2048 -timeout=10
         -print_final_stats=1 -artifact_prefix=${WORK}/artifacts/)
if(DEFINED DICT AND NOT "${DICT}" STREQUAL "")
  list(APPEND args -dict=${DICT})
endif()

execute_process(
  COMMAND "${FUZZER}" ${args} "${WORK}/corpus" "${CORPUS}"
  WORKING_DIRECTORY "${WORK}"
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  file(GLOB found "${WORK}/artifacts/*")
  message(FATAL_ERROR "${FUZZER} failed (${rc}); reproducer(s): ${found}\n"
                      "Minimise it (tests/fuzz/README.md) and add it to ${CORPUS}.")
endif()
