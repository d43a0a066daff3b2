#!/usr/bin/env bash
# Hostile: the PostgreSQL server terminates all of the keystore's backends,
# the notification listener's too, every 70-110 ms (an administrator's
# pg_terminate_backend loop, a pooler or failover cutting connections) while
# applications start, create and read objects (pg_threads runs, one after
# another, 2 threads each): 15 s of ordinary runs, then 15 s of runs in
# pg_threads' fork mode (the child initializes again beside its parent) and
# nothreads mode (CKF_LIBRARY_CANT_CREATE_OS_THREADS: no listener, so no
# reader goes on over another connection), then 7 s of runs that return from
# main without C_Finalize.
#  1. Ordinary runs keep starting: a reader whose connection is cut goes on
#     over another when nothing was committed since its snapshot and the
#     listener stayed connected (ks_pg.c, resume); the open's reads run
#     again from a new transaction (KS_READ_TRIES); the open's probe and
#     BEGIN try another connection: at least 90% of runs (under ASan: reported) get through
#     C_Initialize and C_GetSlotList (before, with backends terminated
#     without pause, about 60% did: the CI failure of test_pg_concurrency's
#     step 5). A run that cannot start answers a code of C_Initialize's
#     list (0x5 or 0x6).
#  2. No run finds wrong data, crashes, hangs (120 s) or fails other than
#     with device errors.
#  3. A lost connection is an I/O error, never damage: nothing in the log
#     says damaged, failed authentication, missing, do not match, restore,
#     edited or went back (they were written for lost connections: an open
#     that read "format record missing", a count read as 0 "records were
#     deleted", a token put refused as "listed but missing").
#  4. Every log entry is one line (libpq's messages span three), and nothing
#     reaches the application's stderr but pg_threads' own lines.
#  5. 'p11mk-admin verify' passes afterwards.
. "${P11MK_TESTLIB:?run the integration tests through meson test}"
need pkcs11-tool
PT=${P11MK_PG_THREADS:?}
. "$(dirname "$P11MK_TESTLIB")/pg_lib.sh"
pg_setup term
host_conf a
on a expect_rc 0 "$ADMIN" init --generate-key "$T/a/mk.key"
pg_token a term
: > "$T/a/p11mk.log"
: > "$T/all.err"
DUR=${P11MK_TERM_SECONDS:-15}
bad=0

terminating() { # SECONDS: in the background, every p11mk backend of the database terminated every 70-110 ms
    ( end=$((SECONDS + $1)); while [ $SECONDS -lt $end ]; do
        sql "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'term' AND application_name = 'p11mk' AND pid <> pg_backend_pid()" >/dev/null 2>&1
        sleep 0.0$((RANDOM % 5 + 5)); done ) & killer=$!
}

# run TAG [MODE]: one pg_threads run; sets rc, counts started runs
run() {
    set +e
    on a env PG_THREADS_ALLOW_EIO=1 timeout -s KILL 120 "$PT" "$MOD" term "$PIN" "$1" 2 3 ${2:-} > "$T/r.out" 2> "$T/r.err"
    rc=$?
    set -e
    cat "$T/r.err" >> "$T/all.err"
    if grep -E "C_Initialize 0x" "$T/r.err" | grep -vE "C_Initialize 0x(5|6)$" >/dev/null; then
        echo "BUG: C_Initialize answered a code not in its list (${2:-plain}): $(cat "$T/r.err")"; bad=1
    fi
    case $rc in
    0) started=$((started + 1)) ;;
    2) ;; # did not start: C_Initialize or the slot list failed (a device error)
    1) if [ "${2:-}" = fork ] && ! grep WRONG "$T/r.err" >/dev/null &&
          grep -E "fork child failed \(status 0x200\)" "$T/r.err" >/dev/null; then
           : # the child could not start (C_Initialize or the slot list failed)
       else
           echo "BUG: run $1 (${2:-plain}) exited 1:"; cat "$T/r.out"; head -20 "$T/r.err"; bad=1
       fi ;;
    *) echo "BUG: run $1 (${2:-plain}) exited $rc:"; cat "$T/r.out"; head -20 "$T/r.err"; bad=1 ;;
    esac
}

