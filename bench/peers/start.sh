#!/bin/bash
# Start the benchmark peers installed by install.sh, each as a process this script owns.
#   bash bench/peers/start.sh [prosody|ejabberd|all]     (default: all)
# Prints "<peer> <pid> <port>" per peer and writes the pid to /var/lib/hipchat-bench/<peer>/server.pid.
# Measure one server at a time: stop the other with stop.sh (the machine has two cores).
set -euo pipefail
BENCH_DIR=${BENCH_DIR:-/var/lib/hipchat-bench}
WHICH=${1:-all}

wait_port() {  # wait_port PORT SECONDS
  for _ in $(seq 1 $(( $2 * 5 ))); do
    if (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  return 1
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# setpriv rather than su/runuser: PAM would reset the open-file limit to 1024.
ulimit -n "$(ulimit -Hn)"

start_prosody() {
  local d=$BENCH_DIR/prosody
  if running "$d/server.pid"; then echo "prosody $(cat "$d/server.pid") 15222 (already running)"; return; fi
  nohup setpriv --reuid=prosody --regid=prosody --init-groups \
    /usr/bin/prosody --config "$d/prosody.cfg.lua" -F > "$d/stdout.log" 2>&1 &
  echo $! > "$d/server.pid"
  wait_port 15222 20 || { echo "prosody did not open 15222; see $d/stdout.log" >&2; exit 1; }
  echo "prosody $(cat "$d/server.pid") 15222"
}

start_ejabberd() {
  local d=$BENCH_DIR/ejabberd
  if running "$d/server.pid"; then echo "ejabberd $(cat "$d/server.pid") 25222 (already running)"; return; fi
  local ctl="env HOME=/var/lib/ejabberd setpriv --reuid=ejabberd --regid=ejabberd --init-groups ejabberdctl
             --ctl-config $d/ejabberdctl.cfg --config $d/ejabberd.yml --spool $d/db --logs $d/log"
  $ctl start
  $ctl started
  # The Erlang VM of this node (ejabberdctl detaches it); its pid is what the benchmark measures.
  local pid
  pid=$(pgrep -u ejabberd -f "beam.smp.*-name ejabberd@localhost|beam.smp.*-sname ejabberd@localhost|beam.smp.*ejabberd@localhost" | head -1)
  echo "$pid" > "$d/server.pid"
  wait_port 25222 30 || { echo "ejabberd did not open 25222; see $d/log/" >&2; exit 1; }
  echo "ejabberd $pid 25222"
}

case $WHICH in
  prosody) start_prosody ;;
  ejabberd) start_ejabberd ;;
  all) start_prosody; start_ejabberd ;;
  *) echo "usage: $0 [prosody|ejabberd|all]" >&2; exit 2 ;;
esac
