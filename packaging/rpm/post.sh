# dechunkd %post ($1: 1 = install, 2 = upgrade): the unit made known to systemd. The package
# owns /var/lib/dechunkd and /var/log/dechunkd (0750 dechunkd:dechunkd); tmpfiles.d recreates
# them if an administrator removed one. The service is not enabled or started: routes must be
# configured first. The restart on upgrade happens in %postun, once the old files are gone.
if command -v systemd-tmpfiles >/dev/null 2>&1; then
	systemd-tmpfiles --create dechunkd.conf >/dev/null 2>&1 || :
fi
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || :
fi
exit 0
