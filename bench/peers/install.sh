#!/bin/bash
# Install Prosody and ejabberd from Debian for the XMPP comparison benchmark, without letting the
# packages run them as system services, and write their benchmark configs and a TLS certificate.
#
#   bash bench/peers/install.sh          # then: bash bench/peers/start.sh; bash bench/peers/stop.sh
#
# Each peer runs on loopback on its own ports (Prosody 15222, ejabberd 25222 and its HTTP API on
# 25285) so it can run beside the appliance (5222/5223). Runtime state (configs, data, logs, pid
# files) lives under /var/lib/hipchat-bench/<peer>. The configs follow /work/shared/peers (every
# change from Debian's stock config is marked BENCH: there): message archiving on, in-band
# registration off, rate limits and shapers out of the way.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BENCH_DIR=${BENCH_DIR:-/var/lib/hipchat-bench}

# Keep the packages' maintainer scripts from starting the daemons on the default ports.
POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$POLICY"; chmod 755 "$POLICY"; REMOVE_POLICY=1
fi
export DEBIAN_FRONTEND=noninteractive
if ! dpkg -s prosody ejabberd lua-dbi-sqlite3 >/dev/null 2>&1; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends prosody ejabberd lua-dbi-sqlite3 erlang-p1-sqlite3 openssl
fi
[ "${REMOVE_POLICY:-0}" = 1 ] && rm -f "$POLICY"

# A package may still have started its daemon where policy-rc.d is not honoured: say so, do not kill.
for name in prosody beam.smp; do
  if pgrep -x "$name" >/dev/null; then echo "note: a $name process runs already (not started by this script)" >&2; fi
done

mkdir -p "$BENCH_DIR/prosody/data" "$BENCH_DIR/prosody/certs" "$BENCH_DIR/ejabberd/db" "$BENCH_DIR/ejabberd/log"

# One self-signed certificate for "localhost" shared by both peers; the load generator trusts it
# with --ca-file $BENCH_DIR/localhost.crt.
if [ ! -f "$BENCH_DIR/localhost.crt" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost" -addext "basicConstraints=critical,CA:TRUE" \
    -keyout "$BENCH_DIR/localhost.key" -out "$BENCH_DIR/localhost.crt" 2>/dev/null
fi
install -o prosody -g prosody -m 0644 "$BENCH_DIR/localhost.crt" "$BENCH_DIR/prosody/certs/localhost.crt"
install -o prosody -g prosody -m 0600 "$BENCH_DIR/localhost.key" "$BENCH_DIR/prosody/certs/localhost.key"
cat "$BENCH_DIR/localhost.key" "$BENCH_DIR/localhost.crt" > "$BENCH_DIR/ejabberd/server.pem"

sed "s|@BENCH_DIR@|$BENCH_DIR|g" "$HERE/prosody.cfg.lua" > "$BENCH_DIR/prosody/prosody.cfg.lua"
sed "s|@BENCH_DIR@|$BENCH_DIR|g" "$HERE/ejabberd.yml" > "$BENCH_DIR/ejabberd/ejabberd.yml"
sed "s|@BENCH_DIR@|$BENCH_DIR|g" "$HERE/ejabberdctl.cfg" > "$BENCH_DIR/ejabberd/ejabberdctl.cfg"
chown -R prosody:prosody "$BENCH_DIR/prosody"
chown -R ejabberd:ejabberd "$BENCH_DIR/ejabberd"
chmod 600 "$BENCH_DIR/ejabberd/server.pem" "$BENCH_DIR/ejabberd/ejabberd.yml"
echo "prosody $(dpkg-query -W -f '${Version}' prosody), ejabberd $(dpkg-query -W -f '${Version}' ejabberd) ready under $BENCH_DIR"
