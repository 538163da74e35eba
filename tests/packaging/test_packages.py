#!/usr/bin/env python3
"""Packaging tests (SPEC 9): the .deb and .rpm that CPack builds from packaging/packaging.cmake.

Registered by packaging/packaging.cmake as CTest tests packaging.<stage>:

  build    cpack -G "DEB;RPM" into <build>/packaging-test (the fixture the others need)
  unit     the systemd unit, sysusers.d and tmpfiles.d files, man page and scripts, from the tree
  deb      the .deb: control fields, contents, conffiles, scripts, the unpacked binary's --check
           on the packaged config, and lintian
  rpm      the .rpm: header, contents, %config(noreplace), scripts, dependencies, and rpmlint
  install  (root only) dpkg -i, the user, directories, owners, --check, a short run as the
           service user, systemd-analyze verify/security, reinstall, remove, purge to a clean
           system; the maintainer scripts' adduser/useradd fallbacks; the rpm scriptlets

Run one by hand:  DECHUNKD_BUILD_DIR=build/release python3 tests/packaging/test_packages.py deb
Exit status 77 means skipped (CTest SKIP_RETURN_CODE).
"""
import glob
import gzip
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.environ.get("DECHUNKD_SOURCE_DIR") or os.path.dirname(os.path.dirname(HERE))
BUILD = os.environ.get("DECHUNKD_BUILD_DIR", "")
OUT = os.environ.get("DECHUNKD_PACKAGE_DIR") or os.path.join(BUILD, "packaging-test")
CPACK = os.environ.get("DECHUNKD_CPACK") or "cpack"
VERSION = os.environ.get("DECHUNKD_VERSION", "")
DEB_VERSION = os.environ.get("DECHUNKD_DEB_VERSION", "")
RPM_VERSION = os.environ.get("DECHUNKD_RPM_VERSION", "")
PKG = os.path.join(SOURCE, "packaging")
SKIP = 77

UNIT_PATH = "/lib/systemd/system/dechunkd.service"
CONFFILES = ["/etc/dechunkd/dechunkd.yaml", "/etc/logrotate.d/dechunkd"]
DOCS = ["README.md", "configuration.md", "operations.md", "copyright"]

# Directives SPEC 9 and the packaging issue require in the unit, exactly as written.
UNIT_DIRECTIVES = [
    "Type=notify",
    "ExecStart=/usr/bin/dechunkd -c /etc/dechunkd/dechunkd.yaml",
    "ExecStartPre=/usr/bin/dechunkd --check -c /etc/dechunkd/dechunkd.yaml",
    "ExecReload=/bin/kill -HUP $MAINPID",
    "User=dechunkd",
    "Group=dechunkd",
    "StateDirectory=dechunkd",
    "LogsDirectory=dechunkd",
    "Restart=on-failure",
    "LimitNOFILE=65536",
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "ProtectProc=invisible",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces=yes",
    "RestrictRealtime=yes",
    "RestrictSUIDSGID=yes",
    "LockPersonality=yes",
    "MemoryDenyWriteExecute=yes",
    "SystemCallFilter=@system-service",
    "SystemCallArchitectures=native",
    "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
    "AmbientCapabilities=CAP_NET_BIND_SERVICE",
    "UMask=0027",
    "WantedBy=multi-user.target",
]
GOOD_RATINGS = ("PERFECT", "SAFE", "OK")


def run(cmd, check=True, timeout=180, **kw):
    """Runs cmd, returns the CompletedProcess (text); on failure with check, fails with output."""
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise AssertionError("%s exited %d\nstdout:\n%s\nstderr:\n%s"
                             % (" ".join(cmd), p.returncode, p.stdout, p.stderr))
    return p


