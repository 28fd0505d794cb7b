#!/bin/bash
# Stop the benchmark peers started by start.sh, by the pids it recorded.
#   bash bench/peers/stop.sh [prosody|ejabberd|all]     (default: all)
BENCH_DIR=${BENCH_DIR:-/var/lib/hipchat-bench}
WHICH=${1:-all}

stop_pid() {  # stop_pid NAME PIDFILE
  [ -f "$2" ] || { echo "$1 not running (no $2)"; return; }
  local pid; pid=$(cat "$2")
  if kill -TERM "$pid" 2>/dev/null; then
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  fi
  rm -f "$2"; echo "$1 $pid stopped"
}

stop_prosody() { stop_pid prosody "$BENCH_DIR/prosody/server.pid"; }

stop_ejabberd() {
  local d=$BENCH_DIR/ejabberd
  [ -f "$d/server.pid" ] || { echo "ejabberd not running (no $d/server.pid)"; return; }
  env HOME=/var/lib/ejabberd setpriv --reuid=ejabberd --regid=ejabberd --init-groups ejabberdctl \
    --ctl-config "$d/ejabberdctl.cfg" --config "$d/ejabberd.yml" --spool "$d/db" --logs "$d/log" stop >/dev/null 2>&1 || true
  stop_pid ejabberd "$d/server.pid"
  # The epmd this node started (owned by user ejabberd), by pid.
  for pid in $(ps -u ejabberd -o pid=,stat=,comm= | awk '$3=="epmd" && $2 !~ /Z/ {print $1}'); do
    kill -TERM "$pid" && echo "epmd $pid stopped"
  done
}

case $WHICH in
  prosody) stop_prosody ;;
  ejabberd) stop_ejabberd ;;
  all) stop_prosody; stop_ejabberd ;;
  *) echo "usage: $0 [prosody|ejabberd|all]" >&2; exit 2 ;;
esac
