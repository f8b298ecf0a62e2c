#!/usr/bin/env bash
# A private single-node Slurm cluster (Slurm 22.05 from Debian packages) for tests and local runs.
#
#   eval "$(slurm/local-cluster.sh start)"   # install if needed, start munged/slurmctld/slurmd, export SLURM_CONF
#   slurm/local-cluster.sh status            # daemons, sinfo, squeue; exit 0 when all is up
#   slurm/local-cluster.sh stop              # cancel this cluster's jobs, stop the daemons it started
#
# Runs as root, needs no systemd. Everything lives under one state directory
# (HPCVIT_SLURM_DIR, default /tmp/hpcvit-slurm): slurm.conf, env.sh, pid files, logs, controller state,
# the slurmd spool and a private munged socket. Private ports (HPCVIT_SLURMCTLD_PORT, default 16817;
# HPCVIT_SLURMD_PORT, default 16818) keep it apart from any other Slurm on the machine.
#
# Only `start` writes to stdout, and only the line `export SLURM_CONF=...`; everything else goes to stderr.
set -euo pipefail

export PATH="${PATH:-/usr/bin:/bin}:/usr/sbin:/sbin"

STATE_DIR="${HPCVIT_SLURM_DIR:-/tmp/hpcvit-slurm}"
CTLD_PORT="${HPCVIT_SLURMCTLD_PORT:-16817}"
SLURMD_PORT="${HPCVIT_SLURMD_PORT:-16818}"
START_TIMEOUT_S=60

log() { printf 'local-cluster: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    printf 'usage: %s start|stop|status\n' "${0##*/}" >&2
    exit 2
}

