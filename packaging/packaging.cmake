# Packages: install rules for every packaged file, CPack settings for the .deb and the .rpm,
# and the packaging.* tests. Included at the end of the top-level CMakeLists.txt, after the
# `dechunkd` target (component `runtime`) and the tests directory exist.
#
#   cmake --build build/release --target package        # both packages into build/release/
#   cpack --config build/release/CPackConfig.cmake -G DEB
#
# packaging/README.md explains the layout, the maintainer scripts and the lint results.
include_guard(GLOBAL)
include(GNUInstallDirs)

set(DECHUNKD_PACKAGING_DIR ${CMAKE_CURRENT_LIST_DIR})
set(DECHUNKD_PACKAGING_GEN ${CMAKE_BINARY_DIR}/packaging)

set(DECHUNKD_PACKAGE_MAINTAINER "dechunkd authors <dechunkd@example.org>" CACHE STRING
    "Maintainer of the .deb/.rpm packages (Name <email>)")
set(DECHUNKD_PACKAGE_URL "" CACHE STRING "Homepage of the project (Homepage:/URL: of the packages), if any")
set(DECHUNKD_PACKAGE_RELEASE "1" CACHE STRING "Package revision (the -N after the version)")

set(DECHUNKD_DEB_VERSION "${PROJECT_VERSION}-${DECHUNKD_PACKAGE_RELEASE}")
set(DECHUNKD_RPM_VERSION "${PROJECT_VERSION}-${DECHUNKD_PACKAGE_RELEASE}")

# --- generated files: changelogs and the gzipped man page ---------------------------------------
# Dates honour SOURCE_DATE_EPOCH, and gzip -n leaves out names and times: reproducible packages.
string(TIMESTAMP DECHUNKD_CHANGELOG_DATE_DEB "%a, %d %b %Y %H:%M:%S +0000" UTC)
string(TIMESTAMP DECHUNKD_CHANGELOG_DATE_RPM "%a %b %d %Y" UTC)
configure_file(${DECHUNKD_PACKAGING_DIR}/changelog.Debian.in ${DECHUNKD_PACKAGING_GEN}/src/changelog.Debian @ONLY)
configure_file(${DECHUNKD_PACKAGING_DIR}/changelog.rpm.in ${DECHUNKD_PACKAGING_GEN}/changelog.rpm @ONLY)

find_program(DECHUNKD_GZIP gzip REQUIRED)
add_custom_command(
  OUTPUT ${DECHUNKD_PACKAGING_GEN}/dechunkd.8.gz
  COMMAND ${CMAKE_COMMAND} -E copy ${DECHUNKD_PACKAGING_DIR}/dechunkd.8 ${DECHUNKD_PACKAGING_GEN}/dechunkd.8
  COMMAND ${DECHUNKD_GZIP} -9nf ${DECHUNKD_PACKAGING_GEN}/dechunkd.8
  DEPENDS ${DECHUNKD_PACKAGING_DIR}/dechunkd.8
  COMMENT "Compressing the man page dechunkd(8)"
  VERBATIM)
add_custom_command(
  OUTPUT ${DECHUNKD_PACKAGING_GEN}/changelog.Debian.gz
  COMMAND ${CMAKE_COMMAND} -E copy ${DECHUNKD_PACKAGING_GEN}/src/changelog.Debian ${DECHUNKD_PACKAGING_GEN}/changelog.Debian
  COMMAND ${DECHUNKD_GZIP} -9nf ${DECHUNKD_PACKAGING_GEN}/changelog.Debian
  DEPENDS ${DECHUNKD_PACKAGING_GEN}/src/changelog.Debian
  COMMENT "Compressing the Debian changelog"
  VERBATIM)
add_custom_target(dechunkd_package_files ALL
  DEPENDS ${DECHUNKD_PACKAGING_GEN}/dechunkd.8.gz ${DECHUNKD_PACKAGING_GEN}/changelog.Debian.gz)

