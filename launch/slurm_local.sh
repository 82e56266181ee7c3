#!/bin/bash
# A real one-node SLURM on this machine, for tests and for trying launch/slurm.sbatch (needs root).
#   launch/slurm_local.sh start [DIR]   installs slurm-wlm + munge when missing, writes DIR/slurm.conf (one node
#                                       named `hostname -s`, CPUS cpus), starts munged, slurmctld and slurmd;
#                                       prints the slurm.conf path as its last line (export SLURM_CONF=that).
#   launch/slurm_local.sh stop DIR      stops the three daemons by the PIDs in their pid files.
# DIR defaults to a new /tmp/ganforge-slurm.XXXXXX. Everything (state, spool, logs, the munge socket, free ports)
# lives in DIR, so it neither needs nor touches a system-wide SLURM or munged, and two copies can run at once.
# Environment: CPUS (default 2), MEMORY_MB (default 1024, must be below the machine's).
# Exit status 3: SLURM cannot run here (not root, or the packages cannot be installed); 1: it failed to start.
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin  # the daemons live there; a non-login root shell may lack it

log() { echo "slurm_local: $*" >&2; }

free_port() {  # the kernel picks a free one; the tiny window before slurmctld binds it is acceptable here
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return 0
    log "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    (apt-get install -y -q slurm-wlm munge || { apt-get update -q && apt-get install -y -q slurm-wlm munge; }) >&2
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS > deadline)); then log "timed out waiting for $what"; return 1; fi
        sleep 0.2
    done
}

start() {
    [ "$(id -u)" = 0 ] || { log "needs root (slurmd runs jobs as their users)"; exit 3; }
    install_packages || { log "cannot install slurm-wlm and munge with apt-get"; exit 3; }
    local dir=${1:-$(mktemp -d /tmp/ganforge-slurm.XXXXXX)}
    mkdir -p "$dir"/{state,spool,log,munge}
    dir=$(cd "$dir" && pwd)
    # munged runs as the munge user, so it must reach its own directory (pytest's tmp dirs are 0700 root),
    # and it insists that everyone may traverse the directory of its socket
    chmod 755 "$dir"
    chown munge:munge "$dir/munge"
    chmod 755 "$dir/munge"
    local node cpus=${CPUS:-2} mem=${MEMORY_MB:-1024}
    node=$(hostname -s)
    cat >"$dir/slurm.conf" <<EOF
ClusterName=ganforge-local
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
# a requeued job becomes eligible later; only the periodic pass (default every 60 s) would start it
SchedulerParameters=sched_interval=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=600
InactiveLimit=0
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
    su -s /bin/sh munge -c "/usr/sbin/munged --socket=$dir/munge/munge.socket --pid-file=$dir/munge/munged.pid \
        --log-file=$dir/munge/munged.log --seed-file=$dir/munge/munged.seed"
    wait_for 10 munged test -S "$dir/munge/munge.socket"
    export SLURM_CONF=$dir/slurm.conf
    slurmctld -f "$SLURM_CONF"
    wait_for 30 slurmctld scontrol ping
    slurmd -f "$SLURM_CONF"
    # idle, not just known: sbatch accepts jobs earlier, but they would wait for the node
    wait_for 60 "node $node idle" sh -c "sinfo -h -n '$node' -o %t | grep -qx idle"
    log "up: sinfo shows $node idle; logs in $dir/log"
    echo "$SLURM_CONF"
}

stop() {
    local dir=${1:?usage: $0 stop DIR}
    local pidfile pid
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
        [ -s "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || continue
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
}

case "${1:-}" in
start) shift; start "$@" ;;
stop) shift; stop "$@" ;;
*) echo "usage: $0 start [DIR] | stop DIR" >&2; exit 2 ;;
esac
