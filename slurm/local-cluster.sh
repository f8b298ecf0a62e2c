#!/usr/bin/env bash
# A private Slurm cluster (Slurm 22.05 from Debian packages) for tests and local runs.
#
#   eval "$(slurm/local-cluster.sh start)"   # install if needed, start munged/slurmctld/slurmd, export SLURM_CONF
#   slurm/local-cluster.sh start --nodes 2   # the same with two slurmd, each in a network namespace of its own
#   slurm/local-cluster.sh status            # daemons, sinfo, squeue; exit 0 when all is up
#   slurm/local-cluster.sh stop              # cancel this cluster's jobs, stop the daemons, remove its network
#
# With --nodes N (2-8), node i is called node<i>: its slurmd runs in the network namespace hv<ctld port>n<i>
# (address 10.213.<k>.<i+1>, k from the controller port; a veth into the bridge hv<ctld port>br, which holds
# 10.213.<k>.1 for slurmctld), in a UTS namespace whose hostname is node<i>, and in a mount namespace where
# <state dir>/hosts (the controller and every node) is bound over /etc/hosts; the host's /etc/hosts is not
# touched. nsenter, not `ip netns exec`: the latter remounts /sys, without the cgroup tree slurmd reads.
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
    printf 'usage: %s start [--nodes N]|stop|status\n' "${0##*/}" >&2
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
NODES_FILE="$STATE_DIR/nodes"
HOSTS_FILE="$STATE_DIR/hosts"
MAX_NODES=8

# --- several nodes: names, namespaces, addresses ----------------------------------------------------
NET_PREFIX="hv${CTLD_PORT}"
BRIDGE="${NET_PREFIX}br"
SUBNET="10.213.$(( CTLD_PORT % 250 + 1 ))"
CTLD_ADDR="${SUBNET}.1"
node_name() { printf 'node%s' "$1"; }
node_ns() { printf '%sn%s' "$NET_PREFIX" "$1"; }
node_veth() { printf '%sv%s' "$NET_PREFIX" "$1"; }
node_addr() { printf '%s.%s' "$SUBNET" "$(( $1 + 1 ))"; }
node_pidfile() { printf '%s/slurmd-%s.pid' "$RUN_DIR" "$(node_name "$1")"; }
node_log() { printf '%s/slurmd-%s.log' "$LOG_DIR" "$(node_name "$1")"; }