# --- settings checks: slurm.conf has no quoting, so paths and numbers are restricted ---------------
case "$STATE_DIR" in
    /*) ;;
    *) STATE_DIR="$PWD/$STATE_DIR" ;;
esac
STATE_DIR="$(realpath -m -- "$STATE_DIR")"
[[ "$STATE_DIR" =~ ^/[A-Za-z0-9_./+-]+$ ]] \
    || die "HPCVIT_SLURM_DIR must be a path of letters, digits and _ . / + - (got: $STATE_DIR)"
[[ "$STATE_DIR" != "/" ]] || die "HPCVIT_SLURM_DIR must not be /"
[[ "$CTLD_PORT" =~ ^[0-9]{1,5}$ ]] || die "HPCVIT_SLURMCTLD_PORT must be a number (got: $CTLD_PORT)"
[[ "$SLURMD_PORT" =~ ^[0-9]{1,5}$ ]] || die "HPCVIT_SLURMD_PORT must be a number (got: $SLURMD_PORT)"
(( CTLD_PORT >= 1024 && CTLD_PORT <= 65535 && SLURMD_PORT >= 1024 && SLURMD_PORT <= 65535 )) \
    || die "ports must be within 1024-65535"
(( CTLD_PORT != SLURMD_PORT )) || die "HPCVIT_SLURMCTLD_PORT and HPCVIT_SLURMD_PORT must differ"

CONF="$STATE_DIR/slurm.conf"
ENV_FILE="$STATE_DIR/env.sh"
RUN_DIR="$STATE_DIR/run"
LOG_DIR="$STATE_DIR/log"
CTLD_STATE="$STATE_DIR/slurmctld-state"
SLURMD_SPOOL="$STATE_DIR/slurmd-spool"
MUNGE_DIR="$STATE_DIR/munge"
MUNGE_SOCKET="$MUNGE_DIR/munge.socket"
MUNGE_KEY="$MUNGE_DIR/munge.key"
MUNGE_PID="$MUNGE_DIR/munged.pid"
MUNGE_LOG="$MUNGE_DIR/munged.log"
MUNGE_SEED="$MUNGE_DIR/munged.seed"
CTLD_PID="$RUN_DIR/slurmctld.pid"
SLURMD_PID="$RUN_DIR/slurmd.pid"
CTLD_LOG="$LOG_DIR/slurmctld.log"
SLURMD_LOG="$LOG_DIR/slurmd.log"

# --- processes ------------------------------------------------------------------------------------
# proc_running PID NAME: the process exists, is called NAME and has not exited (zombies count as exited:
# a daemon's parent may be an init that reaps late).
proc_running() {
    local pid="$1" name="$2" stat
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]] || return 1
    stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    [[ "${stat%% *}" != "Z" ]]
}

# pid_of NAME PIDFILE: print the pid if the pid file names a running process called NAME.
pid_of() {
    local name="$1" pidfile="$2" pid
    [[ -r "$pidfile" ]] || return 1
    read -r pid <"$pidfile" 2>/dev/null || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    proc_running "$pid" "$name" || return 1
    printf '%s\n' "$pid"
}

alive() { pid_of "$1" "$2" >/dev/null; }

# stop_daemon NAME PIDFILE: SIGTERM, wait up to 20 s, then SIGKILL; no-op if not running.
stop_daemon() {
    local name="$1" pidfile="$2" pid i
    if ! pid="$(pid_of "$name" "$pidfile")"; then
        rm -f -- "$pidfile"
        log "$name: not running"
        return 0
    fi
    log "$name: stopping (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for (( i = 0; i < 200; i++ )); do
        proc_running "$pid" "$name" || break
        sleep 0.1
    done
    if proc_running "$pid" "$name"; then
        log "$name: still running after 20 s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for (( i = 0; i < 50; i++ )); do
            proc_running "$pid" "$name" || break
            sleep 0.1
        done
        ! proc_running "$pid" "$name" || die "$name (pid $pid) does not exit"
    fi
    rm -f -- "$pidfile"
}

clients_answer() { sinfo -h -o '%P' >/dev/null 2>&1; }

print_export() {
    printf 'export SLURM_CONF=%q\n' "$CONF"
}

# --- installation ---------------------------------------------------------------------------------
ensure_installed() {
    local missing=() bin
    for bin in slurmctld slurmd sinfo squeue sbatch scontrol scancel munged munge unmunge; do
        command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
    done
    (( ${#missing[@]} == 0 )) && return 0
    [[ "$(id -u)" == 0 ]] || die "missing ${missing[*]}; installing needs root"
    log "installing slurmctld slurmd slurm-client munge (missing: ${missing[*]})"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd slurm-client munge >&2
    for bin in "${missing[@]}"; do
        command -v "$bin" >/dev/null 2>&1 || die "$bin still missing after apt-get install"
    done
}

# --- munge ----------------------------------------------------------------------------------------
start_munge() {
    local i
    if alive munged "$MUNGE_PID"; then
        log "munged: already running"
        return 0
    fi
    id -u munge >/dev/null 2>&1 || die "user 'munge' does not exist (is the munge package installed?)"
    install -d -o munge -g munge -m 0755 -- "$MUNGE_DIR"
    if [[ ! -s "$MUNGE_KEY" ]]; then
        log "munged: creating a private key $MUNGE_KEY"
        rm -f -- "$MUNGE_KEY"
        if command -v mungekey >/dev/null 2>&1; then
            mungekey --create --keyfile="$MUNGE_KEY" >&2
        else
            dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
        fi
    fi
    chown munge:munge -- "$MUNGE_KEY"
    chmod 0400 -- "$MUNGE_KEY"
    # leftovers of a munged that did not exit cleanly
    rm -f -- "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock" "$MUNGE_PID"
    log "munged: starting (socket $MUNGE_SOCKET)"
    runuser -u munge -- munged \
        --socket="$MUNGE_SOCKET" --key-file="$MUNGE_KEY" --pid-file="$MUNGE_PID" \
        --log-file="$MUNGE_LOG" --seed-file="$MUNGE_SEED" \
        || die "munged failed to start; see $MUNGE_LOG"
    for (( i = 0; i < 100; i++ )); do
        if munge -n --socket="$MUNGE_SOCKET" 2>/dev/null | unmunge --socket="$MUNGE_SOCKET" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    die "munged does not answer on $MUNGE_SOCKET; see $MUNGE_LOG"
}

# --- slurm.conf -----------------------------------------------------------------------------------
# The node line from `slurmd -C`, with RealMemory lowered to 90% (headroom for the OS and the daemons).
node_line() {
    local line tok toks=() out=() mem found=0
    line="$(slurmd -C 2>/dev/null | grep -m1 '^NodeName=')" || die "slurmd -C printed no NodeName line"
    read -r -a toks <<<"$line"
    for tok in "${toks[@]}"; do
        case "$tok" in
            RealMemory=*)
                mem="${tok#RealMemory=}"
                [[ "$mem" =~ ^[0-9]+$ ]] || die "unexpected RealMemory in: $line"
                out+=("RealMemory=$(( mem * 9 / 10 ))")
                found=1
                ;;
            *=*) out+=("$tok") ;;
        esac
    done
    (( found )) || die "no RealMemory in slurmd -C output: $line"
    printf '%s' "${out[*]}"
}

write_conf() {
    local node nodename host tmp
    node="$(node_line)"
    nodename="${node%% *}"
    nodename="${nodename#NodeName=}"
    [[ "$nodename" =~ ^[A-Za-z0-9_.-]+$ ]] || die "unexpected node name from slurmd -C: $nodename"
    host="$nodename"
    tmp="$CONF.tmp.$$"
    cat >"$tmp" <<EOF
# Generated by slurm/local-cluster.sh; rewritten on every start from a stopped state.
ClusterName=hpcvit
SlurmctldHost=${host}(127.0.0.1)
SlurmctldPort=${CTLD_PORT}
SlurmdPort=${SLURMD_PORT}
SlurmUser=root
SlurmdUser=root

# munge through a private munged socket; cred_expire=5 cuts the wait before a requeued job may start
# again (BeginTime = requeue time + cred_expire + 1) from ~121 s to ~6 s
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=${MUNGE_SOCKET},cred_expire=5

StateSaveLocation=${CTLD_STATE}
SlurmdSpoolDir=${SLURMD_SPOOL}
SlurmctldPidFile=${CTLD_PID}
SlurmdPidFile=${SLURMD_PID}
SlurmctldLogFile=${CTLD_LOG}
SlurmdLogFile=${SLURMD_LOG}
SlurmctldDebug=info
SlurmdDebug=info

# no systemd, no cgroups
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none

SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without it a job with no --mem takes the whole node's memory and array tasks run one at a time
DefMemPerCPU=1000

# a node comes back by itself after slurmd restarts
ReturnToService=2
# no slurmdbd: no sacct; finished jobs stay visible in squeue/scontrol for MinJobAge seconds
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=900
JobRequeue=1
# SIGTERM -> SIGKILL delay; a COMPLETING job blocks new starts on the node
KillWait=10
InactiveLimit=0
MailProg=/bin/true

# preemption: a job in 'high' requeues jobs in 'debug' at once. The preempted job's processes get
# SIGCONT + SIGTERM (SIGKILL KillWait seconds later) and Slurm requeues it. GraceTime=0 and no
# preempt_send_user_signal on purpose: with a GraceTime, a job that exits on the signal ended COMPLETED
# (not requeued), and with preempt_send_user_signal a job that ignored USR2 was never stopped
# (it ran on and ended TIMEOUT, not requeued).
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE

${node} State=UNKNOWN NodeAddr=127.0.0.1
PartitionName=debug Nodes=${nodename} Default=YES PriorityTier=1 PreemptMode=REQUEUE GraceTime=0 MaxTime=INFINITE State=UP
PartitionName=high Nodes=${nodename} PriorityTier=10 MaxTime=INFINITE State=UP
EOF
    mv -f -- "$tmp" "$CONF"
    printf '%s\n' "$nodename" >"$STATE_DIR/nodename"
}

wait_for_node() {
    local nodename="$1" state="" started=$SECONDS deadline=$(( SECONDS + START_TIMEOUT_S ))
    while (( SECONDS < deadline )); do
        # the daemons write their pid files right after they daemonize: missing after 10 s means they died
        if (( SECONDS - started >= 10 )); then
            alive slurmctld "$CTLD_PID" || die "slurmctld exited; see $CTLD_LOG"
            alive slurmd "$SLURMD_PID" || die "slurmd exited; see $SLURMD_LOG"
        fi
        state="$(sinfo -h -N -n "$nodename" -o '%T' 2>/dev/null | head -n1)" || state=""
        case "$state" in
            idle|mixed|allocated|completing) log "node $nodename is $state"; return 0 ;;
        esac
        sleep 0.5
    done
    die "node $nodename not idle after ${START_TIMEOUT_S} s (state: ${state:-no answer}); see $CTLD_LOG and $SLURMD_LOG"
}

# --- commands -------------------------------------------------------------------------------------
cmd_start() {
    local ctld_up=0 slurmd_up=0 munge_up=0 nodename
    [[ "$(id -u)" == 0 ]] || die "start must run as root"
    export SLURM_CONF="$CONF"
    alive munged "$MUNGE_PID" && munge_up=1
    alive slurmctld "$CTLD_PID" && ctld_up=1
    alive slurmd "$SLURMD_PID" && slurmd_up=1
    if (( munge_up && ctld_up && slurmd_up )) && clients_answer; then
        log "already running (state in $STATE_DIR)"
        print_export
        return 0
    fi

    ensure_installed
    install -d -m 0755 -- "$STATE_DIR"
    install -d -m 0755 -- "$RUN_DIR" "$LOG_DIR" "$CTLD_STATE" "$SLURMD_SPOOL"

    start_munge

    # a fresh slurm.conf only when no slurm daemon runs (they must agree on it)
    if (( ! ctld_up && ! slurmd_up )) || [[ ! -s "$CONF" ]]; then
        write_conf
    fi
    nodename="$(cat "$STATE_DIR/nodename")"

    if (( ! ctld_up )); then
        log "slurmctld: starting"
        rm -f -- "$CTLD_PID"
        slurmctld -f "$CONF" || die "slurmctld failed to start; see $CTLD_LOG"
    else
        log "slurmctld: already running"
    fi
    if (( ! slurmd_up )); then
        log "slurmd: starting"
        rm -f -- "$SLURMD_PID"
        slurmd -f "$CONF" || die "slurmd failed to start; see $SLURMD_LOG"
    else
        log "slurmd: already running"
    fi

    wait_for_node "$nodename"
    alive slurmctld "$CTLD_PID" || die "slurmctld is not running; see $CTLD_LOG"
    alive slurmd "$SLURMD_PID" || die "slurmd is not running; see $SLURMD_LOG"

    print_export >"$ENV_FILE"
    log "started; clients need: $(print_export)  (also in $ENV_FILE)"
    print_export
}

cmd_stop() {
    local ids=() i
    if [[ ! -d "$STATE_DIR" ]]; then
        log "not running (no $STATE_DIR)"
        return 0
    fi
    export SLURM_CONF="$CONF"
    # end this cluster's jobs first, so that no job step outlives slurmd
    if alive slurmctld "$CTLD_PID" && [[ -s "$CONF" ]] && clients_answer; then
        mapfile -t ids < <(squeue -h -o '%A' 2>/dev/null || true)
        if (( ${#ids[@]} > 0 )); then
            log "cancelling ${#ids[@]} job(s)"
            scancel -- "${ids[@]}" 2>/dev/null || true
            for (( i = 0; i < 300; i++ )); do
                [[ -z "$(squeue -h -o '%A' 2>/dev/null || true)" ]] && break
                sleep 0.1
            done
        fi
    fi
    stop_daemon slurmd "$SLURMD_PID"
    stop_daemon slurmctld "$CTLD_PID"
    stop_daemon munged "$MUNGE_PID"
    rm -f -- "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    log "stopped"
}

cmd_status() {
    local ok=0 name pidfile pid
    export SLURM_CONF="$CONF"
    for name in munged slurmctld slurmd; do
        case "$name" in
            munged) pidfile="$MUNGE_PID" ;;
            slurmctld) pidfile="$CTLD_PID" ;;
            slurmd) pidfile="$SLURMD_PID" ;;
        esac
        if pid="$(pid_of "$name" "$pidfile")"; then
            printf '%-10s running (pid %s)\n' "$name:" "$pid"
        else
            printf '%-10s not running\n' "$name:"
            ok=1
        fi
    done
    printf 'SLURM_CONF=%s\n' "$CONF"
    if [[ -s "$CONF" ]] && alive slurmctld "$CTLD_PID" && clients_answer; then
        printf '\n'
        sinfo || ok=1
        printf '\n'
        squeue || ok=1
    else
        printf 'controller does not answer\n'
        ok=1
    fi
    return "$ok"
}

(( $# == 1 )) || usage
case "$1" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) usage ;;
esac
