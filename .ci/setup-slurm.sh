#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for the Slurm executor test.
#
#   bash .ci/setup-slurm.sh          install (Debian packages) and start munge, slurmctld, slurmd
#   bash .ci/setup-slurm.sh stop     stop the daemons this script started (by their pid files)
#   bash .ci/setup-slurm.sh status   exit 0 when the cluster answers with an idle node
#
# Needs root and apt-get (Debian/Ubuntu), no systemd. Idempotent: a second run
# only checks. The daemons listen on the loopback address. The node declares
# at least 4 CPUs and 16 GB (SlurmdParameters=config_overrides, testing only)
# so that group jobs fit on a 2-core CI machine, and two fake GPUs (device
# files /dev/nahual-gpu0,1) where mknod is allowed. Where it cannot work, it
# prints the reason and exits non-zero.
set -euo pipefail

STATE=/run/nahual-slurm            # pid files of what this script started
CONF=/etc/slurm/slurm.conf
MARK="# written by nahual .ci/setup-slurm.sh"

fail() { echo "setup-slurm: $*" >&2; exit 1; }

cluster_idle() {
    command -v sinfo >/dev/null 2>&1 || return 1
    timeout 10 sinfo -h -o '%t' 2>/dev/null | grep -Eq '^(idle|mix|alloc)'
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2; shift 2
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.5
    done
}

stop_daemons() {
    [ -d "$STATE" ] || { echo "setup-slurm: nothing started by this script"; return 0; }
    for name in slurmd slurmctld munged; do
        local file="$STATE/$name.pid"
        [ -f "$file" ] || continue
        local pid; pid=$(cat "$file")
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid"
            wait_for 30 "$name to stop" bash -c "! kill -0 $pid 2>/dev/null" || kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$file"
        echo "setup-slurm: stopped $name ($pid)"
    done
}

case "${1:-start}" in
    stop) stop_daemons; exit 0 ;;
    status) cluster_idle; exit $? ;;
    start) ;;
    *) fail "usage: $0 [start|stop|status]" ;;
esac

if cluster_idle; then
    echo "setup-slurm: a Slurm cluster already answers with an idle node"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || fail "needs root to install and start Slurm daemons (running as $(id -un))"
[ "$(uname -s)" = Linux ] || fail "needs Linux, this is $(uname -s)"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
    || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || fail "Slurm is not installed and there is no apt-get to install it"
    echo "setup-slurm: installing slurmctld slurmd slurm-client munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null 2>&1 || fail "apt-get update failed (no network or no package mirror?)"
    apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null 2>&1 \
        || fail "apt-get install slurmctld slurmd slurm-client munge failed"
fi
MUNGED=$(command -v munged || echo /usr/sbin/munged)
SLURMCTLD=$(command -v slurmctld || echo /usr/sbin/slurmctld)
SLURMD=$(command -v slurmd || echo /usr/sbin/slurmd)

mkdir -p "$STATE"

# munge: the authentication daemon (the package's postinst made the key and user)
if ! (munge -n | unmunge) >/dev/null 2>&1; then
    [ -f /etc/munge/munge.key ] || { mkdir -p /etc/munge; dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null; }
    id munge >/dev/null 2>&1 || fail "user munge is missing (the munge package did not install cleanly)"
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    runuser -u munge -- "$MUNGED" --force || fail "munged did not start"
    wait_for 20 munge bash -c '(munge -n | unmunge) >/dev/null 2>&1' || fail "munge does not answer"
    cat /run/munge/munged.pid > "$STATE/munged.pid" 2>/dev/null || true
fi

# slurm.conf: one node on the loopback address, no accounting
HOST=$(hostname -s)
CPUS=$(nproc); [ "$CPUS" -ge 4 ] || CPUS=4
if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    fail "$CONF exists and was not written by this script; not touching it"
fi
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm

# Two fake GPUs (character devices) so that gpu requests can be scheduled and
# checked; left out where mknod is not allowed.
GRES_TYPES="" NODE_GRES=""
for i in 0 1; do
    [ -e "/dev/nahual-gpu$i" ] || mknod "/dev/nahual-gpu$i" c 195 "$i" 2>/dev/null || break
done
if [ -e /dev/nahual-gpu0 ] && [ -e /dev/nahual-gpu1 ]; then
    GRES_TYPES="GresTypes=gpu" NODE_GRES="Gres=gpu:2"
    printf '%s\nName=gpu File=/dev/nahual-gpu[0-1]\n' "$MARK" > /etc/slurm/gres.conf
else
    echo "setup-slurm: mknod not allowed: the node has no (fake) GPUs"
    rm -f /etc/slurm/gres.conf
fi
cat > "$CONF" <<EOF
$MARK
ClusterName=nahual-ci
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=300
SlurmdParameters=config_overrides
$GRES_TYPES
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=16000 $NODE_GRES State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

start_daemon() {  # start_daemon NAME BINARY PIDFILE
    local name=$1 binary=$2 pidfile=$3
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        return 0
    fi
    "$binary" || fail "$name did not start (see /var/log/slurm/$name.log)"
    wait_for 20 "$name pid file" test -s "$pidfile" || fail "$name wrote no pid file (see /var/log/slurm/$name.log)"
    cp "$pidfile" "$STATE/$name.pid"
}
start_daemon slurmctld "$SLURMCTLD" /run/slurm/slurmctld.pid
start_daemon slurmd "$SLURMD" /run/slurm/slurmd.pid

if ! wait_for 60 "an idle node" cluster_idle; then
    scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
    wait_for 30 "an idle node" cluster_idle || fail "the node did not become idle: $(sinfo 2>&1 | tail -2)"
fi
echo "setup-slurm: cluster nahual-ci up: node $HOST, $CPUS CPUs, ${NODE_GRES:-no GPUs}, partition debug"