# nodes_of_state: how many nodes the cluster in STATE_DIR was started with (1 if never).
nodes_of_state() {
    local n=1
    [[ -r "$NODES_FILE" ]] && read -r n <"$NODES_FILE"
    [[ "$n" =~ ^[0-9]+$ ]] || n=1
    printf '%s\n' "$n"
}

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
    local nodes="$1" missing=() bin packages=(slurmctld slurmd slurm-client munge)
    for bin in slurmctld slurmd sinfo squeue sbatch scontrol scancel munged munge unmunge; do
        command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
    done
    if (( nodes > 1 )); then
        packages+=(iproute2 util-linux)
        for bin in ip unshare nsenter; do
            command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
        done
    fi
    (( ${#missing[@]} == 0 )) && return 0
    [[ "$(id -u)" == 0 ]] || die "missing ${missing[*]}; installing needs root"
    log "installing ${packages[*]} (missing: ${missing[*]})"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${packages[@]}" >&2
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
# The node line from `slurmd -C`, with RealMemory lowered to 90% (headroom for the OS and the daemons),
# divided by $1 (the nodes sharing this machine's memory; default 1).
node_line() {
    local share="${1:-1}" line tok toks=() out=() mem found=0
    line="$(slurmd -C 2>/dev/null | grep -m1 '^NodeName=')" || die "slurmd -C printed no NodeName line"
    read -r -a toks <<<"$line"
    for tok in "${toks[@]}"; do
        case "$tok" in
            RealMemory=*)
                mem="${tok#RealMemory=}"
                [[ "$mem" =~ ^[0-9]+$ ]] || die "unexpected RealMemory in: $line"
                out+=("RealMemory=$(( mem * 9 / 10 / share ))")
                found=1
                ;;
            *=*) out+=("$tok") ;;
        esac
    done
    (( found )) || die "no RealMemory in slurmd -C output: $line"
    printf '%s' "${out[*]}"
}

write_conf() {
    local nodes="$1" node nodename host tmp i
    local ctld_addr=127.0.0.1 spool="$SLURMD_SPOOL" pidfile="$SLURMD_PID" logfile="$SLURMD_LOG"
    local node_lines partition_nodes
    node="$(node_line "$nodes")"
    nodename="${node%% *}"
    nodename="${nodename#NodeName=}"
    [[ "$nodename" =~ ^[A-Za-z0-9_.-]+$ ]] || die "unexpected node name from slurmd -C: $nodename"
    host="$nodename"
    if (( nodes == 1 )); then
        node_lines="${node} State=UNKNOWN NodeAddr=127.0.0.1"
        partition_nodes="$nodename"
    else
        # each slurmd reads the same file: %n (its node name) keeps their spool, pid and log apart
        ctld_addr="$CTLD_ADDR"
        spool="$STATE_DIR/slurmd-spool-%n"
        pidfile="$RUN_DIR/slurmd-%n.pid"
        logfile="$LOG_DIR/slurmd-%n.log"
        node_lines=""
        for (( i = 1; i <= nodes; i++ )); do
            node_lines+="NodeName=$(node_name "$i") NodeAddr=$(node_addr "$i") NodeHostname=$(node_name "$i") "
            node_lines+="${node#* } State=UNKNOWN"$'\n'
        done
        node_lines="${node_lines%$'\n'}"
        partition_nodes="node[1-${nodes}]"
    fi
    tmp="$CONF.tmp.$$"
    cat >"$tmp" <<EOF
# Generated by slurm/local-cluster.sh; rewritten on every start from a stopped state.
ClusterName=hpcvit
SlurmctldHost=${host}(${ctld_addr})
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
SlurmdSpoolDir=${spool}
SlurmctldPidFile=${CTLD_PID}
SlurmdPidFile=${pidfile}
SlurmctldLogFile=${CTLD_LOG}
SlurmdLogFile=${logfile}
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

${node_lines}
PartitionName=debug Nodes=${partition_nodes} Default=YES PriorityTier=1 PreemptMode=REQUEUE GraceTime=0 MaxTime=INFINITE State=UP
PartitionName=high Nodes=${partition_nodes} PriorityTier=10 MaxTime=INFINITE State=UP
EOF
    mv -f -- "$tmp" "$CONF"
    if (( nodes == 1 )); then
        printf '%s\n' "$nodename" >"$STATE_DIR/nodename"
    else
        printf '%s\n' "$partition_nodes" >"$STATE_DIR/nodename"
    fi
    printf '%s\n' "$nodes" >"$NODES_FILE"
}

# slurmd_pidfile/slurmd_log NODES I: node I's pid file and log (the single node's keep their old names).
slurmd_pidfile() { if (( $1 == 1 )); then printf '%s' "$SLURMD_PID"; else node_pidfile "$2"; fi; }
slurmd_log() { if (( $1 == 1 )); then printf '%s' "$SLURMD_LOG"; else node_log "$2"; fi; }

# all_slurmd_alive NODES: every node's slurmd runs.
all_slurmd_alive() {
    local i
    for (( i = 1; i <= $1; i++ )); do
        alive slurmd "$(slurmd_pidfile "$1" "$i")" || return 1
    done
}

any_slurmd_alive() {
    local i
    for (( i = 1; i <= $1; i++ )); do
        alive slurmd "$(slurmd_pidfile "$1" "$i")" && return 0
    done
    return 1
}

# --- the network of several nodes -----------------------------------------------------------------
ns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qx -- "$1"; }
link_exists() { ip link show dev "$1" >/dev/null 2>&1; }

# bridge_filtered: bridged packets go through iptables (br_netfilter loaded, as with Docker): let ours pass.
bridge_filtered() {
    [[ "$(cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null)" == 1 ]] && command -v iptables >/dev/null
}