def need(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise AssertionError("missing tools: %s (tests/deps.sh installs them)" % ", ".join(missing))


def find_package(pattern):
    found = glob.glob(os.path.join(OUT, pattern))
    if len(found) != 1:
        raise AssertionError("expected one %s in %s, found %r (did packaging.build run?)"
                             % (pattern, OUT, found))
    return found[0]


def deb_file():
    return find_package("dechunkd_%s_*.deb" % DEB_VERSION)


def rpm_file():
    return find_package("dechunkd-%s.*.rpm" % RPM_VERSION)


def exposure(text):
    """(score, rating) from systemd-analyze security's 'Overall exposure level' line."""
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", text)
    if not m:
        raise AssertionError("no 'Overall exposure level' line in:\n" + text[-2000:])
    return float(m.group(1)), m.group(2)


def elf_sections(path):
    out = run(["readelf", "-S", "-W", path]).stdout
    return set(re.findall(r"\]\s+(\.\S+)", out))


def gzip_mtime(path):
    with open(path, "rb") as f:
        head = f.read(8)
    return int.from_bytes(head[4:8], "little")


class Build(unittest.TestCase):
    def test_cpack_builds_both_packages(self):
        self.assertTrue(BUILD and os.path.isfile(os.path.join(BUILD, "CPackConfig.cmake")),
                        "DECHUNKD_BUILD_DIR must be a configured build directory")
        need("dpkg-shlibdeps", "rpmbuild")
        shutil.rmtree(OUT, ignore_errors=True)
        started = time.monotonic()
        p = run([CPACK, "--config", os.path.join(BUILD, "CPackConfig.cmake"), "-G", "DEB;RPM",
                 "-B", OUT], timeout=240)
        print(p.stdout[-3000:])
        print("cpack took %.1f s" % (time.monotonic() - started))
        deb, rpm = deb_file(), rpm_file()
        self.assertGreater(os.path.getsize(deb), 10000)
        self.assertGreater(os.path.getsize(rpm), 10000)


class Unit(unittest.TestCase):
    """The files under packaging/ as written, without building anything."""

    def test_unit_has_every_required_directive(self):
        with open(os.path.join(PKG, "dechunkd.service")) as f:
            lines = [l.strip() for l in f]
        for d in UNIT_DIRECTIVES:
            self.assertIn(d, lines, "dechunkd.service lacks " + d)
        stop = [l for l in lines if l.startswith("TimeoutStopSec=")]
        self.assertEqual(len(stop), 1)
        self.assertRegex(stop[0], r"^TimeoutStopSec=\d+s$")
        self.assertGreater(int(stop[0].split("=")[1][:-1]), 30, "must exceed the 30 s default drain")
        # Never enabled or started by the package: nothing in the unit pulls it in by itself.
        self.assertFalse([l for l in lines if l.startswith(("Alias=", "RequiredBy="))])

    def test_every_service_directive_is_commented(self):
        # STYLE 14: a comment per directive. A directive may share the comment of the one right
        # above it (User/Group, ExecStartPre/ExecStart, the capability pair).
        with open(os.path.join(PKG, "dechunkd.service")) as f:
            lines = [l.rstrip("\n") for l in f]
        section, prev = None, ""
        for i, l in enumerate(lines):
            if l.startswith("["):
                section = l
            elif section == "[Service]" and re.match(r"^[A-Za-z]+=", l):
                self.assertTrue(prev.startswith("#") or re.match(r"^[A-Za-z]+=", prev),
                                "line %d (%s) has no comment above it" % (i + 1, l))
                if re.match(r"^[A-Za-z]+=", prev):
                    # Sharing is fine only right after a commented directive.
                    self.assertTrue(lines[i - 2].startswith("#"),
                                    "line %d (%s) has no comment" % (i + 1, l))
            prev = l

    def test_security_rating_is_ok_or_better(self):
        need("systemd-analyze")
        p = run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                 os.path.join(PKG, "dechunkd.service")], check=False)
        score, rating = exposure(p.stdout + p.stderr)
        print("systemd-analyze security: %.1f %s" % (score, rating))
        self.assertIn(rating, GOOD_RATINGS)
        self.assertLessEqual(score, 4.9)

    def test_sysusers_and_tmpfiles_in_a_scratch_root(self):
        need("systemd-sysusers", "systemd-tmpfiles")
        root = tempfile.mkdtemp(prefix="dechunkd-sysroot-")
        try:
            os.makedirs(os.path.join(root, "etc"))
            run(["systemd-sysusers", "--root=" + root, os.path.join(PKG, "dechunkd.sysusers")])
            with open(os.path.join(root, "etc/passwd")) as f:
                users = {l.split(":")[0]: l.strip().split(":") for l in f if l.strip()}
            with open(os.path.join(root, "etc/group")) as f:
                groups = {l.split(":")[0]: l.strip().split(":") for l in f if l.strip()}
            self.assertIn("dechunkd", users)
            self.assertIn("dechunkd", groups)
            u = users["dechunkd"]
            self.assertLess(int(u[2]), 1000, "a system user")
            self.assertEqual(u[3], groups["dechunkd"][2], "primary group dechunkd")
            self.assertEqual(u[5], "/var/lib/dechunkd")
            self.assertTrue(u[6].endswith("nologin"))
            run(["systemd-tmpfiles", "--create", "--root=" + root, os.path.join(PKG, "dechunkd.tmpfiles")])
            for d in ("var/lib/dechunkd", "var/log/dechunkd"):
                st = os.stat(os.path.join(root, d))
                self.assertTrue(stat.S_ISDIR(st.st_mode))
                self.assertEqual(stat.S_IMODE(st.st_mode), 0o750, d)
                self.assertEqual(st.st_uid, int(u[2]), d)
                self.assertEqual(st.st_gid, int(groups["dechunkd"][2]), d)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def test_man_page_renders_without_warnings(self):
        need("man")
        env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8")
        p = run(["man", "--warnings", "-l", os.path.join(PKG, "dechunkd.8")], env=env)
        self.assertEqual(p.stderr.strip(), "", "man --warnings: " + p.stderr)
        for section in ("NAME", "SYNOPSIS", "OPTIONS", "SIGNALS", "FILES", "EXIT STATUS", "SEE ALSO"):
            self.assertRegex(p.stdout, r"(?m)^%s$" % section)
        for word in ("--check", "SIGHUP", "SIGTERM", "SIGUSR1", "/etc/dechunkd/dechunkd.yaml"):
            self.assertIn(word, p.stdout)

    def test_maintainer_scripts_parse_and_never_start_the_service(self):
        scripts = [os.path.join(PKG, "deb", s) for s in ("postinst", "prerm", "postrm")]
        scripts += glob.glob(os.path.join(PKG, "rpm", "*.sh"))
        self.assertEqual(len(scripts), 7)
        for s in scripts:
            run(["sh", "-n", s])
            with open(s) as f:
                text = "".join(l for l in f if not l.lstrip().startswith("#"))
            self.assertNotRegex(text, r"systemctl[^\n]*(?<![-\w])(enable|start|restart)\b",
                                s + " must not enable or (re)start the service")
            self.assertNotRegex(text, r"deb-systemd-invoke\s+(start|restart)\b", s)
        if shutil.which("shellcheck"):
            run(["shellcheck", "-s", "sh"] + scripts)
        else:
            print("shellcheck not installed: scripts only checked with sh -n")
        for s in scripts[:3]:
            with open(s) as f:
                text = f.read()
            self.assertTrue(text.startswith("#!/bin/sh\n"), s)
            self.assertRegex(text, r"(?m)^set -e$", s)
            self.assertTrue(os.access(s, os.X_OK), s + " must be executable")
        # Upgrades restart only a running service; systemctl only when systemd runs.
        with open(os.path.join(PKG, "deb", "postinst")) as f:
            self.assertIn("try-restart dechunkd.service", f.read())
        with open(os.path.join(PKG, "rpm", "postun.sh")) as f:
            self.assertIn("try-restart dechunkd.service", f.read())
        # Every systemctl call sits inside an `if` that checks [ -d /run/systemd/system ].
        for s in scripts:
            stack = []
            with open(s) as f:
                for line in f:
                    if re.match(r"^\s*if\b", line):
                        stack.append("[ -d /run/systemd/system ]" in line)
                    elif re.match(r"^\s*fi\b", line):
                        stack.pop()
                    elif re.match(r"^\s*(systemctl|deb-systemd-invoke)\b", line):
                        self.assertTrue(any(stack), "%s: unguarded %r" % (s, line.strip()))

    def test_logrotate_rule(self):
        with open(os.path.join(PKG, "dechunkd.logrotate")) as f:
            text = f.read()
        self.assertIn("/var/log/dechunkd/*.log {", text)
        self.assertRegex(text, r"systemctl kill --signal=USR1 dechunkd.service")
        self.assertIn("missingok", text)
        self.assertIn("su dechunkd dechunkd", text)
        self.assertIn("create 0640 dechunkd dechunkd", text)
        # logrotate itself runs the rule in packaging.install, once the user exists.


