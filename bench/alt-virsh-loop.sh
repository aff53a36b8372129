#!/usr/bin/env bash
# The obvious alternative to ksm-balloon, for the pass-cost benchmark
# (bench/pass_cost.py): one tick of a shell script that hands the KSM
# savings out the way a script or oVirt MOM's libvirt mode does it, with
# per-VM libvirt calls: list the domains, then for every VM one
# `virsh dommemstat` (read its balloon) and one `virsh setmem` (set it to
# floor + savings / N, capped at the ceiling). It keeps no state, so it
# sets every VM every tick.
#
#   alt-virsh-loop.sh URI ROOT FLOOR_MIB CEILING_MIB [process|session]
#
# process: one virsh process (and one libvirt connection) per call, as a
#          plain shell loop does;
# session: one virsh process reading all the commands on stdin (one
#          connection, still one call per VM per read and per write), as a
#          daemon holding a connection (MOM) does.
# ROOT is the --root given to ksm-balloon: general_profit is read under it.
set -euo pipefail
uri=$1 root=$2 floor_mib=$3 ceiling_mib=$4 mode=${5:-process}

profit=$(cat "$root/sys/kernel/mm/ksm/general_profit")
vms=()
while IFS= read -r name; do
    [ -n "$name" ] && vms+=("$name")
done < <(virsh -c "$uri" list --name)
n=${#vms[@]}
[ "$n" -gt 0 ] || exit 0
target=$(( floor_mib * 1024 + profit / 1024 / n ))
[ "$target" -le $(( ceiling_mib * 1024 )) ] || target=$(( ceiling_mib * 1024 ))

case $mode in
    process)
        for vm in "${vms[@]}"; do
            virsh -c "$uri" dommemstat "$vm" >/dev/null
            virsh -c "$uri" setmem "$vm" "${target}K" --live >/dev/null
        done
        ;;
    session)
        for vm in "${vms[@]}"; do
            printf 'dommemstat %s\nsetmem %s %sK --live\n' "$vm" "$vm" "$target"
        done | virsh -q -c "$uri" >/dev/null
        ;;
    *)
        echo "alt-virsh-loop.sh: mode must be process or session" >&2
        exit 2
        ;;
esac