setup_network() {
    local nodes="$1" i ns veth hosts ctld_name
    ctld_name="$(hostname)"
    if ip -o -4 addr show 2>/dev/null | grep -v -- " ${BRIDGE} " | grep -qF -- " ${SUBNET}."; then
        die "the subnet ${SUBNET}.0/24 (from HPCVIT_SLURMCTLD_PORT=$CTLD_PORT) is already in use on this machine; choose another port"
    fi
    if ! link_exists "$BRIDGE"; then
        ip link add "$BRIDGE" type bridge || die "cannot create the bridge $BRIDGE (needs root and network namespaces)"
        ip addr add "$CTLD_ADDR/24" dev "$BRIDGE"
    fi
    ip link set "$BRIDGE" up
    if bridge_filtered && ! iptables -C FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT 2>/dev/null; then
        iptables -I FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT
    fi
    for (( i = 1; i <= nodes; i++ )); do
        ns="$(node_ns "$i")"
        veth="$(node_veth "$i")"
        ns_exists "$ns" || ip netns add "$ns" || die "cannot create the network namespace $ns"
        if ! link_exists "$veth"; then
            ip link add "$veth" type veth peer name eth0 netns "$ns" || die "cannot create the veth pair $veth"
        fi
        ip link set "$veth" master "$BRIDGE"
        ip link set "$veth" up
        ip -n "$ns" -4 addr show dev eth0 | grep -qF -- " $(node_addr "$i")/" \
            || ip -n "$ns" addr add "$(node_addr "$i")/24" dev eth0
        ip -n "$ns" link set lo up
        ip -n "$ns" link set eth0 up
    done
    # bound over /etc/hosts for each slurmd (and so for its jobs): every name resolves in every namespace
    hosts="127.0.0.1 localhost"$'\n'"${CTLD_ADDR} ${ctld_name}"$'\n'
    for (( i = 1; i <= nodes; i++ )); do
        hosts+="$(node_addr "$i") $(node_name "$i")"$'\n'
    done
    printf '%s' "$hosts" >"$HOSTS_FILE"
}

# teardown_network: every namespace, veth, bridge and hosts file a cluster on this port may have made.
teardown_network() {
    local i ns veth
    for (( i = 1; i <= MAX_NODES; i++ )); do
        ns="$(node_ns "$i")"
        veth="$(node_veth "$i")"
        ! link_exists "$veth" || ip link del "$veth" || log "warning: cannot delete $veth"
        ! ns_exists "$ns" || ip netns del "$ns" || log "warning: cannot delete the namespace $ns"
    done
    if bridge_filtered; then
        while iptables -D FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT 2>/dev/null; do :; done
    fi
    ! link_exists "$BRIDGE" || ip link del "$BRIDGE" || log "warning: cannot delete the bridge $BRIDGE"
    rm -f -- "$HOSTS_FILE"
}

# start_slurmd NODES I: node I's slurmd (in its namespaces when there are several nodes).
start_slurmd() {
    local nodes="$1" i="$2" pidfile
    pidfile="$(slurmd_pidfile "$nodes" "$i")"
    rm -f -- "$pidfile"
    if (( nodes == 1 )); then
        log "slurmd: starting"
        slurmd -f "$CONF" || die "slurmd failed to start; see $SLURMD_LOG"
        return 0
    fi
    log "slurmd $(node_name "$i"): starting in namespace $(node_ns "$i") ($(node_addr "$i"))"
    install -d -m 0755 -- "$STATE_DIR/slurmd-spool-$(node_name "$i")"
    # shellcheck disable=SC2016  # $1-$3 are the inner shell's arguments
    nsenter --net="/run/netns/$(node_ns "$i")" -- unshare --mount --uts -- \
        sh -c 'mount --bind "$3" /etc/hosts && hostname "$1" && exec slurmd -f "$2" -N "$1"' \
        sh "$(node_name "$i")" "$CONF" "$HOSTS_FILE" \
        || die "slurmd $(node_name "$i") failed to start; see $(node_log "$i")"
}

wait_for_nodes() {
    local nodes="$1" state="" i up started=$SECONDS deadline=$(( SECONDS + START_TIMEOUT_S ))
    while (( SECONDS < deadline )); do
        # the daemons write their pid files right after they daemonize: missing after 10 s means they died
        if (( SECONDS - started >= 10 )); then
            alive slurmctld "$CTLD_PID" || die "slurmctld exited; see $CTLD_LOG"
            for (( i = 1; i <= nodes; i++ )); do
                alive slurmd "$(slurmd_pidfile "$nodes" "$i")" || die "slurmd exited; see $(slurmd_log "$nodes" "$i")"
            done
        fi
        up=0
        while read -r state; do
            case "$state" in
                idle|mixed|allocated|completing) up=$(( up + 1 )) ;;
            esac
        done < <(sinfo -h -N -o '%N %T' 2>/dev/null | sort -u | awk '{print $2}' || true)
        if (( up >= nodes )); then
            log "$nodes node(s) up: $(sinfo -h -N -o '%N=%T' 2>/dev/null | sort -u | tr '\n' ' ')"
            return 0
        fi
        sleep 0.5
    done
    die "not all $nodes node(s) idle after ${START_TIMEOUT_S} s ($(sinfo -h -N -o '%N=%T' 2>/dev/null | sort -u | tr '\n' ' ')); see $CTLD_LOG and $LOG_DIR/slurmd*.log"
}

