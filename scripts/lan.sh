#!/usr/bin/env bash
# A simulated LAN of real hosts on one machine, built from Linux namespaces.
#
# Every host is a network namespace with one interface, eth0, whose veth peer
# is a port of a bridge that lives in a namespace of its own. Host I (1-based)
# has the address 10.77.(I/256).(I%256)/16 (10.77.0.1, 10.77.0.2, ...) and a
# multicast route (224.0.0.0/4) on eth0. Each host also has its own pid
# namespace (and a mount namespace with its own /proc), so processes on
# different hosts cannot see or signal each other, as on separate machines;
# processes on the same host can. Nothing is created in, or changed on, the
# namespace the script is called from: every link is created inside a
# namespace the script made, and every name carries the run id, so parallel
# runs never collide. Addresses exist only inside the run's namespaces.
#
# Needs root (or CAP_SYS_ADMIN + CAP_NET_ADMIN), iproute2, util-linux
# (unshare, nsenter), and nftables for `loss` and `partition`. Works from
# inside scripts/isolated. `tc netem` is not used (not available everywhere).
#
# Usage (RUN: 1-16 lowercase letters or digits naming one LAN; HOSTS: `all`,
# or a comma-separated list of host numbers and ranges: `3`, `1-5`, `1,4,7-9`):
#
#   scripts/lan.sh check
#       Exit 0 if namespaces, veths, a bridge and pid namespaces can be
#       created here; otherwise print why on stderr and exit 3.
#   scripts/lan.sh up RUN N
#       Build hosts 1..N (1 <= N <= 1000). Fails if RUN is already up. On
#       failure or Ctrl-C, removes whatever it built.
#   scripts/lan.sh exec RUN HOST CMD [ARG...]
#       Run CMD on HOST in the foreground (stdio passed through, exit status
#       returned), in the host's network, pid and mount namespaces, in the
#       current directory, with HOST_INDEX, HOST_ADDR, LAN_RUN and LAN_HOSTS
#       in its environment. Stop such processes with `kill` (or `down`):
#       signalling the `exec` process itself does not reach CMD.
#   scripts/lan.sh addr RUN HOST        Print HOST's IPv4 address.
#   scripts/lan.sh hosts RUN            Print `INDEX ADDRESS` for every host.
#   scripts/lan.sh netns RUN HOST       Print HOST's network namespace name.
#   scripts/lan.sh pids RUN HOST        Print the pids (as seen from here) of
#                                       the processes running on HOST.
#   scripts/lan.sh kill RUN HOSTS [SIGNAL]
#       Send SIGNAL (default KILL) to every process running on HOSTS at once.
#       The hosts stay up; new processes can be started on them.
#   scripts/lan.sh loss RUN HOSTS PCT [both|in|out]
#       Drop PCT% (0-100) of the UDP datagrams crossing each of HOSTS' eth0,
#       at random (nftables numgen), in the given direction (default both:
#       a lossy link). A datagram between two such hosts crosses two lossy
#       links (20% each: lost with probability 36%). Multicast that a host
#       loops back to its own processes counts as crossing eth0. Traffic
#       between processes of one host over loopback is never dropped.
#       PCT 0 removes the loss. Replaces earlier loss settings of HOSTS.
#   scripts/lan.sh partition RUN GROUP [GROUP...]
#       Split the LAN: each GROUP is a HOSTS list; hosts named in no group
#       form one more group. Every host drops all IPv4 packets from, and to,
#       the addresses of hosts outside its group (nftables, on input and
#       output). Replaces any earlier partition; returns once every host's
#       rules are in place.
#   scripts/lan.sh heal RUN             Remove the partition (loss stays).
#   scripts/lan.sh counters RUN
#       One line per host: `INDEX sent A lost_out B received C lost_in D
#       partitioned E`, packet counts since the first `loss`/`partition` on
#       that host (UDP through eth0 before loss; loss drops; partition drops).
#   scripts/lan.sh down RUN
#       Kill every process on the LAN and remove all its namespaces. Succeeds
#       if RUN is not (or no longer) up.
#   scripts/lan.sh list                 Print the runs that are up.
#   scripts/lan.sh run N CMD [ARG...]
#       Bring up a LAN of N hosts (run id `r<pid>`, or $LAN_RUN), run CMD on
#       every host at once as `exec` does, wait for all of them, tear down
#       (also on failure and Ctrl-C). Exits with the first non-zero status
#       of CMD, in host order, or 0. Example:
#         scripts/isolated scripts/lan.sh run 3 sh -c 'echo "$HOST_INDEX $HOST_ADDR"'
#
# Exit status: 0 done, 1 a step failed, 2 usage error, 3 (check) no
# namespaces here. State lives in ${LAN_STATE_DIR:-/run/cohort-lan}/RUN;
# namespaces are named cohort-RUN-br and cohort-RUN-hI.
set -euo pipefail

