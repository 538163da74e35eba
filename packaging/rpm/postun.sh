# dechunkd %postun ($1: 0 = erase, 1 = upgrade): reload systemd's view of the unit; on an
# upgrade, restart the service only if it was running.
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || :
	if [ "$1" -ge 1 ]; then
		systemctl try-restart dechunkd.service >/dev/null 2>&1 || :
	fi
fi
exit 0
