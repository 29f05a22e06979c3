#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for the gpu_slurm executor's tests.
#
#   scripts/slurm_cluster.sh [start]   install (Debian: slurmctld slurmd slurm-client munge),
#                                      write /etc/slurm/slurm.conf, start munged, slurmctld and
#                                      slurmd, wait until the node is idle. Idempotent: starts only
#                                      what is not running; fast when all is up.
#   scripts/slurm_cluster.sh stop      stop slurmd, slurmctld and munged (those started here).
#   scripts/slurm_cluster.sh status    exit 0 when the controller answers and the node is usable.
#
# No systemd here (PID 1 is not an init): the daemons are started directly and daemonize
# themselves. Needs root. Never touches a slurm.conf it did not write (the marker line below):
# on a machine with a real cluster configuration it refuses instead of replacing it.
#
# The configuration is the smallest that runs in a VM without delegated cgroups: process
# tracking by /proc (proctrack/linuxproc), no task or cgroup plugins, no accounting database
# (so `sacct` answers "accounting storage is disabled"; the executor reads job states from
# squeue/scontrol, which keep finished jobs for MinJobAge seconds, and from its own exit records).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$REPO/.state"
CONF=/etc/slurm/slurm.conf
MARKER="# written by agent-infra scripts/slurm_cluster.sh"
LOGDIR=/var/log/slurm
RUNDIR=/run/slurm
CTLD_PID="$RUNDIR/slurmctld.pid"
SLURMD_PID="$RUNDIR/slurmd.pid"
MUNGE_PID=/run/munge/munged.pid
WAIT_SECONDS=60
PACKAGES=(slurmctld slurmd slurm-client munge)

step() { printf '==> slurm: %s\n' "$*" >&2; }
die() {
    printf 'slurm_cluster: error: %s\n' "$*" >&2
    exit 1
}

[[ $EUID -eq 0 ]] || die "needs root (installs packages, writes $CONF, starts daemons)"

mkdir -p "$STATE"
# One run at a time (the test fixture of several pytest processes may call it together). The
# daemons started below must not inherit this lock's fd (9>&-), or it would stay held forever,
# nor our stdout/stderr (a caller reading them to the end would wait for the daemons to exit).
exec 9>"$STATE/slurm_cluster.lock"
flock 9

pid_alive() { # PIDFILE NAME -> true when the pid file names a live process called NAME
    local pid
    [[ -r "$1" ]] || return 1
    pid="$(<"$1")"
    [[ -n "$pid" && -d "/proc/$pid" && "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$2" ]]
}

wait_until() { # SECONDS WHAT COMMAND... -> polls COMMAND every 0.2 s
    local limit="$1" what="$2" deadline
    shift 2
    deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
    step "$what after $((SECONDS - deadline + limit))s"
}

