#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the Slurm executor's tests.
#
#   scripts/slurm-local.sh install   # apt-get install slurm-wlm munge (Debian, as root)
#   scripts/slurm-local.sh start     # write the config under $RELAY_SLURM_DIR, start munged, slurmctld, slurmd
#   scripts/slurm-local.sh stop
#
# Needs root. State lives in $RELAY_SLURM_DIR (default /tmp/relay-slurm). Settings and why
# (see ../shared/DEPENDENCIES.md): a private munge socket, 127.0.0.1 addresses (hostnames
# may not resolve), linuxproc/none plugins (no systemd, no cgroups), CR_Core (jobs share
# the node instead of each taking all its memory), no accounting daemon (job states come
# from scontrol and the jobcomp file), batch_sched_delay=0, kill_invalid_depend.
set -euo pipefail
DIR=${RELAY_SLURM_DIR:-/tmp/relay-slurm}
NODE=relaynode
cmd=${1:-}

install() {
  if command -v sbatch >/dev/null && command -v munged >/dev/null; then return; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

start() {
  install
  mkdir -p "$DIR"/{munge,state,spool,log}
  chmod 755 "$DIR/munge"
  [[ -f $DIR/munge.key ]] || mungekey --create --keyfile="$DIR/munge.key" --force >/dev/null 2>&1 || \
    dd if=/dev/urandom of="$DIR/munge.key" bs=1024 count=1 2>/dev/null
  chmod 400 "$DIR/munge.key"
  pkill -x munged 2>/dev/null || true
  munged --key-file="$DIR/munge.key" --socket="$DIR/munge/munge.socket.2" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/seed" --force
  local cpus mem
  cpus=$(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' | head -1)
  mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)
  cat > "$DIR/slurm.conf" <<CONF
ClusterName=relay
SlurmctldHost=$(hostname -s)(127.0.0.1)
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket.2
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
SchedulerParameters=batch_sched_delay=0
DependencyParameters=kill_invalid_depend
MinJobAge=3600
MailProg=/bin/true
ReturnToService=2
MaxArraySize=1001
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=main Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
  export SLURM_CONF="$DIR/slurm.conf"
  pkill -x slurmctld 2>/dev/null || true
  pkill -x slurmd 2>/dev/null || true
  slurmctld -f "$SLURM_CONF" -i
  slurmd -f "$SLURM_CONF" -N "$NODE"
  # Wait until the node has registered and is idle.
  for _ in $(seq 1 100); do
    if sinfo -h -N -o '%T' 2>/dev/null | grep -qx idle; then
      echo "slurm up: SLURM_CONF=$SLURM_CONF"
      return
    fi
    sleep 0.2
  done
  echo "slurm did not come up; see $DIR/log" >&2
  tail -5 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
  exit 1
}

stop() {
  pkill -x slurmd 2>/dev/null || true
  pkill -x slurmctld 2>/dev/null || true
  pkill -x munged 2>/dev/null || true
}

case "$cmd" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
