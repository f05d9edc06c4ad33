#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine (for tests and development), without systemd:
# munge authentication, slurmctld + slurmd, and job accounting (slurmdbd on a private MariaDB instance).
#
# Usage (as root):
#   scripts/slurm-local.sh start     install what is missing (apt), start every daemon, wait until the node is idle;
#                                    does nothing if the cluster is already up and healthy
#   scripts/slurm-local.sh status    daemons alive + sinfo; exit 0 if healthy, 1 otherwise
#   scripts/slurm-local.sh stop      stop every daemon this script started (exit 0 even if none runs)
#   scripts/slurm-local.sh restart   stop, then start (applies a changed configuration)
#   scripts/slurm-local.sh dbd-stop  stop slurmdbd only: job accounting off (sacct fails), the rest keeps running
#   scripts/slurm-local.sh dbd-start start slurmdbd again (after dbd-stop); waits until sacct answers
#
# Environment:
#   FOCALEXP_SLURM_STATE    state dir: daemon state, PID files, logs, MariaDB data (default /var/lib/focalexp-slurm)
#   FOCALEXP_SLURM_DB_PORT  TCP port of the private MariaDB on 127.0.0.1 (default 3307)
#   FOCALEXP_SLURM_CRED_EXPIRE  seconds a requeued job waits before it may start again (default 10; Slurm's is 120)
#   FOCALEXP_SLURM_FORCE=1  overwrite an /etc/slurm/slurm.conf that this script did not write
#   FOCALEXP_SLURM_MEMORY   how a job's --mem is enforced: cgroup (cgroup v1 memory controller) or poll
#                           (RSS sampled each second); default: cgroup where it can work, else poll (see below)
#
# The configuration goes to /etc/slurm/slurm.conf (sbatch, srun, sacct find it without SLURM_CONF), cluster
# "focalexp", one partition "debug" (the default). Tuned for fast tests (measured with Slurm 22.05.8):
# - Requeue: `scontrol requeue` sets the job's BeginTime to now + cred_expire (AuthInfo, default 120 s): slurmd
#   keeps the old run's credential revoked that long. After BeginTime passes, only the periodic schedulers start
#   the job (sched_interval 60 s, bf_interval 30 s by default), so a requeued job restarted ~170 s later.
#   With AuthInfo=cred_expire=10 and SchedulerParameters=sched_interval=2,bf_interval=2: ~11 s.
#   (`scontrol update JobId=X StartTime=now` issued in the same second as the requeue makes slurmd refuse the
#   launch, "Job credential revoked", and the job ends FAILED; a few seconds later it works, but is racy.)
# - KillWait=5 (SIGTERM to SIGKILL on cancel/time limit), DefMemPerCPU = RealMemory/CPUs (a job asking for no
#   memory would otherwise take the whole node and run alone).
# - MinJobAge stays 300 s (scontrol show job still knows finished jobs); sacct keeps every job for good.
# - Memory limits are enforced: a job step that outgrows the job's --mem is killed (measured with Slurm 22.05.8).
#   Where the cgroup v1 memory controller is mounted writable at /sys/fs/cgroup/memory (this project's Debian 12
#   machines, no systemd): TaskPlugin=task/cgroup + ProctrackType=proctrack/cgroup, cgroup.conf CgroupPlugin=
#   cgroup/v1, ConstrainRAMSpace=yes, ConstrainSwapSpace=yes AllowedSwapSpace=0 (no swapping instead of dying;
#   only where the kernel accounts swap: memory.memsw.* exists).
#   The kernel kills the step at the limit, slurmstepd sees the oom event and writes "Detected 1 oom-kill
#   event(s) in StepId=J.0" to the job's stderr; sacct: step J.0 OUT_OF_MEMORY, but the job itself (sacct -X,
#   scontrol) FAILED 1:0 when the step was an srun inside the batch script, as submitit's are (only an oom in
#   the batch step makes the job OUT_OF_MEMORY). A Python that outgrows --mem=256M importing torch: ~5 s from
#   sbatch to the end.
#   Elsewhere (a pure cgroup v2 host: Slurm 22.05's cgroup/v2 wants systemd or extra setup) the fallback is
#   JobAcctGatherParams=OverMemoryKill with JobAcctGatherFrequency=task=1: slurmstepd samples the steps' RSS
#   every second and kills one over the limit ("StepId=J.0 exceeded memory limit (N > M), being killed" in the
#   job's stderr); sacct: step CANCELLED, job FAILED 9:0, no OUT_OF_MEMORY anywhere; a spike shorter than a
#   second escapes. FOCALEXP_SLURM_MEMORY=cgroup|poll forces one (cgroup fails the start where it cannot work).
# - ReturnToService=1: a node that stopped answering returns by itself once slurmd answers again; one that an
#   admin set DOWN (`scontrol update NodeName=N State=DOWN`) stays down until `State=RESUME`. Its running batch
#   jobs (requeue-able: JobRequeue defaults to 1) are killed and requeued at once (sacct reads NODE_FAIL for about
#   a second, then PENDING; squeue PENDING, reason BeginTime) and start again once the node is back and
#   cred_expire seconds have passed since the requeue.
# - `dbd-stop` / `dbd-start`: stop or start only slurmdbd (accounting off, for tests of a cluster without it;
#   slurmctld keeps running and sends the records it queued once slurmdbd is back).
set -euo pipefail