# 1, 2: ordinary runs
terminating "$DUR"
runs=0 started=0
end=$((SECONDS + DUR))
while [ $SECONDS -lt $end ]; do
    runs=$((runs + 1))
    run r$runs
done
wait $killer
echo "# $started of $runs runs started while backends were terminated"
# On a loaded machine fewer runs fit (9 in a CI run of two lanes, 8 of them
# started): one run that did not start is within the bound too, as the base
# code's 60% is several. Under AddressSanitizer an open takes ten times as
# long, so each is cut many more times than the retries are made for: the
# share that starts measures the sanitizer's slowness and the machine's load
# (10 of 12 once, 4 of 6 and 2 of 5 in CI runs of two and three lanes), not
# the code; there the share is reported, not bounded, and the rest of the
# test (wrong data, crashes, codes, the log, verify) is what that phase is
# for. The main build's 90% is the bound.
if [ -z "${ASAN_OPTIONS:-}" ] && [ $((started * 100)) -lt $((runs * 90)) ] &&
   ! { [ $runs -ge 4 ] && [ $((runs - started)) -le 1 ]; }; then
    echo "BUG: only $started of $runs runs got through C_Initialize and C_GetSlotList (under 90%)"; bad=1
fi
[ $bad -eq 0 ] && ok "backends terminated every 70-110 ms: $started of $runs runs started, no wrong data"

# 2: fork and nothreads modes
terminating "$DUR"
runs=0 started=0
end=$((SECONDS + DUR))
while [ $SECONDS -lt $end ]; do
    runs=$((runs + 1))
    run m$runs "$([ $((runs % 2)) -eq 0 ] && echo fork || echo nothreads)"
done
wait $killer
echo "# fork and nothreads: $started of $runs runs started"
[ $bad -eq 0 ] && ok "fork and nothreads runs while backends were terminated: no wrong data, no crash"

# 2: applications that exit without C_Finalize while the listener
# reconnects (exit() ran OpenSSL's and libpq's cleanups under the listener's
# feet: SIGSEGV at exit, an exit status of 139; ks_pg.c stops and joins the
# listeners first, from an atexit handler)
terminating "$((DUR / 2))"
runs=0 started=0
end=$((SECONDS + DUR / 2))
while [ $SECONDS -lt $end ]; do
    runs=$((runs + 1))
    run x$runs nofinalize
done
wait $killer
echo "# exit without C_Finalize: $started of $runs runs started"
[ $bad -eq 0 ] && ok "runs that exit without C_Finalize while backends were terminated: no crash at exit"

# 3, 4, 5
if grep -iE "damaged|failed authentication|missing|do not match|restore|edited|went back" "$T/a/p11mk.log" >/dev/null; then
    echo "BUG: a lost connection reported as damage:"
    grep -iE "damaged|failed authentication|missing|do not match|restore|edited|went back" "$T/a/p11mk.log" | sort | uniq -c | sort -rn | head -20
    bad=1
else
    ok "no damage reported for lost connections ($(grep -c "terminating connection\|closed the connection" "$T/a/p11mk.log") losses logged)"
fi
if grep -vE '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z p11mk\[[0-9]+\] (error|warning|info|debug): ' "$T/a/p11mk.log" >/dev/null; then
    echo "BUG: log lines that are not entries of their own:"
    grep -vE '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z p11mk\[[0-9]+\] (error|warning|info|debug): ' "$T/a/p11mk.log" | head -5
    bad=1
else
    ok "every log entry is one line"
fi
if grep -v '^pg_threads' "$T/all.err" >/dev/null; then
    echo "BUG: lines on the application's stderr that are not pg_threads':"
    grep -v '^pg_threads' "$T/all.err" | sort | uniq -c | sort -rn | head -10
    bad=1
else
    ok "nothing on stderr but pg_threads' lines"
fi
on a expect_rc 0 "$ADMIN" verify || { echo "BUG: verify fails after the terminations"; cat "$T/out"; bad=1; }
[ $bad -eq 0 ] || fail "see the BUG lines"
ok "verify passes after the terminations"