# --- commands -------------------------------------------------------------------------------------
cmd_start() {
    local nodes="$1" ctld_up=0 munge_up=0 running i
    [[ "$(id -u)" == 0 ]] || die "start must run as root"
    export SLURM_CONF="$CONF"
    running="$(nodes_of_state)"
    alive munged "$MUNGE_PID" && munge_up=1
    alive slurmctld "$CTLD_PID" && ctld_up=1
    if (( running != nodes )) && { (( ctld_up )) || any_slurmd_alive "$running"; }; then
        die "the cluster in $STATE_DIR runs with $running node(s); stop it before starting it with $nodes"
    fi
    if (( munge_up && ctld_up )) && all_slurmd_alive "$nodes" && clients_answer; then
        log "already running (state in $STATE_DIR)"
        print_export
        return 0
    fi

    ensure_installed "$nodes"
    install -d -m 0755 -- "$STATE_DIR"
    install -d -m 0755 -- "$RUN_DIR" "$LOG_DIR" "$CTLD_STATE" "$SLURMD_SPOOL"

    start_munge

    # a fresh slurm.conf only when no slurm daemon runs (they must agree on it)
    if (( ! ctld_up )) && ! any_slurmd_alive "$nodes" || [[ ! -s "$CONF" ]]; then
        write_conf "$nodes"
    fi
    (( nodes == 1 )) || setup_network "$nodes"

    if (( ! ctld_up )); then
        log "slurmctld: starting"
        rm -f -- "$CTLD_PID"
        slurmctld -f "$CONF" || die "slurmctld failed to start; see $CTLD_LOG"
    else
        log "slurmctld: already running"
    fi
    for (( i = 1; i <= nodes; i++ )); do
        if alive slurmd "$(slurmd_pidfile "$nodes" "$i")"; then
            log "slurmd $i: already running"
        else
            start_slurmd "$nodes" "$i"
        fi
    done

    wait_for_nodes "$nodes"
    alive slurmctld "$CTLD_PID" || die "slurmctld is not running; see $CTLD_LOG"
    all_slurmd_alive "$nodes" || die "a slurmd is not running; see $LOG_DIR"

    print_export >"$ENV_FILE"
    log "started; clients need: $(print_export)  (also in $ENV_FILE)"
    print_export
}

cmd_stop() {
    local ids=() i nodes
    if [[ ! -d "$STATE_DIR" ]]; then
        log "not running (no $STATE_DIR)"
        return 0
    fi
    nodes="$(nodes_of_state)"
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
    for (( i = 1; i <= nodes; i++ )); do
        stop_daemon slurmd "$(slurmd_pidfile "$nodes" "$i")"
    done
    stop_daemon slurmctld "$CTLD_PID"
    stop_daemon munged "$MUNGE_PID"
    rm -f -- "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    (( nodes == 1 )) || teardown_network
    log "stopped"
}

cmd_status() {
    local ok=0 nodes name pidfile pid i
    export SLURM_CONF="$CONF"
    nodes="$(nodes_of_state)"
    for name in munged slurmctld; do
        case "$name" in
            munged) pidfile="$MUNGE_PID" ;;
            slurmctld) pidfile="$CTLD_PID" ;;
        esac
        if pid="$(pid_of "$name" "$pidfile")"; then
            printf '%-10s running (pid %s)\n' "$name:" "$pid"
        else
            printf '%-10s not running\n' "$name:"
            ok=1
        fi
    done
    for (( i = 1; i <= nodes; i++ )); do
        name=slurmd
        (( nodes == 1 )) || name="slurmd $(node_name "$i") (namespace $(node_ns "$i"))"
        if pid="$(pid_of slurmd "$(slurmd_pidfile "$nodes" "$i")")"; then
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

NODES=1
case "${1:-}" in
    start)
        shift
        while (( $# > 0 )); do
            case "$1" in
                --nodes)
                    (( $# >= 2 )) || usage
                    NODES="$2"
                    shift 2
                    ;;
                --nodes=*) NODES="${1#--nodes=}"; shift ;;
                *) usage ;;
            esac
        done
        [[ "$NODES" =~ ^[1-9][0-9]*$ ]] && (( NODES <= MAX_NODES )) \
            || die "--nodes must be a number from 1 to $MAX_NODES (got: $NODES)"
        cmd_start "$NODES"
        ;;
    stop) (( $# == 1 )) || usage; cmd_stop ;;
    status) (( $# == 1 )) || usage; cmd_status ;;
    *) usage ;;
esac