STATE_ROOT=${LAN_STATE_DIR:-/run/cohort-lan}
MAX_HOSTS=1000
SELECTED=()
RULES=()
TABLE="inet cohort_lan"

die() {
  echo "lan.sh: $*" >&2
  exit 1
}

usage() {
  echo "lan.sh: $*" >&2
  echo "usage: scripts/lan.sh check | up RUN N | exec RUN HOST CMD... | addr RUN HOST | hosts RUN | netns RUN HOST | pids RUN HOST | kill RUN HOSTS [SIGNAL] | loss RUN HOSTS PCT [both|in|out] | partition RUN GROUP... | heal RUN | counters RUN | down RUN | list | run N CMD... (documented at the top of this script)" >&2
  exit 2
}

check_run_id() {
  [[ $1 =~ ^[a-z0-9]{1,16}$ ]] || usage "RUN must be 1-16 lowercase letters or digits, not '$1'"
}

# Whether $1 is a decimal integer from $2 to $3.
int_in() {
  [[ $1 =~ ^[0-9]{1,9}$ ]] && ((10#$1 >= $2 && 10#$1 <= $3))
}

br_ns() { echo "cohort-$1-br"; }
host_ns() { echo "cohort-$1-h$2"; }
host_addr() { echo "10.77.$(($1 >> 8)).$(($1 & 255))"; }
state_dir() { echo "$STATE_ROOT/$1"; }

# Number of hosts of an existing run.
run_size() {
  local file
  file="$(state_dir "$1")/hosts"
  [ -f "$file" ] || die "no LAN '$1' is up (scripts/lan.sh up $1 N)"
  cat "$file"
}

# Sets SELECTED to the host numbers a HOSTS spec names, checked against N.
# (An array, not output: a usage error in a command substitution would only
# end the subshell.)
parse_hosts() {
  local spec=$1 n=$2 item from to i items
  SELECTED=()
  if [ "$spec" = all ]; then
    for ((i = 1; i <= n; i++)); do SELECTED+=("$i"); done
    return
  fi
  [[ $spec =~ ^[0-9]{1,9}(-[0-9]{1,9})?(,[0-9]{1,9}(-[0-9]{1,9})?)*$ ]] || usage "bad HOSTS '$spec' (want all, 3, 1-5 or 1,4,7-9)"
  IFS=, read -ra items <<<"$spec"
  for item in "${items[@]}"; do
    from=${item%-*}
    to=${item#*-}
    ((10#$from >= 1 && 10#$to <= n && 10#$from <= 10#$to)) || usage "hosts '$item' not within 1-$n"
    for ((i = 10#$from; i <= 10#$to; i++)); do SELECTED+=("$i"); done
  done
}

# The pids of the children of process $1.
children_of() {
  local parent=$1 file="/proc/$1/task/$1/children" stat pid rest
  if [ -r "$file" ]; then
    cat "$file"
    return
  fi
  for stat in /proc/[0-9]*/stat; do
    pid=${stat#/proc/}
    pid=${pid%/stat}
    rest=$(cat "$stat" 2>/dev/null) || continue
    rest=${rest##*) }
    read -r _ ppid _ <<<"$rest"
    [ "$ppid" = "$parent" ] && echo "$pid"
  done
  return 0
}

# Starts the init process of host $2's pid namespace (it only sleeps) and
# records its pid and pid namespace.
start_host_init() {
  local run=$1 i=$2 ns launcher init="" tries
  ns=$(host_ns "$run" "$i")
  # Stdio to /dev/null: the init must not hold the caller's pipes open.
  ip netns exec "$ns" unshare --pid --fork --mount-proc --kill-child sleep infinity \
    </dev/null >/dev/null 2>&1 &
  launcher=$!
  # The init is ready once it runs `sleep`, which is after /proc was mounted.
  for ((tries = 0; tries < 500; tries++)); do
    init=$(children_of "$launcher")
    init=${init%% *}
    if [ -n "$init" ] && [ "$(cat "/proc/$init/comm" 2>/dev/null)" = sleep ]; then
      echo "$init $(readlink "/proc/$init/ns/pid")" >"$(state_dir "$run")/h$i"
      return
    fi
    kill -0 "$launcher" 2>/dev/null || die "host $i: could not create its pid namespace"
    sleep 0.01
  done
  die "host $i: its init did not start within 5 s"
}

# Prints the pid of host $2's init, after checking it is still that process.
host_init() {
  local run=$1 i=$2 file pid pidns
  file="$(state_dir "$run")/h$i"
  [ -f "$file" ] || die "host $i of LAN '$run' does not exist"
  read -r pid pidns <"$file"
  [ "$(readlink "/proc/$pid/ns/pid" 2>/dev/null)" = "$pidns" ] ||
    die "host $i of LAN '$run' has lost its init process (was it killed from outside?)"
  echo "$pid"
}

# The pids of every process in host $2's pid namespace except its init.
# (One `stat` for all processes: a readlink per process takes a second on a
# busy machine.)
host_pids() {
  local run=$1 i=$2 init ino path inode pid
  init=$(host_init "$run" "$i")
  ino=$(stat -L -c %i "/proc/$init/ns/pid")
  while read -r path inode; do
    [ "$inode" = "$ino" ] || continue
    pid=${path#/proc/}
    pid=${pid%%/*}
    [ "$pid" = "$init" ] || echo "$pid"
  done < <(stat -L -c '%n %i' /proc/[0-9]*/ns/pid 2>/dev/null)
  return 0
}

# Removes everything of run $1 that exists; never fails.
teardown() {
  local run=$1 dir file pid pidns ns
  dir=$(state_dir "$run")
  # Killing the init of a pid namespace kills every process in it.
  if [ -d "$dir" ]; then
    for file in "$dir"/h*; do
      [ -f "$file" ] || continue
      read -r pid pidns <"$file" || continue
      if [ "$(readlink "/proc/$pid/ns/pid" 2>/dev/null)" = "$pidns" ]; then
        kill -KILL "$pid" 2>/dev/null || true
      fi
    done
  fi
  for ns in $(ip netns list 2>/dev/null | awk -v p="cohort-$run-" 'index($1, p) == 1 { print $1 }'); do
    # Whatever else runs in the namespace (`ip netns exec`, `exec`'s nsenter).
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
      kill -KILL "$pid" 2>/dev/null || true
    done
    ip netns delete "$ns" 2>/dev/null || true
  done
  rm -rf "$dir"
}

# Applies an nftables script (stdin) in host $2's network namespace.
nft_on() {
  ip netns exec "$(host_ns "$1" "$2")" nft -f - || die "nft failed on host $2 (message above; is nftables installed?)"
}

# Applies RULES[i], an nftables script, on every host i that has one, on all
# hosts at once (so a partition starts everywhere within milliseconds);
# returns when every host's rules are in place.
apply_rules() {
  local run=$1 i failed=0 pids=()
  for i in "${!RULES[@]}"; do
    nft_on "$run" "$i" <<<"${RULES[$i]}" &
    pids+=("$!")
  done
  for i in "${pids[@]}"; do
    wait "$i" || failed=1
  done
  RULES=()
  ((failed == 0)) || die "could not apply the nftables rules (see above)"
}

nft_base() {
  cat <<EOF
add table $TABLE
add counter $TABLE sent
add counter $TABLE lost_out
add counter $TABLE received
add counter $TABLE lost_in
add counter $TABLE partitioned
add chain $TABLE loss_out { type filter hook output priority 0; }
add chain $TABLE loss_in { type filter hook input priority 0; }
add chain $TABLE part_out { type filter hook output priority -10; }
add chain $TABLE part_in { type filter hook input priority -10; }
EOF
}

cmd_check() {
  [ $# -eq 0 ] || usage "check takes no arguments"
  local tool id a b out
  for tool in ip unshare nsenter; do
    command -v "$tool" >/dev/null || {
      echo "lan.sh: cannot build a LAN here: $tool is not installed" >&2
      exit 3
    }
  done
  id="chk$$"
  a="cohort-$id-h1"
  b="cohort-$id-br"
  # shellcheck disable=SC2064 # expanded now, on purpose
  trap "ip netns delete $a 2>/dev/null || true; ip netns delete $b 2>/dev/null || true" EXIT
  if ! out=$({
    ip netns add "$a" &&
      ip netns add "$b" &&
      ip -n "$b" link add br0 type bridge &&
      ip -n "$a" link add eth0 type veth peer name h1 netns "$b" &&
      ip -n "$b" link set h1 master br0 &&
      ip netns exec "$a" unshare --pid --fork --mount-proc true
  } 2>&1); then
    echo "lan.sh: cannot create network namespaces, veths, bridges or pid namespaces here (need root): ${out//$'\n'/; }" >&2
    exit 3
  fi
}

cmd_up() {
  [ $# -eq 2 ] || usage "up needs RUN N"
  local run=$1 n=$2 br i ns dir
  check_run_id "$run"
  int_in "$n" 1 "$MAX_HOSTS" || usage "N must be 1-$MAX_HOSTS, not '$n'"
  n=$((10#$n))
  dir=$(state_dir "$run")
  [ ! -e "$dir" ] || die "LAN '$run' is already up (scripts/lan.sh down $run)"
  br=$(br_ns "$run")
  [ ! -e "/run/netns/$br" ] || die "namespace $br exists already; remove it with scripts/lan.sh down $run"
  mkdir -p "$dir"
  # Until the LAN is complete, any failure or interruption removes it.
  # shellcheck disable=SC2064 # expanded now, on purpose (RUN is checked)
  trap "teardown $run" EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  ip netns add "$br"
  ip -n "$br" link set lo up
  # No multicast snooping: the bridge floods multicast to every port, as a
  # plain switch does.
  ip -n "$br" link add br0 type bridge mcast_snooping 0 stp_state 0
  ip -n "$br" link set br0 up
  for ((i = 1; i <= n; i++)); do
    ns=$(host_ns "$run" "$i")
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    # Created inside the host's namespace, the peer inside the bridge's.
    ip -n "$ns" link add eth0 type veth peer name "h$i" netns "$br"
    ip -n "$br" link set "h$i" master br0
    ip -n "$br" link set "h$i" up
    ip -n "$ns" addr add "$(host_addr "$i")/16" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add 224.0.0.0/4 dev eth0
    start_host_init "$run" "$i"
  done
  echo "$n" >"$dir/hosts"
  trap - EXIT INT TERM
}

cmd_exec() {
  [ $# -ge 3 ] || usage "exec needs RUN HOST CMD..."
  local run=$1 i=$2 n init
  shift 2
  check_run_id "$run"
  n=$(run_size "$run")
  int_in "$i" 1 "$n" || usage "HOST must be 1-$n, not '$i'"
  i=$((10#$i))
  init=$(host_init "$run" "$i")
  exec nsenter --target "$init" --net --pid --mount --wd="$PWD" -- \
    env HOST_INDEX="$i" HOST_ADDR="$(host_addr "$i")" LAN_RUN="$run" LAN_HOSTS="$n" "$@"
}

cmd_addr() {
  [ $# -eq 2 ] || usage "addr needs RUN HOST"
  check_run_id "$1"
  local n
  n=$(run_size "$1")
  int_in "$2" 1 "$n" || usage "HOST must be 1-$n, not '$2'"
  host_addr "$((10#$2))"
}

cmd_hosts() {
  [ $# -eq 1 ] || usage "hosts needs RUN"
  check_run_id "$1"
  local n i
  n=$(run_size "$1")
  for ((i = 1; i <= n; i++)); do echo "$i $(host_addr "$i")"; done
}

cmd_netns() {
  cmd_addr "$@" >/dev/null
  host_ns "$1" "$((10#$2))"
}

cmd_pids() {
  cmd_addr "$@" >/dev/null
  host_pids "$1" "$((10#$2))"
}

cmd_kill() {
  [ $# -eq 2 ] || [ $# -eq 3 ] || usage "kill needs RUN HOSTS [SIGNAL]"
  local run=$1 signal=${3:-KILL} n i pid pids=()
  check_run_id "$run"
  n=$(run_size "$run")
  parse_hosts "$2" "$n"
  for i in "${SELECTED[@]}"; do
    host_init "$run" "$i" >/dev/null
    while read -r pid; do pids+=("$pid"); done < <(host_pids "$run" "$i")
  done
  # One kill call: every process gets the signal at (almost) the same time.
  # Processes that exited meanwhile are not an error.
  if [ ${#pids[@]} -gt 0 ]; then
    kill -s "$signal" "${pids[@]}" 2>/dev/null || true
  fi
}

cmd_loss() {
  [ $# -eq 3 ] || [ $# -eq 4 ] || usage "loss needs RUN HOSTS PCT [both|in|out]"
  local run=$1 pct=$3 dir=${4:-both} n i chance out_rule="" in_rule=""
  check_run_id "$run"
  n=$(run_size "$run")
  int_in "$pct" 0 100 || usage "PCT must be 0-100, not '$pct'"
  pct=$((10#$pct))
  case $dir in both | in | out) ;; *) usage "direction must be both, in or out, not '$dir'" ;; esac
  if ((pct > 0)); then
    # numgen yields 0-99, and nft rejects `< 100`: at 100% drop everything.
    chance="numgen random mod 100 < $pct"
    ((pct < 100)) || chance=""
    [ "$dir" = in ] || out_rule="add rule $TABLE loss_out oifname \"eth0\" meta l4proto udp $chance counter name lost_out drop"
    [ "$dir" = out ] || in_rule="add rule $TABLE loss_in iifname \"eth0\" meta l4proto udp $chance counter name lost_in drop"
  fi
  parse_hosts "$2" "$n"
  for i in "${SELECTED[@]}"; do
    RULES[i]="$(
      nft_base
      echo "flush chain $TABLE loss_out"
      echo "flush chain $TABLE loss_in"
      echo "add rule $TABLE loss_out oifname \"eth0\" meta l4proto udp counter name sent"
      echo "add rule $TABLE loss_in iifname \"eth0\" meta l4proto udp counter name received"
      echo "$out_rule"
      echo "$in_rule"
    )"
  done
  apply_rules "$run"
}

cmd_partition() {
  [ $# -ge 2 ] || usage "partition needs RUN GROUP..."
  local run=$1 n i j g spec others
  shift
  check_run_id "$run"
  n=$(run_size "$run")
  local -a group_of
  for ((i = 1; i <= n; i++)); do group_of[i]=0; done
  g=0
  for spec in "$@"; do
    g=$((g + 1))
    parse_hosts "$spec" "$n"
    for i in "${SELECTED[@]}"; do
      ((group_of[i] == 0)) || usage "host $i is in two groups"
      group_of[i]=$g
    done
  done
  for ((i = 1; i <= n; i++)); do
    others=""
    for ((j = 1; j <= n; j++)); do
      ((group_of[j] != group_of[i])) && others+="${others:+, }$(host_addr "$j")"
    done
    RULES[i]="$(
      nft_base
      echo "flush chain $TABLE part_out"
      echo "flush chain $TABLE part_in"
      if [ -n "$others" ]; then
        echo "add rule $TABLE part_in ip saddr { $others } counter name partitioned drop"
        echo "add rule $TABLE part_out ip daddr { $others } counter name partitioned drop"
      fi
    )"
  done
  apply_rules "$run"
}

cmd_heal() {
  [ $# -eq 1 ] || usage "heal needs RUN"
  local run=$1 n i
  check_run_id "$run"
  n=$(run_size "$run")
  for ((i = 1; i <= n; i++)); do
    RULES[i]="$(
      nft_base
      echo "flush chain $TABLE part_out"
      echo "flush chain $TABLE part_in"
    )"
  done
  apply_rules "$run"
}

cmd_counters() {
  [ $# -eq 1 ] || usage "counters needs RUN"
  local run=$1 n i ns name line value
  check_run_id "$run"
  n=$(run_size "$run")
  for ((i = 1; i <= n; i++)); do
    ns=$(host_ns "$run" "$i")
    line="$i"
    for name in sent lost_out received lost_in partitioned; do
      value=$(ip netns exec "$ns" nft list counter inet cohort_lan "$name" 2>/dev/null |
        sed -n 's/.*packets \([0-9]*\).*/\1/p') || true
      line+=" $name ${value:-0}"
    done
    echo "$line"
  done
}

cmd_down() {
  [ $# -eq 1 ] || usage "down needs RUN"
  check_run_id "$1"
  teardown "$1"
}

cmd_list() {
  [ $# -eq 0 ] || usage "list takes no arguments"
  local dir
  for dir in "$STATE_ROOT"/*/; do
    [ -f "$dir/hosts" ] || continue
    echo "$(basename "$dir") $(cat "$dir/hosts") hosts"
  done
}

cmd_run() {
  [ $# -ge 2 ] || usage "run needs N CMD..."
  local n=$1 run=${LAN_RUN:-r$$} i status=0 rc pids=()
  shift
  cmd_up "$run" "$n"
  # shellcheck disable=SC2064 # expanded now, on purpose (RUN is checked)
  trap "teardown $run" EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  for ((i = 1; i <= n; i++)); do
    (cmd_exec "$run" "$i" "$@") &
    pids+=("$!")
  done
  for i in "${!pids[@]}"; do
    rc=0
    wait "${pids[$i]}" || rc=$?
    if ((rc != 0 && status == 0)); then
      echo "lan.sh: host $((i + 1)) exited with status $rc" >&2
      status=$rc
    fi
  done
  exit "$status"
}

[ $# -ge 1 ] || usage "no subcommand"
command=$1
shift
case $command in
check | up | exec | addr | hosts | netns | pids | kill | loss | partition | heal | counters | down | list | run)
  "cmd_$command" "$@"
  ;;
-h | --help | help)
  sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  ;;
*) usage "unknown subcommand '$command'" ;;
esac
