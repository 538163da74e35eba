# dechunkd %pre ($1: 1 = install, 2 = upgrade): the service user and group, before the files
# land so that they can be owned by it. Idempotent. (The sysusers.d file in the package holds
# the same definition for systemd-sysusers; it is not on disk yet at this point.)
getent group dechunkd >/dev/null || groupadd -r dechunkd
getent passwd dechunkd >/dev/null || \
	useradd -r -g dechunkd -d /var/lib/dechunkd -M -s /sbin/nologin \
		-c "dechunkd webhook gateway" dechunkd
exit 0
