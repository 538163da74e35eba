# Read by cpack once per generator (CPACK_PROJECT_CONFIG_FILE): picks the components that go
# into that generator's single package, and refuses to package a sanitizer build.
if(CPACK_DECHUNKD_SANITIZED)
  message(FATAL_ERROR "dechunkd: refusing to package a sanitizer or fuzzing build; "
                      "package a release build (cmake --preset release)")
endif()

if(CPACK_GENERATOR STREQUAL "DEB")
  set(CPACK_COMPONENTS_ALL runtime doc config system deb)
elseif(CPACK_GENERATOR STREQUAL "RPM")
  set(CPACK_COMPONENTS_ALL runtime doc config system rpm)
endif()
