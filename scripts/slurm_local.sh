#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, to try `encseg study run --launcher slurm` and to test against.
#
#   sudo scripts/slurm_local.sh install   # apt-get install slurm-wlm munge (Debian/Ubuntu)
#   sudo scripts/slurm_local.sh start     # munge key, /etc/slurm/slurm.conf, munged + slurmctld + slurmd
#   sinfo; squeue                          # one node, partition `debug`
#   sudo scripts/slurm_local.sh stop      # stop the three daemons (the config stays)
#   scripts/slurm_local.sh status         # exit 0 when the cluster answers and its node is idle/mixed/allocated
#
# `up` = install (when sbatch is missing) + start. Needs root (daemons, /etc). The node gets this machine's
# cores and memory as `slurmd -C` reports them. No cgroups (proctrack/linuxproc, task/none) so it runs in a
# container; no slurmdbd, so `sacct` has no data: finished jobs are listed in $STATE/jobcomp.log and in
# `scontrol show job` for MinJobAge seconds. Requeue is allowed (JobRequeue=1).
# It refuses to overwrite an /etc/slurm/slurm.conf that it did not write.
set -euo pipefail

STATE=${ENCSEG_SLURM_STATE:-/var/lib/encseg-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by encseg scripts/slurm_local.sh"
PARTITION=debug

log() { echo "slurm_local: $*" >&2; }

need_root() {
    if [ "$(id -u)" != 0 ]; then log "run as root (it starts daemons and writes /etc/slurm)"; exit 2; fi
}

install() {
    need_root
    if command -v sbatch >/dev/null && command -v slurmctld >/dev/null && command -v munged >/dev/null; then
        return 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends slurm-wlm munge
}

write_munge_key() {
    mkdir -p /etc/munge /run/munge /var/log/munge /var/lib/munge
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
    chmod 0700 /etc/munge
    chmod 0400 /etc/munge/munge.key
}

write_conf() {
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        log "$CONF exists and was not written by this script; leaving it alone"
        exit 3
    fi
    local node host cpus mem
    node=$(slurmd -C | head -1)               # NodeName=<host> CPUs=.. Boards=.. ... RealMemory=..
    host=$(hostname -s)
    cpus=$(sed -E 's/.* CPUs=([0-9]+).*/\1/' <<<"$node")
    mem=$(sed -E 's/.* RealMemory=([0-9]+).*/\1/' <<<"$node")
    mkdir -p /etc/slurm "$STATE/ctld" "$STATE/d" /var/log/slurm
    cat > "$CONF" <<EOF
$MARK (one node, for trying encseg's SLURM launcher and its tests)
ClusterName=encseg
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
# no cgroups: works inside containers
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/jobcomp.log
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
# a job without --mem gets its share per CPU, not the whole node
DefMemPerCPU=$((mem / cpus))
ReturnToService=2
JobRequeue=1
# finished jobs stay visible to scontrol for an hour (a test compares jobs that ended minutes apart); preempted/requeued jobs are killed quickly
MinJobAge=3600
KillWait=10
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
$node State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

status() {
    local state
    state=$(sinfo -h -N -o '%T' 2>/dev/null | head -1) || return 1
    case "$state" in
        idle*|mixed*|allocated*|completing*) echo "$state"; return 0 ;;
        *) echo "${state:-no answer}"; return 1 ;;
    esac
}

stop() {
    need_root
    local f pid
    for f in "$STATE/slurmd.pid" "$STATE/slurmctld.pid" /run/munge/munged.pid; do
        [ -s "$f" ] || continue
        pid=$(cat "$f")
        if kill "$pid" 2>/dev/null; then
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        fi
        rm -f "$f"
    done
}

start() {
    need_root
    command -v slurmctld >/dev/null || { log "slurm is not installed: run '$0 install' first"; exit 4; }
    write_munge_key
    write_conf
    stop
    runuser -u munge -- munged
    munge -n | unmunge >/dev/null || { log "munge does not work"; exit 5; }
    slurmctld -c -i   # -c: a clean state (no jobs from an earlier session)
    slurmd
    for _ in $(seq 60); do
        if status >/dev/null; then
            log "up: $(sinfo -h -o '%P %D node(s) %c cpus %m MB %T')"
            return 0
        fi
        scontrol update nodename="$(hostname -s)" state=resume 2>/dev/null || true
        sleep 1
    done
    log "the node did not come up; see $STATE/slurmctld.log and $STATE/slurmd.log"
    tail -n 20 "$STATE/slurmctld.log" "$STATE/slurmd.log" >&2 || true
    exit 6
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    up) install; start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 install|start|up|stop|status" >&2; exit 2 ;;
esac
