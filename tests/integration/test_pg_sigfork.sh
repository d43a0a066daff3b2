#!/usr/bin/env bash
# A fork from a signal handler on the thread in C_Finalize, while pg_close
# holds listeners_mx (gdb stops the thread there and sends SIGUSR1, whose
# handler forks). The fork gate lets the thread's own fork through
# (a55f4ef); listeners_prepare then locked listeners_mx, which the same
# thread held, for ever. pg_close now blocks signals while it holds it (the
# handler runs after). BUG when C_Finalize does not return within 20 s.
# Without gdb, the test is skipped.
. "${P11MK_TESTLIB:?run the integration tests through meson test}"
need pkcs11-tool
need gdb
SF=${P11MK_PG_SIGFORK:?}
. "$(dirname "$P11MK_TESTLIB")/pg_lib.sh"
pg_setup sigfork
host_conf a
on a expect_rc 0 "$ADMIN" init --generate-key "$T/a/mk.key"
on a pkcs11-tool --module "$MOD" --init-token --slot 1 --label sf --so-pin $SO >/dev/null
# The line in pg_close where listeners_mx is held (the list's unlink).
src=$(dirname "$P11MK_TESTLIB")/../../keystore/ks_pg.c
line=$(grep -n '^ *\*p = e->next_listener;$' "$src" | head -1 | cut -d: -f1)
[ -n "$line" ] || fail "cannot find pg_close's unlink in $src"
cat > "$T/gdb.cmd" <<GDB
set pagination off
set breakpoint pending on
handle SIGUSR1 nostop noprint pass
break ks_pg.c:${SIGFORK_LINE:-$line}
run
echo \n=== stopped in pg_close with listeners_mx held; delivering SIGUSR1 (the handler forks)\n
bt 3
signal SIGUSR1
echo \n=== interrupted after the timeout: where the thread waits\n
bt 12
delete
continue
quit
GDB
rc=0
on a timeout -k 10 -s INT 20 gdb -q -batch -x "$T/gdb.cmd" --args "$SF" "${FS_MODULE:-$MOD}" sf > "$T/gdb.out" 2>&1 || rc=$?
grep -vE "^\[(New|Thread|Detaching|Inferior)|libthread_db|^Using host" "$T/gdb.out" | head -40
if grep -q "^finalized 0x0" "$T/gdb.out"; then
    ok "C_Finalize returned after the signal handler's fork"
else
    fail "C_Finalize did not return: the signal handler's fork hung (gdb rc $rc)"
fi
