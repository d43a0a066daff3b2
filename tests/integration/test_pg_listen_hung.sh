#!/usr/bin/env bash
# Hostile: a server path that carries a connection through its start and
# then goes silent, for the notification listener's connection only (a
# proxy that stalls the connection that sends LISTEN: a backend stopped, a
# half-open path). The listener's first LISTEN and read of the number wait
# at most PING_WAIT_MS and watch the stop pipe (ks_pg.c listen_exec):
#  1. an application that starts and ends (pkcs11-tool -L: C_Initialize ..
#     C_Finalize) lists its token and ends within seconds (FAILS before:
#     C_Finalize joined a listener blocked in PQexec("LISTEN") for ever);
#  2. one that runs longer than the wait still works (reads through
#     transactions; the listener keeps connecting again) and ends promptly;
#  3. the wait is logged as such, once per attempt, not as damage;
#  4. the server goes silent for new connections and cuts the ones it had,
#     so the listener's next connection hangs in its start: C_Finalize
#     still ends at once (the connection's wait, and its set-up
#     statements', watch the stop pipe; FAILS before: it waited for the
#     connection's 10 s timeout).
. "${P11MK_TESTLIB:?run the integration tests through meson test}"
need pkcs11-tool
need python3
. "$(dirname "$P11MK_TESTLIB")/pg_lib.sh"
pg_at_exit() { [ -n "${PROXY_PID:-}" ] && kill "$PROXY_PID" 2>/dev/null || true; }
pg_setup listenhung
host_conf a
export P11MK_CONF=$T/a/p11mk.conf
expect_rc 0 "$ADMIN" init --generate-key "$T/a/mk.key"
pkcs11-tool --module "$MOD" --init-token --slot 1 --label lh --so-pin $SO >/dev/null || fail "cannot init the token"

# The proxy (pg_stall_proxy.py): connections relayed to the cluster until
# the client sends LISTEN, then stalled; once $T/px/silent exists, cut, and
# new ones never answered.
stall_proxy_start
# The password file names the cluster's socket directory: the proxy's too.
sed "s|^$PG_HOST:|$T/px:|" "$PGPASSFILE" > "$T/pgpass"
chmod 600 "$T/pgpass"
export PGPASSFILE=$T/pgpass
sed -i "s|^postgresql = .*|postgresql = $(echo "$CONNINFO" | sed "s|host=[^ ]*|host=$T/px|")|" "$P11MK_CONF"
: > "$T/a/p11mk.log"
bad=0

# 1.
t0=$SECONDS
rc=0; out=$(timeout 30 pkcs11-tool --module "$MOD" -L 2>&1) || rc=$?
el=$((SECONDS - t0))
if [ $rc -ne 0 ]; then
    echo "BUG: pkcs11-tool -L over a listener path that stalls: rc $rc after $el s: $(echo "$out" | tail -2 | tr '\n' ' ')"
    bad=1
elif ! echo "$out" | grep -q "token label *: lh"; then
    echo "BUG: the token is not listed: $out"; bad=1
elif [ $el -gt 8 ]; then
    echo "BUG: start and end took $el s"; bad=1
else
    ok "listed and ended in $el s while the listener's LISTEN went unanswered"
fi

# 2.
cat > "$T/long.py" <<'PY'
import sys, time
sys.dont_write_bytecode = True
sys.path.insert(0, sys.argv[2])
import p11_ctypes
m = p11_ctypes.load(sys.argv[1])
m.initialize()
for i in range(6):  # past the listener's 2 s wait, more than once
    assert m.slot_count() >= 1
    time.sleep(1)
t = time.time()
m.finalize()
print("finalize %.1f s" % (time.time() - t))
PY
t0=$SECONDS
rc=0; out=$(timeout 40 python3 "$T/long.py" "$MOD" "$(dirname "$P11MK_TESTLIB")" 2>&1) || rc=$?
el=$((SECONDS - t0))
if [ $rc -ne 0 ]; then
    echo "BUG: a 6 s application over a listener path that stalls: rc $rc after $el s: $(echo "$out" | tail -3 | tr '\n' ' ')"
    bad=1
else
    ok "6 s of C_GetSlotList, then C_Finalize: $out (all $el s)"
fi

# 3.
grep -q "notification connection did not answer 'LISTEN" "$T/a/p11mk.log" ||
    { echo "BUG: the unanswered LISTEN is not logged: $(tail -5 "$T/a/p11mk.log")"; bad=1; }
if grep -Ei "damag|authentic|restore|edited|went back" "$T/a/p11mk.log"; then
    echo "BUG: a silent connection logged as damage (above)"; bad=1
fi
# 4.
coproc HOLD { exec python3 "$(dirname "$P11MK_TESTLIB")/p11_hold.py" "$MOD" 2>"$T/hold.err"; }
IFS= read -r -t 60 l <&"${HOLD[0]}" && [ "$l" = ready ] || fail "the application did not start: $(cat "$T/hold.err")"
touch "$T/px/silent"
sleep 3 # the listener's LISTEN times out (2 s) or its connection is cut; it connects again, into the silence
echo quit >&"${HOLD[1]}"
l=; IFS= read -r -t 30 l <&"${HOLD[0]}" || true
case $l in
    "finalize 0."*|"finalize 1."*) ok "C_Finalize while the listener's connection hangs in its start: ${l#finalize }" ;;
    *) echo "BUG: C_Finalize while the listener's connection hangs in its start: '${l:-no answer in 30 s}' $(cat "$T/hold.err")"; bad=1 ;;
esac
wait "$HOLD_PID" 2>/dev/null || true
[ $bad -eq 0 ] || fail "see the BUG lines"
