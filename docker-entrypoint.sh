#!/bin/sh
# `server ...` runs cairn-server, anything else is a cairn client command (agent, snapshot, restore, ...).
set -e
if [ "$1" = "server" ]; then
  shift
  exec /app/bin/cairn-server "$@"
fi
exec /app/bin/cairn "$@"
