#!/usr/bin/env bash
# A process that stays loaded across many rotations (a TLS server,
# ssh-agent): rot_client initializes the module once, logs in once, and after
# every 'p11mk-admin rotate' runs one round on the same session: ECDSA P-256
# sign + verify, AES-256-GCM round trip, find by label, create + read back.
# Every round must succeed, for ROUNDS rotations (default 200; set
# P11MK_LONG_ROUNDS=1000 for a stress run), far past any fixed-size list of
# keys a process could keep.
. "${P11MK_TESTLIB:?run the integration tests through meson test}"
need pkcs11-tool
CLIENT=${P11MK_ROT_CLIENT:?}
ROUNDS=${P11MK_LONG_ROUNDS:-200}
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || fail "P11MK_LONG_ROUNDS must be a positive number, not '$ROUNDS'"

init_token long
epoch0=$("$ADMIN" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["epoch"])')

# Commands go in through one FIFO, held open read-write by this shell (fd 3)
# so that the client sees no EOF between rounds and opening never blocks; its
# results come back through another (fd 4), read with a timeout.
mkfifo cmd.fifo out.fifo
"$CLIENT" "$MOD" long "$PIN" follow "$T/cmd.fifo" > out.fifo 2> client.err &
cpid=$!
exec 3<> cmd.fifo
exec 4< out.fifo
: > client.out

# stop [SECONDS]: ask the client to quit (killing it if it is silent that
# long, default 30) and collect its exit status in $crc. Once only.
stopped=0
stop() {
    local wait=${1:-30} line rc
    [ $stopped -eq 0 ] || return 0
    stopped=1
    echo quit >&3
    while :; do
        set +e; IFS= read -r -t "$wait" line <&4; rc=$?; set -e
        [ $rc -eq 0 ] || break
        echo "$line" >> client.out
    done
    [ $rc -le 128 ] || { echo "the client did not finish within $wait s of quit; killing it" >&2; kill "$cpid" 2>/dev/null || true; }
    set +e; wait "$cpid"; crc=$?; set -e
    exec 3>&- 4<&-
}
# die_with MSG: stop the client, show what it said, fail.
die_with() {
    stop 5
    echo "--- client stdout (last lines):" >&2; tail -n 5 client.out >&2
    echo "--- client stderr:" >&2; tail -n 20 client.err >&2
    fail "$*"
}

t0=$(date +%s.%N)
trot=0
for ((i = 1; i <= ROUNDS; i++)); do
    a=$(date +%s%N)
    "$ADMIN" rotate --quiet > rotate.out 2>&1 || { cat rotate.out >&2; die_with "rotation $i failed"; }
    trot=$((trot + $(date +%s%N) - a))
    kill -0 "$cpid" 2>/dev/null || die_with "the client died before round $i"
    echo go >&3
    IFS= read -r -t 30 line <&4 || die_with "no answer from the client for round $i within 30 s"
    echo "$line" >> client.out
    [ "$line" = "round $i ok" ] || die_with "after rotation $i the long-lived client said: $line"
done
read -r elapsed per_round per_rotate < <(python3 -c 'import sys
t0, t1, trot, n = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
print("%.1f %.0f %.0f" % (t1 - t0, (t1 - t0) * 1e3 / n, trot / 1e6 / n))' "$t0" "$(date +%s.%N)" "$trot" "$ROUNDS")

stop
[ "$crc" -eq 0 ] || die_with "the client exited with status $crc"
grep -qx "follow: rounds $ROUNDS failures 0" client.out \
    || { tail -n 3 client.out >&2; fail "the client did not report $ROUNDS rounds and 0 failures"; }
expect_rc 0 "$ADMIN" verify
"$ADMIN" status --json > s1.json
python3 - s1.json "$epoch0" "$ROUNDS" <<'PY' || fail "the epoch did not advance by $ROUNDS"
import json, sys
d = json.load(open(sys.argv[1])); e0, n = int(sys.argv[2]), int(sys.argv[3])
assert d["epoch"] == e0 + n, (d["epoch"], e0, n)
assert d["rotation"]["state"] == "idle", d["rotation"]
PY
# The client followed the rotations itself: its module reported the last epoch.
grep -q "p11mk\[$cpid\] info: keystore .*: master key epoch $((epoch0 + ROUNDS)) is now current" "$T/p11mk.log" \
    || fail "the client's module did not report switching to epoch $((epoch0 + ROUNDS))"
ok "$ROUNDS rotations with one long-lived session: every round ok, epoch $epoch0 -> $((epoch0 + ROUNDS));" \
   "$elapsed s, $per_round ms per round, of which $per_rotate ms in 'p11mk-admin rotate'"

# With no configuration file at all (embedded defaults: per-user keystore,
# built-in key), the first rotation gives the keystore a key file and writes
# the per-user configuration naming it. A module loaded before that reads
# that file, the one its configuration would live in, and no other: it
# follows the rotations on the same session.
nc() { env -u P11MK_CONF XDG_CONFIG_HOME="$T/nc/config" XDG_DATA_HOME="$T/nc/data" "$@"; }
mkdir -p "$T/nc/config" "$T/nc/data"
nc "$ADMIN" init > nc.out 2>&1 || { cat nc.out; fail "init with no configuration file"; }
[ ! -e "$T/nc/config/p11mk/p11mk.conf" ] || fail "init without --generate-key wrote a configuration file"
nc pkcs11-tool --module "$MOD" --init-token --slot 1 --label nc --so-pin $SO > nc.out 2>&1 || { cat nc.out; fail "init-token"; }
nc pkcs11-tool --module "$MOD" --token-label nc --login --login-type so --so-pin $SO --init-pin --pin $PIN > nc.out 2>&1 ||
    { cat nc.out; fail "init-pin"; }
mkfifo nc.cmd nc.res
nc "$CLIENT" "$MOD" nc "$PIN" follow "$T/nc.cmd" > nc.res 2> nc.err &
ncpid=$!
exec 5<> nc.cmd
exec 6< nc.res
for i in 1 2 3; do
    nc "$ADMIN" rotate --quiet > nc.out 2>&1 || { cat nc.out; fail "rotation $i with no configuration file"; }
    echo go >&5
    IFS= read -r -t 30 line <&6 || { cat nc.err; fail "no answer from the client after rotation $i"; }
    [ "$line" = "round $i ok" ] || { cat nc.err; fail "after rotation $i with no configuration file the client said: $line"; }
done
echo quit >&5
set +e; wait $ncpid; ncrc=$?; set -e
exec 5>&- 6<&-
[ $ncrc -eq 0 ] || { cat nc.err; fail "the client exited with status $ncrc"; }
grep -q "^master_key = " "$T/nc/config/p11mk/p11mk.conf" || fail "the first rotation did not record the key file"
ok "with no configuration file: the first rotation records a key file in the per-user configuration, and a" \
   "module loaded before follows 3 rotations on one session"
