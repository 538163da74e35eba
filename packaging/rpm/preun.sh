# dechunkd %preun ($1: 0 = erase, 1 = upgrade): on erase, stop and disable the service.
# The queue in /var/lib/dechunkd, the logs and the user are kept (rpm has no purge: remove
# them by hand, see /usr/share/doc/dechunkd/operations.md).
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
	systemctl --no-reload disable --now dechunkd.service >/dev/null 2>&1 || :
fi
exit 0