class Deb(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        need("dpkg-deb", "readelf")
        cls.deb = deb_file()
        cls.root = tempfile.mkdtemp(prefix="dechunkd-deb-")
        run(["dpkg-deb", "-x", cls.deb, cls.root])
        cls.control = os.path.join(cls.root, "DEBIAN")
        run(["dpkg-deb", "-e", cls.deb, cls.control])

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)

    def field(self, name):
        return run(["dpkg-deb", "-f", self.deb, name]).stdout.strip()

    def test_control_fields(self):
        self.assertEqual(self.field("Package"), "dechunkd")
        self.assertEqual(self.field("Version"), DEB_VERSION)
        self.assertEqual(self.field("Section"), "net")
        depends = self.field("Depends")
        print("Depends:", depends)
        # From dpkg-shlibdeps, not written by hand.
        for lib in ("libc6", "libevent-core-2.1-7", "libyaml-cpp", "libstdc++6", "adduser"):
            self.assertIn(lib, depends)
        self.assertNotIn("llhttp", depends, "llhttp is compiled in")

    def test_contents(self):
        listing = run(["dpkg-deb", "-c", self.deb]).stdout.splitlines()
        files = {}
        for line in listing:
            parts = line.split()
            self.assertEqual(parts[1], "root/root", line)
            if not parts[0].startswith("d"):
                files[parts[-1].lstrip(".")] = parts[0]
        expected = {
            "/usr/bin/dechunkd": "-rwxr-xr-x",
            "/etc/dechunkd/dechunkd.yaml": "-rw-r--r--",
            "/etc/logrotate.d/dechunkd": "-rw-r--r--",
            UNIT_PATH: "-rw-r--r--",
            "/usr/lib/sysusers.d/dechunkd.conf": "-rw-r--r--",
            "/usr/lib/tmpfiles.d/dechunkd.conf": "-rw-r--r--",
            "/usr/share/man/man8/dechunkd.8.gz": "-rw-r--r--",
            "/usr/share/doc/dechunkd/changelog.Debian.gz": "-rw-r--r--",
            "/usr/share/lintian/overrides/dechunkd": "-rw-r--r--",
        }
        for d in DOCS:
            expected["/usr/share/doc/dechunkd/" + d] = "-rw-r--r--"
        if not os.path.exists(os.path.join(PKG, "lintian-overrides")):
            del expected["/usr/share/lintian/overrides/dechunkd"]
        self.assertEqual(files, expected)

    def test_conffiles_and_scripts(self):
        with open(os.path.join(self.control, "conffiles")) as f:
            self.assertEqual(f.read().split(), CONFFILES)
        for s in ("postinst", "prerm", "postrm"):
            path = os.path.join(self.control, s)
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o755, s)
            with open(path) as f, open(os.path.join(PKG, "deb", s)) as g:
                self.assertEqual(f.read(), g.read(), s)
        self.assertFalse(os.path.exists(os.path.join(self.control, "preinst")))

    def test_binary_is_stripped_and_runs_check_on_the_packaged_config(self):
        binary = os.path.join(self.root, "usr/bin/dechunkd")
        sections = elf_sections(binary)
        self.assertNotIn(".debug_info", sections)
        self.assertNotIn(".symtab", sections)
        self.assertEqual(run([binary, "--version"]).stdout.strip(), "dechunkd " + VERSION)
        config = os.path.join(self.root, "etc/dechunkd/dechunkd.yaml")
        p = run([binary, "--check", "-c", config])
        self.assertEqual(p.stdout.strip(), "ok")
        with open(config) as f:
            self.assertIn("dir: /var/lib/dechunkd", f.read())

    def test_packaged_files_match_the_tree(self):
        pairs = [(UNIT_PATH, "packaging/dechunkd.service"),
                 ("/etc/dechunkd/dechunkd.yaml", "conf/dechunkd.yaml"),
                 ("/etc/logrotate.d/dechunkd", "packaging/dechunkd.logrotate"),
                 ("/usr/lib/sysusers.d/dechunkd.conf", "packaging/dechunkd.sysusers"),
                 ("/usr/share/doc/dechunkd/operations.md", "docs/operations.md")]
        for packaged, source in pairs:
            with open(self.root + packaged, "rb") as f, open(os.path.join(SOURCE, source), "rb") as g:
                self.assertEqual(f.read(), g.read(), packaged)
        man = self.root + "/usr/share/man/man8/dechunkd.8.gz"
        with gzip.open(man, "rb") as f, open(os.path.join(PKG, "dechunkd.8"), "rb") as g:
            self.assertEqual(f.read(), g.read())
        changelog = self.root + "/usr/share/doc/dechunkd/changelog.Debian.gz"
        with gzip.open(changelog, "rt") as f:
            first = f.readline()
        self.assertTrue(first.startswith("dechunkd (%s) " % DEB_VERSION), first)
        for gz in (man, changelog):
            self.assertEqual(gzip_mtime(gz), 0, gz + " must be compressed with gzip -n")

    def test_lintian(self):
        need("lintian")
        p = run(["lintian", "--fail-on", "error,warning", "--display-info", "--pedantic",
                 "--allow-root", "--tag-display-limit", "0", self.deb], check=False, timeout=240)
        print(p.stdout)
        print(p.stderr)
        tags = [l for l in p.stdout.splitlines() if re.match(r"^[EW]: ", l)]
        self.assertEqual(tags, [], "lintian errors or warnings")
        self.assertEqual(p.returncode, 0)