# --- install rules: one install() per file, each with a component --------------------------------
# Components (CPACK_COMPONENTS_ALL in cpack_project_config.cmake picks them per generator):
#   runtime  /usr/bin/dechunkd                       (top-level CMakeLists.txt)
#   doc      man page, README, configuration and operations guides, copyright
#   config   /etc/dechunkd/dechunkd.yaml, /etc/logrotate.d/dechunkd   (conffiles)
#   system   sysusers.d and tmpfiles.d files
#   deb      the unit in /lib/systemd/system, the Debian changelog, lintian overrides
#   rpm      the unit in /usr/lib/systemd/system
# Paths outside the prefix are fixed, never probed on the build machine (STYLE 13): the daemon's
# default configuration is /etc/dechunkd/dechunkd.yaml and the unit runs /usr/bin/dechunkd,
# whatever CMAKE_INSTALL_PREFIX is. Those components are EXCLUDE_FROM_ALL, so a plain
# `cmake --install` (e.g. to /usr/local) never writes to /etc or /lib; the packages, and
# `cmake --install BUILD --component config`, install them.
install(FILES ${DECHUNKD_PACKAGING_GEN}/dechunkd.8.gz
        DESTINATION ${CMAKE_INSTALL_MANDIR}/man8 COMPONENT doc)
install(FILES ${CMAKE_SOURCE_DIR}/README.md
        DESTINATION ${CMAKE_INSTALL_DOCDIR} COMPONENT doc)
install(FILES ${CMAKE_SOURCE_DIR}/docs/configuration.md
        DESTINATION ${CMAKE_INSTALL_DOCDIR} COMPONENT doc)
install(FILES ${CMAKE_SOURCE_DIR}/docs/operations.md
        DESTINATION ${CMAKE_INSTALL_DOCDIR} COMPONENT doc)
install(FILES ${DECHUNKD_PACKAGING_DIR}/copyright
        DESTINATION ${CMAKE_INSTALL_DOCDIR} COMPONENT doc)

install(FILES ${CMAKE_SOURCE_DIR}/conf/dechunkd.yaml
        DESTINATION /etc/dechunkd COMPONENT config EXCLUDE_FROM_ALL)
install(FILES ${DECHUNKD_PACKAGING_DIR}/dechunkd.logrotate
        DESTINATION /etc/logrotate.d RENAME dechunkd COMPONENT config EXCLUDE_FROM_ALL)

# systemd reads these from <prefix>/lib, /usr/lib in the packages (not the multiarch
# CMAKE_INSTALL_LIBDIR). Relative, because CPack RPM marks every absolute destination %config.
install(FILES ${DECHUNKD_PACKAGING_DIR}/dechunkd.sysusers
        DESTINATION lib/sysusers.d RENAME dechunkd.conf COMPONENT system EXCLUDE_FROM_ALL)
install(FILES ${DECHUNKD_PACKAGING_DIR}/dechunkd.tmpfiles
        DESTINATION lib/tmpfiles.d RENAME dechunkd.conf COMPONENT system EXCLUDE_FROM_ALL)

# Debian 12 (and its lintian) keeps units in /lib/systemd/system; rpm-based systems in
# /usr/lib/systemd/system (<prefix>/lib/systemd/system, /usr in the package).
install(FILES ${DECHUNKD_PACKAGING_DIR}/dechunkd.service
        DESTINATION /lib/systemd/system COMPONENT deb EXCLUDE_FROM_ALL)
install(FILES ${DECHUNKD_PACKAGING_GEN}/changelog.Debian.gz
        DESTINATION ${CMAKE_INSTALL_DOCDIR} COMPONENT deb EXCLUDE_FROM_ALL)
if(EXISTS ${DECHUNKD_PACKAGING_DIR}/lintian-overrides)
  install(FILES ${DECHUNKD_PACKAGING_DIR}/lintian-overrides
          DESTINATION ${CMAKE_INSTALL_DATAROOTDIR}/lintian/overrides RENAME dechunkd
          COMPONENT deb EXCLUDE_FROM_ALL)
endif()
install(FILES ${DECHUNKD_PACKAGING_DIR}/dechunkd.service
        DESTINATION lib/systemd/system COMPONENT rpm EXCLUDE_FROM_ALL)
# rpm owns the state and log directories (0750 dechunkd:dechunkd via CPACK_RPM_USER_FILELIST;
# %pre creates the user first). The .deb creates them in postinst instead, as Debian does.
install(DIRECTORY DESTINATION /var/lib/dechunkd COMPONENT rpm EXCLUDE_FROM_ALL)
install(DIRECTORY DESTINATION /var/log/dechunkd COMPONENT rpm EXCLUDE_FROM_ALL)