# ---------------------------------------------------------------------------------------
# packages
# ---------------------------------------------------------------------------------------
ensure_packages() {
    local missing=()
    command -v slurmctld >/dev/null 2>&1 || missing+=(slurmctld)
    command -v slurmd >/dev/null 2>&1 || missing+=(slurmd)
    command -v sbatch >/dev/null 2>&1 || missing+=(slurm-client)
    command -v munged >/dev/null 2>&1 || missing+=(munge)
    ((${#missing[@]})) || return 0
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install ${PACKAGES[*]} yourself"
    step "apt-get install ${PACKAGES[*]}"
    # The packages' init scripts do not start anything without an init system; we start the
    # daemons ourselves below. needrestart (if present) has nothing to restart here.
    if ! apt_install; then
        # A fresh machine has no package lists yet.
        step "apt-get update (install failed; lists may be missing)"
        apt-get update -q </dev/null >&2
        apt_install || die "apt-get install ${PACKAGES[*]} failed"
    fi
}

apt_install() {
    DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 \
        apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" </dev/null >&2
}

# ---------------------------------------------------------------------------------------
# munge (Slurm's authentication)
# ---------------------------------------------------------------------------------------
munge_ok() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

ensure_munge() {
    install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
    install -d -o munge -g munge -m 0755 /run/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        step "create /etc/munge/munge.key"
        runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    if pid_alive "$MUNGE_PID" munged; then
        if munge_ok; then
            step "munged running (pid $(<"$MUNGE_PID"))"
            return
        fi
        stop_pid "$MUNGE_PID" munged # alive but not answering: a new one needs its socket
    fi
    step "start munged"
    runuser -u munge -- munged </dev/null >"$STATE/munged.start.log" 2>&1 9>&- ||
        die "munged did not start: $(tail -n 20 "$STATE/munged.start.log")"
    wait_until 20 "munge answers" munge_ok || die "munged started but 'munge -n | unmunge' fails; see /var/log/munge/munged.log"
}

# ---------------------------------------------------------------------------------------
# slurm.conf
# ---------------------------------------------------------------------------------------
write_conf() { # -> 0 when the file changed
    local host cpus mem_total margin mem new
    host="$(hostname -s)"
    cpus="$(nproc)"
    mem_total="$(free -m | awk '/^Mem:/ {print $2}')"
    # Leave the OS some room: slurmd refuses a node whose RealMemory exceeds what it finds.
    margin=$((mem_total / 20 > 256 ? mem_total / 20 : 256))
    mem=$((mem_total - margin))
    new="$(
        cat <<EOF
$MARKER: edit the script, not this file.
ClusterName=agentinfra
SlurmctldHost=$host(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
# No delegated cgroups in this VM: track job processes through /proc, no task/cgroup plugins.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# Finished jobs stay visible to squeue/scontrol this long (there is no accounting database).
MinJobAge=600
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    )"
    if [[ -e "$CONF" ]] && ! grep -qF "$MARKER" "$CONF"; then
        die "$CONF exists and was not written by this script: refusing to replace a real cluster's configuration"
    fi
    if [[ -e "$CONF" && "$(<"$CONF")" == "$new" ]]; then
        return 1
    fi
    step "write $CONF (node $host: $cpus CPUs, ${mem} MB)"
    install -d -m 0755 /etc/slurm
    printf '%s\n' "$new" >"$CONF.tmp"
    chmod 0644 "$CONF.tmp"
    mv "$CONF.tmp" "$CONF"
    return 0
}

# ---------------------------------------------------------------------------------------
# daemons
# ---------------------------------------------------------------------------------------
ctld_ok() { scontrol ping 2>/dev/null | grep -q 'is UP'; }

node_state() { sinfo -h -o %T 2>/dev/null | head -n1; }

node_usable() {
    case "$(node_state)" in
    idle | mixed | allocated | completing) return 0 ;;
    # Drained by an earlier run (e.g. a killed slurmd): it would never take jobs again.
    drain*) scontrol update NodeName="$(hostname -s)" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    return 1
}

stop_pid() { # PIDFILE NAME
    local pid
    pid_alive "$1" "$2" || return 0
    pid="$(<"$1")"
    step "stop $2 (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        [[ -d "/proc/$pid" ]] || return 0
        sleep 0.2
    done
    kill -9 "$pid" 2>/dev/null || true
}

start_daemons() {
    install -d -o slurm -g slurm -m 0755 "$RUNDIR" "$LOGDIR" /var/spool/slurmctld
    install -d -o root -g root -m 0755 /var/spool/slurmd
    if pid_alive "$CTLD_PID" slurmctld; then
        step "slurmctld running (pid $(<"$CTLD_PID"))"
    else
        step "start slurmctld (log: $LOGDIR/slurmctld.log)"
        slurmctld </dev/null >"$STATE/slurmctld.start.log" 2>&1 9>&- ||
            die "slurmctld did not start: $(tail -n 20 "$STATE/slurmctld.start.log" "$LOGDIR/slurmctld.log" 2>/dev/null)"
    fi
    wait_until "$WAIT_SECONDS" "slurmctld answers" ctld_ok ||
        die "slurmctld does not answer 'scontrol ping'; tail of $LOGDIR/slurmctld.log: $(tail -n 20 "$LOGDIR/slurmctld.log" 2>/dev/null)"
    if pid_alive "$SLURMD_PID" slurmd; then
        step "slurmd running (pid $(<"$SLURMD_PID"))"
    else
        step "start slurmd (log: $LOGDIR/slurmd.log)"
        slurmd </dev/null >"$STATE/slurmd.start.log" 2>&1 9>&- ||
            die "slurmd did not start: $(tail -n 20 "$STATE/slurmd.start.log" "$LOGDIR/slurmd.log" 2>/dev/null)"
    fi
    if ! wait_until "$WAIT_SECONDS" "node $(hostname -s) usable" node_usable; then
        die "node state is '$(node_state)' after ${WAIT_SECONDS}s; $(scontrol show node "$(hostname -s)" 2>&1 | grep -E 'State|Reason'); tail of $LOGDIR/slurmd.log: $(tail -n 20 "$LOGDIR/slurmd.log" 2>/dev/null)"
    fi
}

cmd_start() {
    local start=$SECONDS
    ensure_packages
    ensure_munge
    if write_conf; then
        # Running daemons still have the old configuration: restart them with the new one.
        stop_pid "$SLURMD_PID" slurmd
        stop_pid "$CTLD_PID" slurmctld
    fi
    start_daemons
    step "cluster up in $((SECONDS - start))s: $(sinfo -h -o '%P %D %T %c CPUs' | head -n1)"
}

cmd_stop() {
    stop_pid "$SLURMD_PID" slurmd
    stop_pid "$CTLD_PID" slurmctld
    stop_pid "$MUNGE_PID" munged
}

cmd_status() {
    ctld_ok && node_usable
}

case "${1:-start}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
*) die "usage: $0 [start|stop|status]" ;;
esac
