#!/usr/bin/env bash
# A real S3 server for the tests: a one-node Ceph cluster (one monitor, one memstore OSD) and a
# RADOS Gateway, all state, config, sockets and logs under DIR, so nothing touches /etc/ceph or
# /var/lib/ceph and two copies on different DIRs and ports do not collide.
#
#   test/s3/radosgw.sh start DIR [PORT]   # prints `export CAIRN_TEST_S3_...` lines on stdout
#   test/s3/radosgw.sh stop DIR
#
#   eval "$(test/s3/radosgw.sh start /tmp/rgw 7480)"
#   npx vitest run test/s3-store.test.ts
#   test/s3/radosgw.sh stop /tmp/rgw
#
# Needs: apt-get install -y --no-install-recommends ceph-mon ceph-osd radosgw ceph-common
# and curl >= 7.75 (for --aws-sigv4). Run as root or as a user that can write DIR.
set -euo pipefail

BUCKET=cairn-test
ACCESS_KEY=CAIRNTESTACCESSKEY01
SECRET_KEY=cairn-test-secret-key-0000000000000000000
REGION=us-east-1

die() { echo "radosgw.sh: $*" >&2; exit 1; }

usage() { die "usage: $0 start DIR [PORT] | stop DIR"; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_is_free() {
  python3 -c 'import socket, sys; socket.socket().bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
}

# Waits until "$@" succeeds, for at most $1 seconds.
wait_for() {
  local limit=$1; shift
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

start() {
  local dir=$1 port=${2:-7480}
  for bin in ceph-mon ceph-osd radosgw radosgw-admin ceph monmaptool ceph-authtool curl python3; do
    command -v "$bin" >/dev/null || die "$bin is not installed (apt-get install -y --no-install-recommends ceph-mon ceph-osd radosgw ceph-common curl)"
  done
  if [[ -e $dir/ceph.conf ]]; then
    die "$dir already holds a cluster; run '$0 stop $dir' and remove it first"
  fi
  port_is_free "$port" || die "port $port on 127.0.0.1 is in use; pick another PORT"
  mkdir -p "$dir"/{mon,osd,rgw,run,log,crash}
  dir=$(cd "$dir" && pwd)
  # A half-started cluster is worse than none: stop whatever came up if any step fails.
  trap 'stop "$dir" >/dev/null 2>&1 || true' EXIT
  local conf=$dir/ceph.conf fsid mon_port
  fsid=$(cat /proc/sys/kernel/random/uuid)
  mon_port=$(free_port)

  # Auth is off: the cluster listens on loopback only and lives for one test run. S3 requests
  # are still signed and checked by the gateway with the user's keys.
  cat >"$conf" <<EOF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$mon_port
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
# Daemons default to 'secure' mode towards the monitor, which needs cephx: without this,
# radosgw retries get_initial_auth_request -13 forever.
ms mon client mode = crc
mon allow pool size one = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
run dir = $dir/run
crash dir = $dir/crash
admin socket = $dir/run/\$cluster-\$name.asok
pid file = $dir/run/\$name.pid
log file = $dir/log/\$name.log
keyring = $dir/keyring
log to stderr = false
err to stderr = false

[mon]
mon data = $dir/mon
mon cluster log file = $dir/log/cluster.log

[osd]
osd data = $dir/osd
osd objectstore = memstore
memstore device bytes = 2147483648

[client.rgw]
rgw data = $dir/rgw
rgw frontends = beast endpoint=127.0.0.1:$port
rgw enable usage log = false
EOF
  export CEPH_CONF=$conf

  ceph-authtool --create-keyring "$dir/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" "$dir/monmap" >/dev/null
  ceph-mon -c "$conf" -i a --mkfs --monmap "$dir/monmap" --keyring "$dir/keyring"
  ceph-mon -c "$conf" -i a
  wait_for 30 ceph -c "$conf" mon stat || die "monitor did not come up; see $dir/log/mon.a.log"

  local osd_uuid osd_id
  osd_uuid=$(cat /proc/sys/kernel/random/uuid)
  osd_id=$(ceph -c "$conf" osd new "$osd_uuid")
  ceph-osd -c "$conf" -i "$osd_id" --mkfs --osd-uuid "$osd_uuid" 2>>"$dir/log/osd-mkfs.log"
  ceph -c "$conf" osd crush add "osd.$osd_id" 1 root=default host=localhost >/dev/null 2>&1
  ceph-osd -c "$conf" -i "$osd_id"
  wait_for 60 sh -c "ceph -c '$conf' osd stat | grep -q '1 up'" || die "OSD did not come up; see $dir/log/osd.$osd_id.log"

  radosgw -c "$conf" -n client.rgw
  wait_for 90 curl -sf "http://127.0.0.1:$port/" || die "radosgw did not answer on 127.0.0.1:$port; see $dir/log/client.rgw.log"

  radosgw-admin -c "$conf" user create --uid test --display-name test \
    --access-key "$ACCESS_KEY" --secret-key "$SECRET_KEY" >/dev/null
  # curl 7.x signs but does not send the payload hash S3 requires; this is sha256 of nothing.
  curl -sf -X PUT --aws-sigv4 "aws:amz:$REGION:s3" --user "$ACCESS_KEY:$SECRET_KEY" \
    -H 'x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855' \
    "http://127.0.0.1:$port/$BUCKET" >/dev/null || die "could not create bucket $BUCKET; see $dir/log/client.rgw.log"

  trap - EXIT
  echo "export CAIRN_TEST_S3_ENDPOINT=http://127.0.0.1:$port"
  echo "export CAIRN_TEST_S3_BUCKET=$BUCKET"
  echo "export CAIRN_TEST_S3_ACCESS_KEY=$ACCESS_KEY"
  echo "export CAIRN_TEST_S3_SECRET_KEY=$SECRET_KEY"
  echo "export CAIRN_TEST_S3_REGION=$REGION"
}

stop() {
  local dir=$1 pidfile pid
  [[ -d $dir/run ]] || die "$dir holds no cluster started by this script"
  # Gateway first, then OSD, then monitor: each still has the one below it to talk to.
  for pidfile in "$dir"/run/client.rgw.pid "$dir"/run/osd.*.pid "$dir"/run/mon.*.pid; do
    [[ -f $pidfile ]] || continue
    pid=$(cat "$pidfile")
    if kill "$pid" 2>/dev/null; then
      wait_for 20 sh -c "! kill -0 $pid" || kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
}

case "${1:-}" in
  start) [[ $# -ge 2 && $# -le 3 ]] || usage; start "$2" "${3:-}" ;;
  stop) [[ $# -eq 2 ]] || usage; stop "$2" ;;
  *) usage ;;
esac
