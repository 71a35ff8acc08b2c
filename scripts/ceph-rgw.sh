#!/usr/bin/env bash
# A one-node Ceph cluster with an S3 gateway, everything under one
# directory and nothing under /etc: 1 monitor, 1 BlueStore OSD on a sparse
# file, radosgw on loopback, an S3 user with the given keys. No manager:
# nothing here needs one. The S3 tests' second real server (tests/s3_store.rs).
#   scripts/ceph-rgw.sh start DIR S3_PORT ACCESS_KEY SECRET_KEY [MON_PORT]  # ~20 s
#   scripts/ceph-rgw.sh bucket DIR NAME                           # creates it
#   scripts/ceph-rgw.sh stop DIR
# Needs Debian's ceph-mon ceph-osd radosgw ceph-common (scripts/setup.sh).
set -euo pipefail
cmd=$1 D=$(realpath -m "$2")
CONF=$D/ceph.conf

stop() {
    local p pid
    for p in "$D"/run/*.pid; do
        pid=$(cat "$p" 2>/dev/null) && kill "$pid" 2>/dev/null || true
    done
    for p in "$D"/run/*.pid; do
        pid=$(cat "$p" 2>/dev/null) || continue
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$p"
    done
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

case $cmd in
start)
    PORT=$3 AK=$4 SK=$5
    mkdir -p "$D"/{run,log,mon,osd/ceph-0,rgw}
    # On failure, say which step failed and show the daemons' last words:
    # the temporary directory is gone by the time anyone reads the report.
    trap 'rc=$?; stop; echo "ceph-rgw: start failed at line $LINENO (exit $rc); logs in $D/log" >&2
          for f in "$D"/log/*; do echo "== $f" >&2; tail -n 15 "$f" >&2; done' ERR
    FSID=$(uuidgen) MON_PORT=${6:-$(free_port)}
    cat >"$CONF" <<EOF
[global]
fsid = $FSID
mon host = v1:127.0.0.1:$MON_PORT
public addr = 127.0.0.1
ms bind msgr2 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = $D/\$name.keyring
run dir = $D/run
pid file = $D/run/\$name.pid
admin socket = $D/run/\$name.asok
log file = $D/log/\$name.log
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon allow pool delete = true
# The monitor stops itself when its file system has under 5% free, which a
# shared test machine may well have; this cluster holds a few MiB.
mon data avail crit = 0
mon data avail warn = 0
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
setuser = root
setgroup = root
[mon]
mon data = $D/mon/\$cluster-\$id
keyring = $D/mon/\$cluster-\$id/keyring
[osd]
osd data = $D/osd/\$cluster-\$id
osd objectstore = bluestore
bluestore block create = true
bluestore block size = 8589934592
osd memory target = 536870912
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$PORT
rgw data = $D/rgw
rgw dns name = 127.0.0.1
EOF
    ceph-authtool --create-keyring "$D/mon..keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    ceph-authtool --create-keyring "$D/client.admin.keyring" --gen-key -n client.admin \
        --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
    ceph-authtool "$D/mon..keyring" --import-keyring "$D/client.admin.keyring" >/dev/null
    monmaptool --create --addv a "[v1:127.0.0.1:$MON_PORT]" --fsid "$FSID" "$D/monmap" >/dev/null
    ceph-mon -c "$CONF" --mkfs -i a --monmap "$D/monmap" --keyring "$D/mon..keyring"
    ceph-mon -c "$CONF" -i a 2>>"$D/log/start.log"
    OSD_UUID=$(uuidgen)
    ID=$(ceph -c "$CONF" osd new "$OSD_UUID")
    ceph-authtool --create-keyring "$D/osd.$ID.keyring" --gen-key -n "osd.$ID" >/dev/null
    ceph -c "$CONF" auth add "osd.$ID" osd 'allow *' mon 'allow profile osd' -i "$D/osd.$ID.keyring" >/dev/null 2>&1
    mkdir -p "$D/osd/ceph-$ID"
    ceph-osd -c "$CONF" -i "$ID" --mkfs --osd-uuid "$OSD_UUID" >/dev/null 2>&1
    ceph-osd -c "$CONF" -i "$ID" 2>>"$D/log/start.log"
    ceph -c "$CONF" auth get-or-create client.rgw.a mon 'allow rw' osd 'allow rwx' -o "$D/client.rgw.a.keyring"
    radosgw -c "$CONF" -n client.rgw.a 2>>"$D/log/start.log"
    for _ in $(seq 600); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
        sleep 0.1
    done
    radosgw-admin -c "$CONF" user create --uid=hoard --display-name=hoard \
        --access-key="$AK" --secret="$SK" >/dev/null
    printf '%s %s %s\n' "$PORT" "$AK" "$SK" >"$D/s3"
    ;;
bucket)
    read -r PORT AK SK <"$D/s3"
    # A SigV4-signed CreateBucket (RGW wants the payload hash header,
    # which this curl does not send by itself); `-f`: an S3 error fails.
    curl -sSf --aws-sigv4 "aws:amz:us-east-1:s3" --user "$AK:$SK" \
        -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -X PUT "http://127.0.0.1:$PORT/$3" >/dev/null
    ;;
stop) stop ;;
*) echo "usage: $0 start|bucket|stop DIR ..." >&2; exit 2 ;;
esac
