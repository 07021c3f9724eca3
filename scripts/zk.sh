#!/usr/bin/env bash
# A local ZooKeeper for trying zkgate by hand (Debian's `zookeeper` package, standalone, loopback).
#   scripts/zk.sh up [PORT]     # default 2181; data in /tmp/zkgate-zk
#   scripts/zk.sh down
#   scripts/zk.sh register SERVICE HOST:PORT [WEIGHT]   # a persistent native-JSON instance node
#   scripts/zk.sh deregister SERVICE HOST:PORT
set -euo pipefail
dir=${ZK_DIR:-/tmp/zkgate-zk}
port=${2:-2181}
cli() { /usr/share/zookeeper/bin/zkCli.sh -server "127.0.0.1:$(cat "$dir/port")" "$@" >/dev/null 2>&1; }
case "${1:-}" in
  up)
    "$(dirname "$0")/ensure-packages.sh" zookeeper
    mkdir -p "$dir/data"
    echo "$port" > "$dir/port"
    cat > "$dir/zoo.cfg" <<CFG
tickTime=500
initLimit=10
syncLimit=5
dataDir=$dir/data
clientPort=$port
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,stat,mntr
CFG
    java -Xmx256m -cp /usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar \
      org.apache.zookeeper.server.quorum.QuorumPeerMain "$dir/zoo.cfg" > "$dir/zk.log" 2>&1 &
    echo $! > "$dir/pid"
    for _ in $(seq 100); do
      [ "$(echo ruok | timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port; cat >&3; cat <&3" 2>/dev/null)" = imok ] && { echo "ZooKeeper up on 127.0.0.1:$port (log: $dir/zk.log)"; exit 0; }
      sleep 0.2
    done
    echo "ZooKeeper did not start; see $dir/zk.log" >&2; exit 1 ;;
  down)
    [ -f "$dir/pid" ] && kill "$(cat "$dir/pid")" 2>/dev/null || true
    rm -rf "$dir"; echo "ZooKeeper stopped" ;;
  register)
    svc=${2:?service}; addr=${3:?host:port}; weight=${4:-1}
    cli create /zkgate "" || true; cli create /zkgate/services "" || true; cli create "/zkgate/services/$svc" "" || true
    cli create "/zkgate/services/$svc/$addr" "{\"host\":\"${addr%:*}\",\"port\":${addr##*:},\"weight\":$weight}"
    echo "registered $addr in /zkgate/services/$svc" ;;
  deregister)
    cli delete "/zkgate/services/${2:?service}/${3:?host:port}"; echo "deregistered $3" ;;
  *) sed -n '2,6p' "$0"; exit 2 ;;
esac