STATE="${FOCALEXP_SLURM_STATE:-/var/lib/focalexp-slurm}"
DB_PORT="${FOCALEXP_SLURM_DB_PORT:-3307}"
CRED_EXPIRE="${FOCALEXP_SLURM_CRED_EXPIRE:-10}"
CLUSTER=focalexp
PARTITION=debug
CONF_DIR=/etc/slurm
SLURM_CONF_FILE="$CONF_DIR/slurm.conf"
DBD_CONF_FILE="$CONF_DIR/slurmdbd.conf"
CGROUP_CONF_FILE="$CONF_DIR/cgroup.conf"
MARK="# written by focalexp scripts/slurm-local.sh"
# rsync: launcher.snapshot copies the code with submitit's RsyncSnapshot on the submitting host (without it,
# focalexp copies the package tree instead)
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server rsync)
MUNGE_PID=/run/munge/munged.pid
MYSQL_DIR="$STATE/mysql"
MYSQL_CNF="$STATE/my.cnf"
MYSQL_PID="$MYSQL_DIR/mysqld.pid"
DBD_PID="$STATE/slurmdbd.pid"
CTLD_PID="$STATE/slurmctld.pid"
SLURMD_PID="$STATE/slurmd.pid"
# Slurm reads these; a value inherited from the caller would point the commands elsewhere.
unset SLURM_CONF SLURM_CLUSTERS

say() { echo "==> $*"; }
die() { echo "slurm-local: error: $*" >&2; exit 1; }
need_root() { [ "$(id -u)" -eq 0 ] || die "'$1' must run as root (try: sudo $0 $1)"; }

# pid_of FILE: the PID in FILE if that process is alive and is the daemon named after the file, else status 1
pid_of() {
    local pid comm want
    [ -r "$1" ] || return 1
    pid="$(tr -dc '0-9' <"$1")"
    [ -n "$pid" ] || return 1
    comm="$(ps -p "$pid" -o comm= 2>/dev/null)" || return 1
    want="$(basename "$1" .pid)"
    case "$want" in mysqld) want=mariadbd ;; esac
    [ "$comm" = "$want" ] || return 1 # a stale PID file whose number now belongs to another process
    echo "$pid"
}

# close_inherited_fds: close the descriptors above stderr that the caller passed down (bash's own 255 stays),
# so that the daemons started here do not keep them open for good: a caller's `flock LOCKFILE scripts/slurm-local.sh
# start` would otherwise stay locked for as long as munged, MariaDB and slurmdbd run
close_inherited_fds() {
    local fd n
    for fd in /proc/$$/fd/*; do
        n="${fd##*/}"
        if [ "$n" -gt 2 ] && [ "$n" -ne 255 ]; then eval "exec $n>&-" 2>/dev/null || true; fi
    done
}

# wait_for SECONDS CMD...: run CMD every 0.5 s until it succeeds, or fail after SECONDS
wait_for() {
    local secs="$1" i
    shift
    for ((i = 0; i < secs * 2; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    return 1
}

node_state() { sinfo -h -o %T 2>/dev/null | head -n1; }
node_ok() { case "$(node_state)" in idle | mixed | allocated | completing) return 0 ;; *) return 1 ;; esac; }
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
mysql_ok() { mysqladmin --defaults-file="$MYSQL_CNF" --connect-timeout=2 ping >/dev/null 2>&1; }
ctld_ok() { pid_of "$CTLD_PID" >/dev/null && scontrol ping 2>/dev/null | grep -q 'UP'; }

