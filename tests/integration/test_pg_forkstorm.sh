#!/usr/bin/env bash
# fork() against the PostgreSQL listener's fork handler
# (ks_pg.c listeners_prepare takes listeners_mx and every listener's `work`
# lock after the fork gate's prepare). pg_forkstorm times every fork; a fork
# over FORK_MAX_MS (3 s), a hang (timeout 120 s), a failed child or parent
# is a BUG line.
#  1. finalize: fork while another thread loops C_Initialize/C_Finalize.
#  2. double:   two threads fork at once while a third works.
#  3. nested:   child and grandchild initialize and work; the parent sees
#               the object its child destroyed, and goes on working.
#  4. plain while every p11mk backend is terminated every 70-110 ms
#     (the listener reconnecting).
#  5. plain while the server restarts in a loop (the listener in back-off
#     and reconnecting to a server that is down).
#  6. plain over a proxy that stalls the listener's connection at LISTEN
#     and then, later, accepts and never answers new connections.
. "${P11MK_TESTLIB:?run the integration tests through meson test}"
need pkcs11-tool
need python3
FS=${P11MK_PG_FORKSTORM:?}
. "$(dirname "$P11MK_TESTLIB")/pg_lib.sh"
pg_at_exit() { [ -n "${PROXY_PID:-}" ] && kill "$PROXY_PID" 2>/dev/null; [ -n "${killer:-}" ] && kill "$killer" 2>/dev/null; true; }
pg_setup fstorm
host_conf a
on a expect_rc 0 "$ADMIN" init --generate-key "$T/a/mk.key"
pg_token a fs
DUR=${P11MK_FS_SECONDS:-8}
bad=0

fs() { # NAME MODE: one pg_forkstorm run
    local name=$1 rc=0 t0=$SECONDS; shift
    on a timeout -s KILL 120 "$FS" "$MOD" fs "$PIN" "$@" > "$T/fs.out" 2> "$T/fs.err" || rc=$?
    [ -n "${FS_KEEP:-}" ] && cp "$T/fs.err" "$FS_KEEP/$(echo "$name" | cut -c1).err"
    echo "# $name: rc $rc in $((SECONDS - t0)) s: $(cat "$T/fs.out")"
    if [ -n "${LENIENT:-}" ] && [ $rc -eq 1 ] && ! grep -E "took|WRONG|status 0x[0-9a-f]*[1-9a-f]\)|status 0x[0-9a-f]*[1-9a-f]0\)" "$T/fs.err" >/dev/null &&
       ! grep -vE "0x30$|find: (0x[0-9a-f]+ )*0x30( 0x[0-9a-f]+)*$|child C_Initialize 0x[56]$|failed \(status 0x(1|2)00\)$|no token labeled|C_GetSlotList failed: 0x6$" "$T/fs.err" >/dev/null; then
        ok "$name (device errors only while the server was away)"
    elif [ $rc -ne 0 ]; then
        echo "BUG: $name: rc $rc ($( [ $rc -eq 137 ] && echo hung, killed after 120 s)):"; sort "$T/fs.err" | uniq -c | sort -rn > "$T/fs.sum"; head -15 "$T/fs.sum"; bad=1
    else
        ok "$name"
    fi
}

fs "1 fork while C_Initialize/C_Finalize loop" finalize "$DUR"
fs "2 two threads forking at once" double "$DUR"
fs "3 nested forks, parent sees the child's destroy" nested 0

( end=$((SECONDS + DUR + 2)); while [ $SECONDS -lt $end ]; do
    sql "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'fstorm' AND application_name = 'p11mk' AND pid <> pg_backend_pid()" >/dev/null 2>&1
    sleep 0.0$((RANDOM % 5 + 5)); done ) & killer=$!
LENIENT=1 fs "4 fork while backends are terminated every 70-110 ms" plain "$DUR"
wait $killer; killer=

( end=$((SECONDS + DUR + 2)); while [ $SECONDS -lt $end ]; do
    "$PGC" restart "$PGD" >/dev/null 2>&1; sleep 0.5; done ) & killer=$!
LENIENT=1 fs "5 fork while the server restarts in a loop" plain "$DUR"
wait $killer; killer=
"$PGC" status "$PGD" >/dev/null 2>&1 || "$PGC" start "$PGD" >/dev/null 2>&1 || true

if [ "${P11MK_FS_PROXY:-1}" = 1 ]; then
stall_proxy_start
sed "s|^$PG_HOST:|$T/px:|" "$PGPASSFILE" > "$T/pgpass"; chmod 600 "$T/pgpass"
export PGPASSFILE=$T/pgpass
sed -i "s|^postgresql = .*|postgresql = $(echo "$CONNINFO" | sed "s|host=[^ ]*|host=$T/px|")|" "$T/a/p11mk.conf"
fs "6 fork while the listener's connection stalls at LISTEN" plain "$DUR"
fi
[ $bad -eq 0 ] || fail "see the BUG lines"
