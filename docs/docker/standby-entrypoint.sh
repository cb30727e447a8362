#!/bin/sh
# The DR site container: sshd in the foreground. The standby PostgreSQL is built
# and started later by `logship standby restore orders` (see docker-compose.yml).
set -eu

hostkey=/etc/ssh/hostkeys/ssh_host_ed25519_key
client=/client-keys/id_ed25519

# Kept in its own volume: a restarted standby keeps its identity, and the
# primary's known_hosts stays valid.
if [ ! -f "$hostkey" ]; then
  ssh-keygen -q -t ed25519 -N '' -C dr.example.net -f "$hostkey"
fi

# Demo bootstrap only: the client key pair and the known_hosts line are made here
# and handed to the logship container through the client-keys volume. In
# production make the key at the primary site, install its public half here, and
# check the standby's host key fingerprint out of band before trusting it.
if [ ! -f "$client" ]; then
  ssh-keygen -q -t ed25519 -N '' -C logship@primary -f "$client"
fi
install -o root -g root -m 0644 "$client.pub" /etc/ssh/authorized_keys/logship
printf 'dr.example.net %s\n' "$(cut -d ' ' -f 1,2 "$hostkey.pub")" > /client-keys/known_hosts
chown postgres:postgres "$client" "$client.pub" /client-keys/known_hosts
chmod 0600 "$client"
chmod 0644 "$client.pub" /client-keys/known_hosts

# Where shipped files land (sites.dr.root): owned by the login user, private.
chown postgres:postgres /var/lib/logship/incoming
chmod 0700 /var/lib/logship/incoming

exec /usr/sbin/sshd -D -e