healthy() {
    munge_ok && pid_of "$MYSQL_PID" >/dev/null && pid_of "$DBD_PID" >/dev/null &&
        pid_of "$CTLD_PID" >/dev/null && pid_of "$SLURMD_PID" >/dev/null && node_ok
}

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing ${missing[*]} (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >"$STATE/apt.log" 2>&1 || { tail -n 20 "$STATE/apt.log" >&2; die "apt-get update failed (log: $STATE/apt.log)"; }
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$STATE/apt.log" 2>&1 ||
        { tail -n 20 "$STATE/apt.log" >&2; die "apt-get install failed (log: $STATE/apt.log)"; }
}

start_munge() {
    if munge_ok; then return 0; fi
    say "starting munged"
    mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
    if [ ! -s /etc/munge/munge.key ]; then mungekey -c >/dev/null; fi
    chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
    chmod 700 /etc/munge
    chmod 600 /etc/munge/munge.key
    chmod 755 /run/munge
    runuser -u munge -- /usr/sbin/munged --force
    touch "$STATE/munged.ours"
    wait_for 10 munge_ok || die "munged does not answer (log: /var/log/munge/munged.log)"
}

write_mysql_cnf() {
    cat >"$MYSQL_CNF" <<EOF
$MARK
[mysqld]
user=mysql
datadir=$MYSQL_DIR/data
socket=$MYSQL_DIR/mysqld.sock
pid-file=$MYSQL_PID
port=$DB_PORT
bind-address=127.0.0.1
skip-name-resolve
innodb_buffer_pool_size=512M
innodb_log_file_size=64M
innodb_lock_wait_timeout=900
[client]
socket=$MYSQL_DIR/mysqld.sock
user=root
EOF
}

start_mysql() {
    local pass="$1"
    if ! pid_of "$MYSQL_PID" >/dev/null; then
        write_mysql_cnf
        mkdir -p "$MYSQL_DIR"
        chown mysql:mysql "$MYSQL_DIR"
        if [ ! -d "$MYSQL_DIR/data/mysql" ]; then
            say "initialising MariaDB in $MYSQL_DIR/data"
            mariadb-install-db --defaults-file="$MYSQL_CNF" --auth-root-authentication-method=socket \
                --skip-test-db >"$STATE/mysql-install.log" 2>&1 ||
                { tail -n 20 "$STATE/mysql-install.log" >&2; die "mariadb-install-db failed (log: $STATE/mysql-install.log)"; }
        fi
        say "starting MariaDB (127.0.0.1:$DB_PORT)"
        setsid /usr/sbin/mariadbd --defaults-file="$MYSQL_CNF" </dev/null >>"$STATE/mysqld.log" 2>&1 &
    fi
    wait_for 60 mysql_ok || { tail -n 20 "$STATE/mysqld.log" >&2; die "MariaDB does not answer (log: $STATE/mysqld.log)"; }
    mysql --defaults-file="$MYSQL_CNF" <<EOF || die "could not create the accounting database"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pass';
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
}

write_dbd_conf() {
    local pass="$1"
    umask 077
    cat >"$DBD_CONF_FILE" <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
LogFile=$STATE/slurmdbd.log
PidFile=$DBD_PID
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$pass
StorageLoc=slurm_acct_db
EOF
    umask 022
    chown root:root "$DBD_CONF_FILE"
    chmod 600 "$DBD_CONF_FILE"
}

start_dbd() {
    if ! pid_of "$DBD_PID" >/dev/null; then
        say "starting slurmdbd"
        slurmdbd >>"$STATE/slurmdbd.log" 2>&1
    fi
    # slurmdbd creates its tables on the first start: retry until it answers
    local i
    for ((i = 0; i < 60; i++)); do
        if sacctmgr -n -P show cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER"; then return 0; fi
        sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
        # its PID file comes once it reached MariaDB (seconds after a fresh MariaDB start): give up only later
        if ((i >= 15)) && ! pid_of "$DBD_PID" >/dev/null; then break; fi
        sleep 1
    done
    tail -n 20 "$STATE/slurmdbd.log" >&2 || true
    die "slurmdbd does not answer or cluster '$CLUSTER' could not be added (log: $STATE/slurmdbd.log)"
}