# --- CPack: common ------------------------------------------------------------------------------
set(CPACK_GENERATOR "DEB;RPM")
set(CPACK_PACKAGE_NAME dechunkd)
set(CPACK_PACKAGE_VENDOR "dechunkd authors")
set(CPACK_PACKAGE_CONTACT "${DECHUNKD_PACKAGE_MAINTAINER}")
set(CPACK_PACKAGE_VERSION "${PROJECT_VERSION}")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "De-chunking webhook gateway: chunked requests in, Content-Length out")
set(CPACK_PACKAGE_DESCRIPTION
"dechunkd is a small, hardened HTTP/1.1 gateway for webhooks. It reads each
request body, also one sent with Transfer-Encoding: chunked, and forwards it to
the route's target with a Content-Length header instead: the same body bytes,
cleaned headers. Receivers that cannot read chunked bodies (Power Automate and
Logic Apps triggers, WSGI servers, PHP-FPM, legacy servers) get the whole body.

Routes are configured in /etc/dechunkd/dechunkd.yaml. The service runs as the
unprivileged dechunkd user under a hardened systemd unit; it is not enabled or
started on install.")
# The package prefix, whatever CMAKE_INSTALL_PREFIX is (the DEB and RPM generators stage with
# DESTDIR and this prefix, so the absolute destinations above land in the package too).
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_PACKAGE_RELOCATABLE OFF)
# CMAKE_INSTALL_DO_STRIP: the packaged binary has no debug information.
set(CPACK_STRIP_FILES ON)
# One package per generator, holding the components cpack_project_config.cmake lists.
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_RPM_COMPONENT_INSTALL ON)
set(CPACK_COMPONENTS_GROUPING ALL_COMPONENTS_IN_ONE)
set(CPACK_PROJECT_CONFIG_FILE ${DECHUNKD_PACKAGING_DIR}/cpack_project_config.cmake)
# A sanitizer build must never become a package (cpack_project_config.cmake refuses it).
if(DECHUNKD_ASAN OR DECHUNKD_TSAN OR DECHUNKD_FUZZ)
  set(CPACK_DECHUNKD_SANITIZED ON)
else()
  set(CPACK_DECHUNKD_SANITIZED OFF)
endif()
set(CPACK_SOURCE_GENERATOR TXZ)
set(CPACK_SOURCE_IGNORE_FILES "/\\\\.git/" "/build/" "__pycache__")

# --- CPack: .deb --------------------------------------------------------------------------------
set(CPACK_DEBIAN_PACKAGE_NAME dechunkd)
set(CPACK_DEBIAN_PACKAGE_RELEASE "${DECHUNKD_PACKAGE_RELEASE}")
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
if(DECHUNKD_PACKAGE_URL)
  set(CPACK_DEBIAN_PACKAGE_HOMEPAGE "${DECHUNKD_PACKAGE_URL}")
endif()
# Library dependencies come from the binary (dpkg-shlibdeps); adduser is for the maintainer
# scripts' fallback when systemd-sysusers is not there.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "adduser")
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "logrotate")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    "${DECHUNKD_PACKAGING_DIR}/deb/conffiles;${DECHUNKD_PACKAGING_DIR}/deb/postinst;${DECHUNKD_PACKAGING_DIR}/deb/prerm;${DECHUNKD_PACKAGING_DIR}/deb/postrm")
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_DEBIAN_COMPRESSION_TYPE xz)

# --- CPack: .rpm --------------------------------------------------------------------------------
set(CPACK_RPM_PACKAGE_NAME dechunkd)
set(CPACK_RPM_PACKAGE_RELEASE "${DECHUNKD_PACKAGE_RELEASE}")
set(CPACK_RPM_FILE_NAME RPM-DEFAULT)
set(CPACK_RPM_PACKAGE_LICENSE MIT)
set(CPACK_RPM_PACKAGE_GROUP "System Environment/Daemons")
if(DECHUNKD_PACKAGE_URL)
  set(CPACK_RPM_PACKAGE_URL "${DECHUNKD_PACKAGE_URL}")