class Rpm(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        need("rpm")
        cls.rpm = rpm_file()

    def query(self, fmt):
        return run(["rpm", "-qp", "--qf", fmt, self.rpm]).stdout

    def test_header(self):
        self.assertEqual(self.query("%{NAME} %{VERSION}-%{RELEASE} %{LICENSE}"),
                         "dechunkd %s MIT" % RPM_VERSION)
        self.assertTrue(self.query("%{SUMMARY}").startswith("De-chunking webhook gateway"))
        self.assertIn(VERSION, self.query("%{CHANGELOGTEXT}"))

    def test_contents_and_attributes(self):
        rows = self.query("[%{FILEMODES:perms}|%{FILEUSERNAME}|%{FILEGROUPNAME}|"
                          "%{FILEFLAGS:fflags}|%{FILENAMES}\n]").splitlines()
        files = {}
        for row in rows:
            perms, user, group, flags, name = row.split("|", 4)
            if name.startswith("/usr/lib/.build-id"):
                continue  # rpm's build-id links to the binary
            files[name] = (perms, user, group, flags)
        print("\n".join(sorted(files)))
        expected = {
            "/etc/dechunkd", "/etc/dechunkd/dechunkd.yaml", "/etc/logrotate.d/dechunkd",
            "/usr/bin/dechunkd", "/usr/lib/systemd/system/dechunkd.service",
            "/usr/lib/sysusers.d/dechunkd.conf", "/usr/lib/tmpfiles.d/dechunkd.conf",
            "/usr/share/doc/dechunkd", "/usr/share/man/man8/dechunkd.8.gz",
            "/var/lib/dechunkd", "/var/log/dechunkd",
        } | {"/usr/share/doc/dechunkd/" + d for d in DOCS}
        self.assertEqual(set(files), expected)
        for conf in CONFFILES:
            self.assertIn("c", files[conf][3], conf + " is %config")
            self.assertIn("n", files[conf][3], conf + " is %config(noreplace)")
        for name in ("/usr/bin/dechunkd", "/usr/lib/systemd/system/dechunkd.service",
                     "/usr/lib/sysusers.d/dechunkd.conf"):
            self.assertNotIn("c", files[name][3], name + " is not a config file")
            self.assertEqual(files[name][1:3], ("root", "root"), name)
        self.assertEqual(files["/usr/bin/dechunkd"][0], "-rwxr-xr-x")
        for d in ("/var/lib/dechunkd", "/var/log/dechunkd"):
            self.assertEqual(files[d][:3], ("drwxr-x---", "dechunkd", "dechunkd"), d)
        self.assertIn("l", files["/usr/share/doc/dechunkd/copyright"][3], "copyright is %license")

    def test_scripts(self):
        text = run(["rpm", "-qp", "--scripts", self.rpm]).stdout
        parts = dict(re.findall(r"(?ms)^(\w+) scriptlet \(using /bin/sh\):\n(.*?)(?=^\w+ scriptlet|\Z)", text))
        self.assertEqual(set(parts), {"preinstall", "postinstall", "preuninstall", "postuninstall"})
        self.assertIn("useradd -r", parts["preinstall"])
        self.assertIn("groupadd -r", parts["preinstall"])
        self.assertIn('[ "$1" -eq 0 ]', parts["preuninstall"], "stop only on erase, not upgrade")
        self.assertIn('[ "$1" -ge 1 ]', parts["postuninstall"], "restart only on upgrade")
        self.assertIn("systemctl try-restart dechunkd.service", parts["postuninstall"])
        for name, body in parts.items():
            if "systemctl" in body:
                self.assertIn("[ -d /run/systemd/system ]", body, name + ": systemctl only when systemd runs")

    def test_dependencies_come_from_the_binary(self):
        requires = run(["rpm", "-qp", "--requires", self.rpm]).stdout
        print(requires)
        for lib in ("libevent_core-2.1.so.7", "libyaml-cpp.so", "libstdc++.so.6", "libc.so.6"):
            self.assertIn(lib, requires)
        self.assertIn("shadow-utils", requires)
        self.assertNotIn("llhttp", requires)
        self.assertIn("logrotate", run(["rpm", "-qp", "--suggests", self.rpm]).stdout)

    def test_payload_binary_runs_check(self):
        need("rpm2cpio", "cpio")
        root = tempfile.mkdtemp(prefix="dechunkd-rpm-")
        try:
            cpio = subprocess.run(["rpm2cpio", self.rpm], stdout=subprocess.PIPE, check=True).stdout
            subprocess.run(["cpio", "-idm", "--quiet"], input=cpio, cwd=root, check=True)
            binary = os.path.join(root, "usr/bin/dechunkd")
            self.assertNotIn(".debug_info", elf_sections(binary))
            p = run([binary, "--check", "-c", os.path.join(root, "etc/dechunkd/dechunkd.yaml")])
            self.assertEqual(p.stdout.strip(), "ok")
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def test_rpmlint(self):
        need("rpmlint")
        p = run(["rpmlint", "-c", os.path.join(PKG, "rpmlint.toml"), self.rpm], check=False)
        print(p.stdout)
        print(p.stderr)
        self.assertRegex(p.stdout, r"0 errors, 0 warnings")
        self.assertEqual(p.returncode, 0)


def user_exists(name):
    return subprocess.run(["getent", "passwd", name], stdout=subprocess.DEVNULL).returncode == 0


def group_exists(name):
    return subprocess.run(["getent", "group", name], stdout=subprocess.DEVNULL).returncode == 0


def package_state():
    p = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", "dechunkd"],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return p.stdout.strip() if p.returncode == 0 else ""


def remove_test_leftovers():
    """What a failed script test may leave; only called after main() made sure that no dechunkd
    package or user existed before this stage."""
    subprocess.run(["userdel", "dechunkd"], stderr=subprocess.DEVNULL)
    subprocess.run(["groupdel", "dechunkd"], stderr=subprocess.DEVNULL)
    for d in ("/var/lib/dechunkd", "/var/log/dechunkd"):
        shutil.rmtree(d, ignore_errors=True)


class Install(unittest.TestCase):
    """Installs the .deb on this machine (root; CI), checks it, and purges it again."""

    @classmethod
    def setUpClass(cls):
        cls.deb = deb_file()
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        cls.env = env

    def dpkg(self, *args):
        return run(["dpkg", "--force-confold"] + list(args), env=self.env, timeout=120)

    def tearDown(self):
        if package_state():
            subprocess.run(["dpkg", "--purge", "dechunkd"], env=self.env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def assert_owned_dir(self, path):
        st = os.stat(path)
        self.assertTrue(stat.S_ISDIR(st.st_mode), path)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o750, path)
        self.assertEqual(run(["stat", "-c", "%U:%G", path]).stdout.strip(), "dechunkd:dechunkd", path)

    def assert_clean(self):
        self.assertEqual(package_state(), "")
        self.assertFalse(user_exists("dechunkd"), "user dechunkd left behind")
        self.assertFalse(group_exists("dechunkd"), "group dechunkd left behind")
        for path in ("/var/lib/dechunkd", "/var/log/dechunkd", "/etc/dechunkd",
                     "/etc/logrotate.d/dechunkd", "/usr/bin/dechunkd", UNIT_PATH,
                     "/usr/lib/sysusers.d/dechunkd.conf", "/usr/share/doc/dechunkd"):
            self.assertFalse(os.path.lexists(path), path + " left behind")

    def run_as_service_user(self):
        """Starts the packaged binary as dechunkd on the packaged config (port 0, access log in
        /var/log/dechunkd), sends one request to the echo route, stops it with SIGTERM."""
        with open("/etc/dechunkd/dechunkd.yaml") as f:
            config = f.read()
        self.assertIn('"127.0.0.1:8080"', config)
        config = config.replace('"127.0.0.1:8080"', '"127.0.0.1:0"')
        config = config.replace("access: stdout", "access: /var/log/dechunkd/access.log")
        tmp = tempfile.mkdtemp(prefix="dechunkd-run-")
        try:
            os.chmod(tmp, 0o755)
            path = os.path.join(tmp, "dechunkd.yaml")
            with open(path, "w") as f:
                f.write(config)
            os.chmod(path, 0o644)
            proc = subprocess.Popen(["/usr/bin/dechunkd", "-c", path], user="dechunkd", group="dechunkd",
                                    extra_groups=[], cwd="/", stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            port, lines = None, []
            deadline = time.monotonic() + 15
            try:
                while port is None and time.monotonic() < deadline:
                    line = proc.stdout.readline()
                    if not line:
                        break
                    lines.append(line)
                    m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
                    if m:
                        port = int(m.group(1))
                self.assertIsNotNone(port, "daemon did not start:\n" + "".join(lines))
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    s.sendall(b"POST /debug/pkg HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                              b"Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
                    answer = b""
                    while True:
                        chunk = s.recv(65536)
                        if not chunk:
                            break
                        answer += chunk
                self.assertTrue(answer.startswith(b"HTTP/1.1 200"), answer[:200])
                self.assertIn(b"Content-Length: 5\r\n\r\nhello", answer)
                owner = run(["stat", "-c", "%U", "/var/lib/dechunkd/dechunkd.lock"]).stdout.strip()
                self.assertEqual(owner, "dechunkd")
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    rest, _ = proc.communicate(timeout=40)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    rest, _ = proc.communicate()
            self.assertEqual(proc.returncode, 0, "".join(lines) + rest)
            with open("/var/log/dechunkd/access.log") as f:
                log = f.read()
            self.assertIn('"path":"/debug/pkg"', log)
            self.assertEqual(run(["stat", "-c", "%U", "/var/log/dechunkd/access.log"]).stdout.strip(), "dechunkd")
            self.rotate_logs(tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def rotate_logs(self, tmp):
        """The packaged logrotate rule, forced once: the old file moves aside, a new one is created
        for the service user, and the postrotate script copes without systemd."""
        if not shutil.which("logrotate"):
            print("logrotate not installed: the rotation rule is not exercised")
            return
        state = os.path.join(tmp, "logrotate.state")
        p = run(["logrotate", "--verbose", "--force", "--state", state, "/etc/logrotate.d/dechunkd"],
                check=False)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertNotIn("error:", p.stdout + p.stderr)
        self.assertTrue(os.path.exists("/var/log/dechunkd/access.log.1"))
        self.assertEqual(run(["stat", "-c", "%U:%G %a", "/var/log/dechunkd/access.log"]).stdout.strip(),
                         "dechunkd:dechunkd 640")

    def test_install_upgrade_remove_purge(self):
        self.dpkg("-i", self.deb)
        self.assertEqual(package_state(), "ii")

        # The user and group: a system user with no login, home = the state directory.
        entry = run(["getent", "passwd", "dechunkd"]).stdout.strip().split(":")
        self.assertLess(int(entry[2]), 1000)
        self.assertEqual(entry[5], "/var/lib/dechunkd")
        self.assertTrue(entry[6].endswith("nologin"), entry)
        self.assertEqual(run(["id", "-gn", "dechunkd"]).stdout.strip(), "dechunkd")
        self.assert_owned_dir("/var/lib/dechunkd")
        self.assert_owned_dir("/var/log/dechunkd")

        conffiles = run(["dpkg-query", "-W", "-f=${Conffiles}", "dechunkd"]).stdout
        for c in CONFFILES:
            self.assertIn(c, conffiles)
        self.assertEqual(run(["/usr/bin/dechunkd", "--check"]).stdout.strip(), "ok")
        # ExecStartPre runs as the service user: it must be able to read the config.
        self.assertEqual(run(["runuser", "-u", "dechunkd", "--", "/usr/bin/dechunkd", "--check", "-c",
                              "/etc/dechunkd/dechunkd.yaml"]).stdout.strip(), "ok")
        self.assertTrue(os.path.isfile("/usr/share/man/man8/dechunkd.8.gz"))

        # Not enabled (nor started) by the installation.
        self.assertEqual(glob.glob("/etc/systemd/system/*.wants/dechunkd.service"), [])
        if shutil.which("systemctl"):
            p = run(["systemctl", "is-enabled", "dechunkd.service"], check=False)
            self.assertEqual(p.stdout.strip(), "disabled", p.stdout + p.stderr)

        need("systemd-analyze")
        p = run(["systemd-analyze", "verify", "--man=" + ("yes" if shutil.which("man") else "no"),
                 UNIT_PATH], check=False)
        print("systemd-analyze verify:", p.returncode, p.stdout, p.stderr)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertNotIn("dechunkd.service:", p.stdout + p.stderr)
        p = run(["systemd-analyze", "security", "--offline=true", "--no-pager", UNIT_PATH], check=False)
        score, rating = exposure(p.stdout + p.stderr)
        print("installed unit: exposure %.1f %s" % (score, rating))
        self.assertIn(rating, GOOD_RATINGS)

        self.run_as_service_user()

        # Upgrade path (postinst configure <old version>): idempotent, a changed conffile kept.
        with open("/etc/dechunkd/dechunkd.yaml", "a") as f:
            f.write("# changed by the operator\n")
        uid = run(["id", "-u", "dechunkd"]).stdout.strip()
        self.dpkg("-i", self.deb)
        self.assertEqual(package_state(), "ii")
        self.assertEqual(run(["id", "-u", "dechunkd"]).stdout.strip(), uid)
        with open("/etc/dechunkd/dechunkd.yaml") as f:
            self.assertTrue(f.read().endswith("# changed by the operator\n"))
        self.assert_owned_dir("/var/lib/dechunkd")

        # Remove keeps the user, the data, the logs and the configuration.
        self.dpkg("-r", "dechunkd")
        self.assertEqual(package_state(), "rc")
        self.assertFalse(os.path.exists("/usr/bin/dechunkd"))
        self.assertTrue(user_exists("dechunkd"))
        self.assertTrue(os.path.exists("/var/lib/dechunkd/dechunkd.lock"))
        self.assertTrue(os.path.exists("/var/log/dechunkd/access.log"))
        self.assertTrue(os.path.exists("/etc/dechunkd/dechunkd.yaml"))

        # Purge leaves a clean system.
        self.dpkg("--purge", "dechunkd")
        self.assert_clean()

    def shim_path(self, without):
        """A PATH directory that has every command of PATH except those in `without`."""
        shim = tempfile.mkdtemp(prefix="dechunkd-path-")
        for d in os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").split(":"):
            if not os.path.isdir(d):
                continue
            for name in os.listdir(d):
                target = os.path.join(d, name)
                link = os.path.join(shim, name)
                if name in without or os.path.lexists(link) or not os.access(target, os.X_OK):
                    continue
                os.symlink(target, link)
        return shim

    def run_script(self, script, args, without):
        shim = self.shim_path(without)
        try:
            env = dict(self.env, PATH=shim)
            return run(["sh", script] + args, env=env)
        finally:
            shutil.rmtree(shim, ignore_errors=True)

    def test_deb_scripts_fall_back_to_adduser_then_useradd(self):
        no_adduser = ["systemd-sysusers", "adduser", "deluser", "delgroup"]
        for without, tool, group_first in ((["systemd-sysusers"], "adduser", False),
                                           (["systemd-sysusers"], "adduser", True),
                                           (no_adduser, "useradd", False),
                                           (no_adduser, "useradd", True)):
            with self.subTest(tool=tool, existing_group=group_first):
                postinst = os.path.join(PKG, "deb", "postinst")
                postrm = os.path.join(PKG, "deb", "postrm")
                try:
                    if group_first:  # an administrator created the group beforehand
                        run(["groupadd", "--system", "dechunkd"])
                    self.run_script(postinst, ["configure", ""], without)
                    self.assertTrue(user_exists("dechunkd"))
                    self.assertEqual(run(["id", "-gn", "dechunkd"]).stdout.strip(), "dechunkd")
                    self.assert_owned_dir("/var/lib/dechunkd")
                    self.assert_owned_dir("/var/log/dechunkd")
                    self.run_script(postinst, ["configure", DEB_VERSION], without)  # idempotent
                    self.run_script(postrm, ["purge"], without)
                    self.assert_clean()
                finally:
                    remove_test_leftovers()

    def test_rpm_scriptlets_on_this_machine(self):
        scripts = {n: os.path.join(PKG, "rpm", n + ".sh") for n in ("pre", "post", "preun", "postun")}
        try:
            for _ in range(2):  # install twice: idempotent
                run(["sh", scripts["pre"], "1"])
                self.assertTrue(user_exists("dechunkd"))
                self.assertTrue(group_exists("dechunkd"))
                run(["sh", scripts["post"], "1"])
            entry = run(["getent", "passwd", "dechunkd"]).stdout.strip().split(":")
            self.assertLess(int(entry[2]), 1000)
            self.assertEqual(entry[5], "/var/lib/dechunkd")
            run(["sh", scripts["preun"], "1"])
            run(["sh", scripts["postun"], "1"])
            run(["sh", scripts["preun"], "0"])
            run(["sh", scripts["postun"], "0"])
        finally:
            remove_test_leftovers()
        self.assert_clean()


STAGES = {"build": Build, "unit": Unit, "deb": Deb, "rpm": Rpm, "install": Install}


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in STAGES:
        print("usage: test_packages.py {%s}" % "|".join(STAGES), file=sys.stderr)
        return 2
    stage = sys.argv[1]
    if stage != "unit" and not BUILD:
        print("DECHUNKD_BUILD_DIR is not set", file=sys.stderr)
        return 2
    if stage == "install":
        if os.geteuid() != 0:
            print("SKIP: packaging.install installs the .deb and needs root (CI runs as root)")
            return SKIP
        if shutil.which("dpkg") is None:
            print("SKIP: no dpkg on this machine")
            return SKIP
        leftovers = [what for what, there in (
            ("the dechunkd package", package_state()),
            ("a dechunkd user", user_exists("dechunkd")),
            ("a dechunkd group", group_exists("dechunkd")),
            ("/var/lib/dechunkd", os.path.lexists("/var/lib/dechunkd")),
            ("/var/log/dechunkd", os.path.lexists("/var/log/dechunkd"))) if there]
        if leftovers:
            if os.environ.get("DECHUNKD_PACKAGE_INSTALL_TEST") != "force":
                print("SKIP: %s already on this machine, and this test would purge it. Remove it, or "
                      "set DECHUNKD_PACKAGE_INSTALL_TEST=force to let the test purge it."
                      % ", ".join(leftovers))
                return SKIP
            if package_state():
                subprocess.run(["dpkg", "--purge", "dechunkd"], check=True)
            remove_test_leftovers()
    suite = unittest.defaultTestLoader.loadTestsFromTestCase(STAGES[stage])
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
