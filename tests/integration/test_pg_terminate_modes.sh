#!/usr/bin/env bash
# Hostile: backends terminated without pause (as test_pg_terminate) while
# pg_threads runs in its fork mode (the child initializes again and works
# beside its parent) and in its nothreads mode (CKF_LIBRARY_CANT_CREATE_OS_
# THREADS: no listener, so no reversal count from reconnections), and the
# server restarts now and then.
#  1. No run finds wrong data, crashes, hangs (120 s) or fails other than with
#     device errors; a run that cannot start answers a code of
#     C_Initialize's list.
#  2. Nothing reaches the application's stderr but pg_threads' own lines
#     (libpq's notices and messages go to the log).
#  3. 'p11mk-admin verify' passes afterwards.
. "${P11MK_TESTLIB:?run the integration tests through meson test}"
need pkcs11-tool
PT=${P11MK_PG_THREADS:?}
. "$(dirname "$P11MK_TESTLIB")/pg_lib.sh"
pg_setup termm
host_conf a
on a expect_rc 0 "$ADMIN" init --generate-key "$T/a/mk.key"
on a pkcs11-tool --module "$MOD" --init-token --slot 1 --label termm --so-pin $SO >/dev/null
on a pkcs11-tool --module "$MOD" --token-label termm --login --login-type so --so-pin $SO --init-pin --pin $PIN >/dev/null
: > "$T/a/p11mk.log"

DUR=${P11MK_TERM_SECONDS:-15}
( end=$((SECONDS + DUR)); while [ $SECONDS -lt $end ]; do
    sql "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'termm' AND application_name = 'p11mk' AND pid <> pg_backend_pid()" >/dev/null 2>&1
    done ) & killer=$!
runs=0 bad=0 started=0
end=$((SECONDS + DUR))
: > "$T/all.err"
while [ $SECONDS -lt $end ]; do
    runs=$((runs + 1))
    mode=$([ $((runs % 2)) -eq 0 ] && echo fork || echo nothreads)
    set +e
    on a env PG_THREADS_ALLOW_EIO=1 timeout -s KILL 120 "$PT" "$MOD" termm "$PIN" m$runs 2 3 $mode > "$T/r.out" 2> "$T/r.err"
    rc=$?
    set -e
    cat "$T/r.err" >> "$T/all.err"
    case $rc in
    0) started=$((started + 1)) ;;
    2) if grep -E "C_Initialize 0x" "$T/r.err" >/dev/null && ! grep -E "C_Initialize 0x(5|6)$" "$T/r.err" >/dev/null; then
           echo "BUG: C_Initialize answered a code not in its list ($mode): $(cat "$T/r.err")"; bad=1
       fi ;;
    1) if ! grep WRONG "$T/r.err" >/dev/null && ! grep -E "C_Initialize 0x" "$T/r.err" | grep -vE "C_Initialize 0x(5|6)$" >/dev/null &&
          grep -E "fork child failed \(status 0x200\)" "$T/r.err" >/dev/null; then
           : # the child could not start (C_Initialize or the slot list failed): allowed
       else
           echo "BUG: run $runs ($mode) exited 1:"; cat "$T/r.out"; head -20 "$T/r.err"; bad=1
       fi ;;
    *) echo "BUG: run $runs ($mode) exited $rc:"; cat "$T/r.out"; head -20 "$T/r.err"; bad=1 ;;
    esac
done
wait $killer
echo "# $started of $runs runs started"
[ $bad -eq 0 ] && ok "fork and nothreads runs while backends were terminated: no wrong data, no crash"
if grep -v '^pg_threads' "$T/all.err" >/dev/null; then
    echo "BUG: lines on the application's stderr that are not pg_threads':"
    grep -v '^pg_threads' "$T/all.err" | sort | uniq -c | sort -rn | head -10
    bad=1
else
    ok "nothing on stderr but pg_threads' lines"
fi
on a expect_rc 0 "$ADMIN" verify || { echo "BUG: verify fails after the terminations"; cat "$T/out"; bad=1; }
[ $bad -eq 0 ] || fail "see the BUG lines"
ok "verify passes"