endif()
set(CPACK_RPM_PACKAGE_DESCRIPTION "${CPACK_PACKAGE_DESCRIPTION}")
# Library dependencies come from the binary (rpm's ELF dependency generator).
set(CPACK_RPM_PACKAGE_AUTOREQ yes)
set(CPACK_RPM_PACKAGE_AUTOPROV yes)
set(CPACK_RPM_PACKAGE_REQUIRES_PRE "shadow-utils")
# Extra preamble lines. Suggests is written here because CPack (3.25) probes weak-dependency
# support with `rpm --suggests`, which fails on Debian's rpm 4.18 although rpmbuild has the tag.
set(CPACK_RPM_SPEC_MORE_DEFINE "%define packager ${DECHUNKD_PACKAGE_MAINTAINER}\nSuggests: logrotate")
set(CPACK_RPM_PRE_INSTALL_SCRIPT_FILE ${DECHUNKD_PACKAGING_DIR}/rpm/pre.sh)
set(CPACK_RPM_POST_INSTALL_SCRIPT_FILE ${DECHUNKD_PACKAGING_DIR}/rpm/post.sh)
set(CPACK_RPM_PRE_UNINSTALL_SCRIPT_FILE ${DECHUNKD_PACKAGING_DIR}/rpm/preun.sh)
set(CPACK_RPM_POST_UNINSTALL_SCRIPT_FILE ${DECHUNKD_PACKAGING_DIR}/rpm/postun.sh)
set(CPACK_RPM_CHANGELOG_FILE ${DECHUNKD_PACKAGING_GEN}/changelog.rpm)
set(CPACK_RPM_USER_FILELIST
    "%config(noreplace) /etc/dechunkd/dechunkd.yaml"
    "%config(noreplace) /etc/logrotate.d/dechunkd"
    "%license /usr/share/doc/dechunkd/copyright"
    "%dir %attr(0750,dechunkd,dechunkd) /var/lib/dechunkd"
    "%dir %attr(0750,dechunkd,dechunkd) /var/log/dechunkd")
# Directories that belong to the filesystem, systemd or logrotate packages, not to dechunkd.
set(CPACK_RPM_EXCLUDE_FROM_AUTO_FILELIST_ADDITION
    /var /var/lib /var/log /etc/logrotate.d /usr/lib/systemd /usr/lib/systemd/system /usr/lib/sysusers.d /usr/lib/tmpfiles.d
    /usr/share/man /usr/share/man/man8)

include(CPack)

# --- tests: packaging.* -------------------------------------------------------------------------
# They build both packages with cpack (into <build>/packaging-test), lint them, inspect their
# contents and scripts, and (as root) install, check and purge the .deb on this machine.
# Off by default for Debug builds: the sanitizer builds must not produce packages.
if(CMAKE_BUILD_TYPE STREQUAL "Debug" OR DECHUNKD_ASAN OR DECHUNKD_TSAN OR DECHUNKD_FUZZ)
  set(_dechunkd_package_tests_default OFF)
else()
  set(_dechunkd_package_tests_default ON)
endif()
option(DECHUNKD_PACKAGE_TESTS "Build, lint and install-test the .deb/.rpm packages in CTest"
       ${_dechunkd_package_tests_default})

if(DECHUNKD_TESTS AND DECHUNKD_PACKAGE_TESTS)
  find_package(Python3 REQUIRED COMPONENTS Interpreter)
  set(_dechunkd_pkg_test ${CMAKE_SOURCE_DIR}/tests/packaging/test_packages.py)
  set(_dechunkd_pkg_env
      "DECHUNKD_SOURCE_DIR=${CMAKE_SOURCE_DIR}"
      "DECHUNKD_BUILD_DIR=${CMAKE_BINARY_DIR}"
      "DECHUNKD_PACKAGE_DIR=${CMAKE_BINARY_DIR}/packaging-test"
      "DECHUNKD_CPACK=${CMAKE_CPACK_COMMAND}"
      "DECHUNKD_VERSION=${PROJECT_VERSION}"
      "DECHUNKD_DEB_VERSION=${DECHUNKD_DEB_VERSION}"
      "DECHUNKD_RPM_VERSION=${DECHUNKD_RPM_VERSION}")
  foreach(_stage build unit deb rpm install)
    add_test(NAME packaging.${_stage} COMMAND ${Python3_EXECUTABLE} ${_dechunkd_pkg_test} ${_stage})
    set_tests_properties(packaging.${_stage} PROPERTIES
      ENVIRONMENT "${_dechunkd_pkg_env}" TIMEOUT 300 SKIP_RETURN_CODE 77)
  endforeach()
  set_tests_properties(packaging.build PROPERTIES FIXTURES_SETUP dechunkd_packages)
  set_tests_properties(packaging.deb packaging.rpm packaging.install PROPERTIES
    FIXTURES_REQUIRED dechunkd_packages)
  # Installs and purges the package on this machine: one at a time, whatever ctest -j says.
  set_tests_properties(packaging.install PROPERTIES RESOURCE_LOCK dechunkd_system_package)
endif()