# cgroup_v1_ok CONTROLLER: a cgroup v1 hierarchy of CONTROLLER is mounted at /sys/fs/cgroup/CONTROLLER and
# takes a new cgroup (a read-only mount or a container without the right does not)
cgroup_v1_ok() {
    local d="/sys/fs/cgroup/$1"
    [ "$(stat -f -c %T "$d" 2>/dev/null)" = cgroupfs ] && [ -f "$d/cgroup.procs" ] || return 1
    mkdir "$d/focalexp-probe.$$" 2>/dev/null || return 1
    rmdir "$d/focalexp-probe.$$"
}

# memory_mode: how a job's --mem is enforced here, cgroup or poll (see the top of the script)
memory_mode() {
    local want="${FOCALEXP_SLURM_MEMORY:-}"
    case "$want" in
    "" | cgroup | poll) ;;
    *) die "FOCALEXP_SLURM_MEMORY: '$want' is neither cgroup nor poll" ;;
    esac
    if [ "$want" != poll ] && cgroup_v1_ok memory; then
        echo cgroup
    elif [ "$want" = cgroup ]; then
        die "FOCALEXP_SLURM_MEMORY=cgroup but /sys/fs/cgroup/memory is no writable cgroup v1 memory controller"
    else
        echo poll
    fi
}

# cgroup.conf on stdout (read by task/cgroup and proctrack/cgroup in memory mode cgroup)
gen_cgroup_conf() {
    cat <<EOF
$MARK
CgroupPlugin=cgroup/v1
CgroupMountpoint=/sys/fs/cgroup
# a job outgrowing its --mem is killed
ConstrainRAMSpace=yes
AllowedRAMSpace=100
ConstrainCores=no
ConstrainDevices=no
EOF
    # no swapping instead of dying: RAM + swap capped together at the same size (where the kernel accounts swap)
    if [ -f /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes ]; then
        printf '%s\n' "ConstrainSwapSpace=yes" "AllowedSwapSpace=0"
    fi
}

# slurm.conf for this host on stdout: the node line comes from `slurmd -C` (real CPUs and RealMemory)
gen_slurm_conf() {
    local host node cpus mem defmem
    host="$(hostname -s)"
    node="$(slurmd -C | head -n1)"
    cpus="$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$node")"
    mem="$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$node")"
    if [ -z "$cpus" ] || [ -z "$mem" ]; then die "could not read CPUs/RealMemory from 'slurmd -C': $node"; fi
    # without a default, a job that asks for no memory gets the whole node and runs alone
    defmem=$((mem / cpus))
    cat <<EOF
