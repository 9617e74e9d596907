#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, from Debian packages (slurm-wlm, munge), to run and
# test the workflow's SLURM profile without an HPC cluster. No systemd: the daemons are started by hand.
#
#   bash scripts/local_slurm.sh start    # install if missing (needs root), start, wait until the node is idle
#   bash scripts/local_slurm.sh status   # sinfo; exit 3 when not running
#   bash scripts/local_slurm.sh stop     # cancel jobs, stop the daemons, delete all state
#
# One node (`localhost`, this machine's CPUs and memory) in two partitions: `cpu` (default) and `gpu`.
# The node has two *fake* GPUs (gres gpu:2 backed by symlinks to /dev/null): jobs that ask for GPUs are
# scheduled and see CUDA_VISIBLE_DEVICES (0, 1 or 0,1), but there is no GPU behind it, so torch runs on the CPU
# (two, so that generator.gpus: 2 training runs as 2 DDP processes through the profile).
# There is no accounting database (no sacct): the workflow polls with squeue, so MinJobAge is long.
# $MORPHOTRUST_SLURM_CPUS (default: this machine's cores) sets the node's CPUs, i.e. how many one-thread jobs run
# at once: the tests declare twice the cores, because their jobs are short and mostly wait on the executor's polling.
# All state (configuration, munge key and socket, spool, logs) lives in $MORPHOTRUST_SLURM_DIR
# (default /tmp/morphotrust-slurm). Client commands find the cluster through /etc/slurm/slurm.conf, a
# symlink to $MORPHOTRUST_SLURM_DIR/slurm.conf while the cluster runs: SLURM_CONF alone is not enough,
# because the executor plugin strips SLURM_* variables before its job steps call srun.
#
# Exit status: 0 ok, 1 the cluster failed (see the logs named), 2 SLURM cannot be installed here
# (not root, or apt-get failed), 3 `status`: not running.
set -euo pipefail

DIR=${MORPHOTRUST_SLURM_DIR:-/tmp/morphotrust-slurm}
CONF=$DIR/slurm.conf
SYSTEM_CONF=/etc/slurm/slurm.conf
MARKER=$DIR/.morphotrust-slurm   # `stop` deletes only a directory this script made
export SLURM_CONF=$CONF
NODE=localhost

die() { echo "local_slurm: $1" >&2; exit "${2:-1}"; }

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null && return 0
    command -v apt-get >/dev/null || die "SLURM is not installed and there is no apt-get to install it" 2
    echo "local_slurm: installing slurm-wlm and munge (apt-get)"
    # Keep the packages' init scripts from starting system daemons: ours run from $DIR.
    local policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy"
    fi
    local status=0
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurm-wlm munge; } > "$DIR/apt.log" 2>&1 || status=$?
    [ -n "$policy" ] && rm -f "$policy"
    [ "$status" = 0 ] || { tail -n 20 "$DIR/apt.log" >&2; die "apt-get install slurm-wlm munge failed (log: $DIR/apt.log)" 2; }
}

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

running() {
    pid_alive "$DIR/munged.pid" && pid_alive "$DIR/slurmctld.pid" && pid_alive "$DIR/slurmd.pid" \
        && sinfo -h -o %t >/dev/null 2>&1
}

write_config() {
    local cpus mem_mb
    cpus=${MORPHOTRUST_SLURM_CPUS:-$(nproc)}
    # Leave 5% for the system: slurmd marks the node invalid if it has less memory than declared.
    mem_mb=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.95}' /proc/meminfo)
    ln -sfn /dev/null "$DIR/fake-gpu0"
    ln -sfn /dev/null "$DIR/fake-gpu1"
    cat > "$CONF" <<EOF
