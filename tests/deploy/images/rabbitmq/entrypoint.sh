#!/bin/sh
# Writes the settings the environment asks for, then runs the command as the rabbitmq user.
set -eu
conf=/etc/rabbitmq/conf.d/05-environment.conf
: > "$conf"
if [ -n "${RABBITMQ_DEFAULT_USER:-}" ]; then
  echo "default_user = $RABBITMQ_DEFAULT_USER" >> "$conf"
  echo "default_pass = ${RABBITMQ_DEFAULT_PASS:-}" >> "$conf"
fi
echo "loopback_users = none" >> "$conf"
cookie=/var/lib/rabbitmq/.erlang.cookie
if [ -n "${RABBITMQ_ERLANG_COOKIE:-}" ]; then
  printf '%s' "$RABBITMQ_ERLANG_COOKIE" > "$cookie"
fi
chown -R rabbitmq:rabbitmq /var/lib/rabbitmq "$conf"
[ ! -f "$cookie" ] || chmod 0400 "$cookie"
if [ "$1" = rabbitmq-server ]; then
  shift
  exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups \
    env HOME=/var/lib/rabbitmq /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
fi
exec "$@"