$MARK
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
AuthType=auth/munge
# a requeued job waits cred_expire seconds (Slurm's default 120) before it may start again (see the top of the script)
AuthInfo=cred_expire=$CRED_EXPIRE
$(memory_conf)
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$defmem
ReturnToService=1
SlurmUser=root
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
KillWait=5
InactiveLimit=0
MinJobAge=300
NodeName=$host NodeAddr=127.0.0.1 ${node#NodeName=* } State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

# the slurm.conf lines of memory mode $MEMORY: process tracking, task plugin, job accounting
memory_conf() {
    local proctrack=proctrack/linuxproc
    if [ "$MEMORY" = cgroup ]; then
        cgroup_v1_ok freezer && proctrack=proctrack/cgroup # all of a job's processes, also those that left it
        printf '%s\n' "# a job outgrowing its --mem: the kernel kills it in its memory cgroup (cgroup.conf), OUT_OF_MEMORY" \
            "ProctrackType=$proctrack" "TaskPlugin=task/cgroup" "JobAcctGatherType=jobacct_gather/linux"
    else
        printf '%s\n' "# a job outgrowing its --mem: its RSS, sampled every second, is over the limit; killed, OUT_OF_MEMORY" \
            "ProctrackType=$proctrack" "TaskPlugin=task/none" "JobAcctGatherType=jobacct_gather/linux" \
            "JobAcctGatherParams=OverMemoryKill" "JobAcctGatherFrequency=task=1"
    fi
}

# config_current: slurm.conf (and cgroup.conf in memory mode cgroup) are what this script writes now
config_current() {
    gen_slurm_conf | cmp -s - "$SLURM_CONF_FILE" || return 1
    if [ "$MEMORY" = cgroup ]; then gen_cgroup_conf | cmp -s - "$CGROUP_CONF_FILE" || return 1; fi
}

write_slurm_conf() {
    gen_slurm_conf >"$SLURM_CONF_FILE.new"
    mv "$SLURM_CONF_FILE.new" "$SLURM_CONF_FILE"
    if [ "$MEMORY" = cgroup ]; then
        gen_cgroup_conf >"$CGROUP_CONF_FILE.new"
        mv "$CGROUP_CONF_FILE.new" "$CGROUP_CONF_FILE"
    elif [ -f "$CGROUP_CONF_FILE" ] && grep -qF "$MARK" "$CGROUP_CONF_FILE"; then
        rm -f "$CGROUP_CONF_FILE" # ours from an earlier start in mode cgroup; unused now
    fi
}

start_ctld() {
    if ! pid_of "$CTLD_PID" >/dev/null; then
        say "starting slurmctld"
        slurmctld >>"$STATE/slurmctld.log" 2>&1
    fi
    wait_for 30 ctld_ok || { tail -n 20 "$STATE/slurmctld.log" >&2; die "slurmctld does not answer (log: $STATE/slurmctld.log)"; }
}

start_slurmd() {
    if ! pid_of "$SLURMD_PID" >/dev/null; then
        say "starting slurmd"
        slurmd >>"$STATE/slurmd.log" 2>&1
    fi
    local i st
    for ((i = 0; i < 120; i++)); do
        st="$(node_state)"
        case "$st" in
        idle | mixed | allocated | completing) return 0 ;;
        drain* | down*) if ((i % 10 == 9)); then scontrol update NodeName="$(hostname -s)" State=RESUME >/dev/null 2>&1 || true; fi ;;
        esac
        sleep 0.5
    done
    sinfo -R >&2 || true
    tail -n 20 "$STATE/slurmd.log" >&2 || true
    die "node not idle after 60 s (state: ${st:-?}; logs: $STATE/slurmd.log, $STATE/slurmctld.log)"
}