# Written by scripts/local_slurm.sh: a single-node test cluster. Do not edit; it is rewritten on start.
ClusterName=morphotrust-local
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# No cgroups, no accounting: works in containers and needs no database.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# squeue must still list a job for a while after it ends: the workflow polls job states with squeue
# (the plugin needs >= 120 s). An hour keeps every job of a test run in "scontrol show job".
MinJobAge=3600
ReturnToService=2
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb Gres=gpu:2 State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE MaxTime=INFINITE State=UP
EOF
    cat > "$DIR/gres.conf" <<EOF
AutoDetect=off
NodeName=$NODE Name=gpu File=$DIR/fake-gpu[0-1]
EOF
    # slurm.conf and gres.conf must be in the same folder: slurmd looks for gres.conf next to SLURM_CONF.
}

start() {
    # slurmd must run as root to start jobs; installing needs root too.
    [ "$(id -u)" = 0 ] || die "a local SLURM cluster needs root (slurmd starts the jobs)" 2
    mkdir -p "$DIR"
    touch "$MARKER"
    install_packages
    if running; then
        echo "local_slurm: already running, config $CONF"
        return 0
    fi
    if [ -e "$SYSTEM_CONF" ] && [ "$(readlink "$SYSTEM_CONF")" != "$CONF" ]; then
        die "$SYSTEM_CONF exists and is not this script's (-> $CONF): this machine already has a SLURM configuration"
    fi
    stop_daemons   # whatever is left of an earlier, half-started cluster
    rm -rf "$DIR/state" "$DIR/spool" "$DIR/munge"
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/munge"
    chmod 700 "$DIR/munge"
    write_config
    mkdir -p "$(dirname "$SYSTEM_CONF")"
    ln -sfn "$CONF" "$SYSTEM_CONF"

    # Our own munge key and socket, so a system munged (if any) is neither needed nor disturbed.
    if [ ! -s "$DIR/munge.key" ]; then
        dd if=/dev/urandom of="$DIR/munge.key" bs=1024 count=1 status=none
        chmod 400 "$DIR/munge.key"
    fi
    munged --force --key-file="$DIR/munge.key" --socket="$DIR/munge/munge.socket" \
        --pid-file="$DIR/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/seed" \
        || die "munged did not start (log: $DIR/log/munged.log)"
    slurmctld -f "$CONF" -c || die "slurmctld did not start (log: $DIR/log/slurmctld.log)"
    slurmd -f "$CONF" -N "$NODE" || die "slurmd did not start (log: $DIR/log/slurmd.log)"

    local state=""
    for _ in $(seq 60); do
        state=$(sinfo -h -N -n "$NODE" -o %t 2>/dev/null | head -n 1 || true)
        if [ "$state" = idle ]; then
            echo "local_slurm: up: node $NODE idle, partitions cpu (default) and gpu (1 fake GPU), config $CONF"
            return 0
        fi
        sleep 1
    done
    tail -n 5 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
    die "the node did not become idle within 60 s (state: '${state:-no answer}'); logs in $DIR/log"
}

stop_daemons() {
    # Cancel jobs first so no job step outlives slurmd.
    if pid_alive "$DIR/slurmctld.pid"; then
        scancel --quiet --partition=cpu,gpu 2>/dev/null || true
        for _ in $(seq 20); do
            [ -z "$(squeue -h -t running,completing -o %i 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
    local name pid
    for name in slurmd slurmctld munged; do
        pid_alive "$DIR/$name.pid" || continue
        pid=$(cat "$DIR/$name.pid")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$pid" 2>/dev/null || true
    done
}

stop() {
    [ -d "$DIR" ] || return 0
    [ -e "$MARKER" ] || die "$DIR was not made by this script; not touching it"
    stop_daemons
    [ "$(readlink "$SYSTEM_CONF" 2>/dev/null)" = "$CONF" ] && rm -f "$SYSTEM_CONF"
    rm -rf "$DIR"
    echo "local_slurm: stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status)
        if running; then sinfo; else echo "local_slurm: not running"; exit 3; fi ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 64 ;;
esac
