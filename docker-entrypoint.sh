#!/bin/sh
# `server ...` runs cairn-server, anything else is a cairn client command (agent, snapshot, restore, ...).
set -e
if [ "$1" = "server" ]; then
  shift
  exec node /app/dist/server/main.js "$@"
fi
exec node /app/dist/client/cli.js "$@"