cmd_start() {
    need_root start
    MEMORY="$(memory_mode)" || exit 1
    mkdir -p "$STATE"
    chmod 755 "$STATE"
    if command -v slurmctld >/dev/null && [ -f "$MYSQL_CNF" ] && healthy; then
        say "SLURM cluster '$CLUSTER' is already up and healthy (state: $STATE)"
        if ! config_current; then
            say "note: $SLURM_CONF_FILE (or cgroup.conf) differs from the configuration this script would write now; '$0 restart' applies it"
        fi
        exit 0
    fi
    local t0=$SECONDS name
    install_packages
    for name in slurmctld slurmd slurmdbd; do
        if ! pid_of "$STATE/$name.pid" >/dev/null && pgrep -x "$name" >/dev/null; then
            die "a $name that this state dir ($STATE) did not start is running (pid $(pgrep -x "$name" | tr '\n' ' ')): stop it first"
        fi
    done
    for name in "$SLURM_CONF_FILE" "$CGROUP_CONF_FILE"; do
        if [ -f "$name" ] && ! grep -qF "$MARK" "$name" && [ "${FOCALEXP_SLURM_FORCE:-0}" != 1 ]; then
            die "$name exists and was not written by this script (set FOCALEXP_SLURM_FORCE=1 to overwrite it)"
        fi
    done
    mkdir -p "$STATE/ctld" "$STATE/d" "$CONF_DIR"
    local pass_file="$STATE/dbpass" pass
    if [ ! -s "$pass_file" ]; then
        (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$pass_file")
    fi
    pass="$(cat "$pass_file")"
    start_munge
    start_mysql "$pass"
    write_dbd_conf "$pass"
    write_slurm_conf # sacctmgr (in start_dbd) reads it too
    start_dbd
    start_ctld
    start_slurmd
    say "SLURM cluster '$CLUSTER' is up in $((SECONDS - t0)) s: partition '$PARTITION', node $(hostname -s) $(node_state), memory limits enforced by $MEMORY (state and logs: $STATE)"
    sinfo
}

# stop_pids NAME PIDFILE [NAME PIDFILE...]: SIGTERM to each live one, wait up to 15 s, then SIGKILL
stop_pids() {
    local pids=() pid i left
    while [ $# -gt 0 ]; do
        if pid="$(pid_of "$2")"; then
            echo "stopping $1 (pid $pid)"
            kill "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
        shift 2
    done
    for ((i = 0; i < 60; i++)); do
        left=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left=1; done
        [ "$left" -eq 0 ] && return 0
        sleep 0.25
    done
    for pid in "${pids[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            echo "pid $pid did not stop in 15 s: SIGKILL"
            kill -9 "$pid" 2>/dev/null || true
        fi
    done
}

cmd_stop() {
    need_root stop
    local pid name
    stop_pids slurmd "$SLURMD_PID" slurmctld "$CTLD_PID"
    stop_pids slurmdbd "$DBD_PID"
    # a daemon whose PID file is gone (state dir removed): match the exact process name
    for name in slurmd slurmctld slurmdbd; do
        for pid in $(pgrep -x "$name" || true); do
            echo "stopping $name (pid $pid, no PID file)"
            kill "$pid" 2>/dev/null || true
        done
    done
    # munged only if this script started it (another cluster on this machine may use it)
    if [ -f "$STATE/munged.ours" ]; then
        stop_pids MariaDB "$MYSQL_PID" munged "$MUNGE_PID"
        rm -f "$STATE/munged.ours"
    else
        stop_pids MariaDB "$MYSQL_PID"
    fi
    for pid in $(pgrep -f -- "--defaults-file=$MYSQL_CNF" || true); do
        echo "stopping MariaDB (pid $pid, no PID file)"
        kill "$pid" 2>/dev/null || true
    done
    if pgrep -x slurmstepd >/dev/null; then
        echo "note: job steps still run (slurmstepd $(pgrep -x slurmstepd | tr '\n' ' ')); slurmd picks them up on start"
    fi
    say "SLURM cluster '$CLUSTER' stopped"
}

cmd_dbd_stop() {
    need_root dbd-stop
    pid_of "$DBD_PID" >/dev/null || { say "slurmdbd is not running"; return 0; }
    stop_pids slurmdbd "$DBD_PID"
    say "slurmdbd stopped: job accounting is off (sacct fails) until '$0 dbd-start'"
}

cmd_dbd_start() {
    need_root dbd-start
    [ -f "$MYSQL_CNF" ] && [ -f "$DBD_CONF_FILE" ] || die "the cluster was never started here: run '$0 start'"
    mysql_ok || die "MariaDB does not answer: run '$0 start'"
    start_dbd
    say "slurmdbd is up: job accounting is on"
}

cmd_status() {
    local ok=0 name file pid
    for name in munged mariadb slurmdbd slurmctld slurmd; do
        case "$name" in
        munged) file="$MUNGE_PID" ;; mariadb) file="$MYSQL_PID" ;; slurmdbd) file="$DBD_PID" ;;
        slurmctld) file="$CTLD_PID" ;; slurmd) file="$SLURMD_PID" ;;
        esac
        if pid="$(pid_of "$file")"; then
            printf '  %-10s running (pid %s)\n' "$name" "$pid"
        elif { [ "$name" = munged ] && munge_ok; } || { [ "$name" = mariadb ] && mysql_ok; }; then
            printf '  %-10s running (answers)\n' "$name"
        else
            printf '  %-10s NOT running\n' "$name"
            ok=1
        fi
    done
    if pid_of "$CTLD_PID" >/dev/null && sinfo 2>/dev/null; then
        node_ok || { echo "node state: $(node_state)"; sinfo -R 2>/dev/null || true; ok=1; }
    else
        echo "  sinfo: slurmctld does not answer"
        ok=1
    fi
    if [ "$ok" -eq 0 ]; then say "healthy (state: $STATE)"; else say "NOT healthy (logs: $STATE)"; fi
    return "$ok"
}

case "${1:-}" in start | restart | dbd-start) close_inherited_fds ;; esac
case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
restart) cmd_stop && cmd_start ;;
status) cmd_status ;;
dbd-stop) cmd_dbd_stop ;;
dbd-start) cmd_dbd_start ;;
*)
    echo "usage: $0 start|stop|status|restart|dbd-stop|dbd-start   (state dir: \$FOCALEXP_SLURM_STATE, default /var/lib/focalexp-slurm)" >&2
    exit 2
    ;;
esac
