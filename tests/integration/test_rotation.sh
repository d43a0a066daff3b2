#!/usr/bin/env bash
# Master-key rotation while an application keeps working: a client logs in
# once and signs, verifies and creates objects without pause while
# 'p11mk-admin rotate' runs three times. Zero failed operations, every object
# still there and readable, the epoch advanced by three, and the client's
# module followed each change without a restart. Then the retired key alone
# opens nothing, and the step commands refuse what their state forbids.
. "${P11MK_TESTLIB:?run the integration tests through meson test}"
need pkcs11-tool
CLIENT=${P11MK_ROT_CLIENT:?}

init_token rot
"$CLIENT" "$MOD" rot $PIN fill 200 >/dev/null
"$ADMIN" status --json > s0.json
epoch0=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["epoch"])' s0.json)

rm -f stop
"$CLIENT" "$MOD" rot $PIN run "$T/stop" > client.out 2> client.err &
cpid=$!
sleep 1
for i in 1 2 3; do
    "$ADMIN" rotate --quiet || { touch stop; wait $cpid; fail "rotation $i failed"; }
    sleep 0.5
done
touch stop
wait $cpid || { cat client.out client.err; fail "the client saw failed operations during rotation"; }
cat client.out
grep -q "failures 0" client.out || fail "client reported failures"
ops=$(sed -n 's/.* ops \([0-9]*\) .*/\1/p' client.out)
[ "${ops:-0}" -gt 100 ] || fail "the client did too little work ($ops ops) to prove anything"
created=$(sed -n 's/.* created \([0-9]*\) .*/\1/p' client.out)
"$CLIENT" "$MOD" rot $PIN check $((200 + created)) || fail "objects missing or unreadable after rotation"
"$ADMIN" status --json > s1.json
python3 - s1.json "$epoch0" <<'PY' || fail "epoch did not advance by 3, or records remain under old epochs"
import json, sys
d = json.load(open(sys.argv[1])); e0 = int(sys.argv[2])
assert d["epoch"] == e0 + 3, d["epoch"]
assert d["rotation"]["state"] == "idle"
assert list(d["rotation"]["records_per_epoch"].keys()) == [str(e0 + 3)], d["rotation"]
assert d["rotation"]["history"] == 3, d["rotation"]
PY
cpid_logged=$(sed -n 's/.*run: pid \([0-9]*\) .*/\1/p' client.out)
for e in $((epoch0 + 1)) $((epoch0 + 2)) $((epoch0 + 3)); do
    grep -q "p11mk\[$cpid_logged\] info: keystore .*: master key epoch $e is now current" "$T/p11mk.log" \
        || fail "the client's module did not report switching to epoch $e"
done
expect_rc 0 "$ADMIN" verify
ok "3 rotations under load: $ops operations, 0 failures, $created objects created, epoch $epoch0 -> $((epoch0 + 3))"

# The retired key alone opens nothing.
keyfile=$(sed -n 's/^master_key = //p' "$CONF")
[ -f "$keyfile" ] || fail "no key file recorded in $CONF"
old=$(awk '$1 == "old" { print $2; exit }' "$keyfile")
python3 -c 'import sys; open(sys.argv[1], "wb").write(bytes.fromhex(sys.argv[2]))' "$T/old.key" "$old"
chmod 600 "$T/old.key"
sed "s|^master_key = .*|master_key = $T/old.key|" "$CONF" > "$T/old.conf"
P11MK_CONF=$T/old.conf expect_rc 4 "$ADMIN" status
expect_out "check value"
P11MK_CONF=$T/old.conf expect_rc 1 pkcs11-tool --module "$MOD" -L
expect_out "C_Initialize failed: rv = CKR_GENERAL_ERROR"
ok "the retired key alone opens no record"

# Steps refused by the state, with exit code 6 and nothing changed.
expect_rc 6 "$ADMIN" commit
expect_out "nothing to commit"
expect_rc 6 "$ADMIN" abort
expect_out "nothing to abort"
expect_rc 0 "$ADMIN" stage
expect_rc 6 "$ADMIN" stage
expect_out "already staged"
expect_rc 6 "$ADMIN" commit
expect_out "rewrap is not finished"
expect_rc 0 "$ADMIN" abort
expect_rc 0 "$ADMIN" verify
"$ADMIN" status --json > s2.json
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["rotation"]["state"]=="idle" and d["epoch"]==int(sys.argv[2])' s2.json $((epoch0 + 3)) \
    || fail "abort did not return to idle at the same epoch"
printf 'short\n' > weak.pass
expect_rc 2 "$ADMIN" stage --passphrase-file weak.pass
expect_out "too short"
printf 'aaaaaaaaaaaaaaaa\n' > weak.pass
expect_rc 2 "$ADMIN" stage --passphrase-file weak.pass
expect_out "too weak"
ok "commit/abort when idle, stage twice, commit before rewrap, weak passphrases refused"

# A passphrase gives the same key everywhere: stage it here, commit, and the
# key check value equals the one computed from the passphrase on its own.
printf 'Tr0ub4dor&3-correct-horse\n' > good.pass
expect_rc 0 "$ADMIN" set-master-key --passphrase-file good.pass --yes
"$ADMIN" status --json > s3.json
kcv=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["master_key"]["kcv"])' s3.json)
K2=$T/ks2
printf 'keystore = %s\n' "$K2" > "$T/k2.conf"
P11MK_CONF=$T/k2.conf expect_rc 0 "$ADMIN" init
P11MK_CONF=$T/k2.conf expect_rc 0 "$ADMIN" set-master-key --passphrase-file good.pass --yes --key-file "$T/k2.key"
grep -q "^master_key = $T/k2.key" "$T/k2.conf" || fail "the configuration does not name the new key file"
P11MK_CONF=$T/k2.conf "$ADMIN" status --json > s4.json
kcv2=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["master_key"]["kcv"])' s4.json)
[ "$kcv" = "$kcv2" ] || fail "the same passphrase gave different keys ($kcv vs $kcv2)"
ok "set-master-key from a passphrase file; the same passphrase gives the same key on another keystore"

# Loose permissions and damaged key files: clear errors, exit 4.
chmod 644 "$keyfile"
expect_rc 4 "$ADMIN" rotate
expect_out "chmod 600"
chmod 600 "$keyfile"
cp "$keyfile" "$T/keep.key"
head -c 100 "$T/keep.key" > "$keyfile"
expect_rc 4 "$ADMIN" status
expect_out "damaged or truncated"
cp "$T/keep.key" "$keyfile"
expect_rc 0 "$ADMIN" verify
# What a step killed before its rename leaves (FILE.tmp holds key material)
# is removed by the next step, whatever it is; so is a scratch copy.
cp "$keyfile" "$keyfile.tmp"
mkdir -p "$KS/restore.tmp"; : > "$KS/restore.tmp/data.mdb"
expect_rc 0 "$ADMIN" auto-update run
[ ! -e "$keyfile.tmp" ] || fail "a leftover $keyfile.tmp survived the next step"
[ ! -e "$KS/restore.tmp" ] || fail "a leftover restore.tmp survived the next step"
ok "key file with loose permissions or truncated: refused, nothing changed; leftovers of killed steps removed"

# Automatic rotation: due only after the interval; a key set by hand turns it off.
expect_rc 2 "$ADMIN" auto-update --interval 1
expect_rc 2 "$ADMIN" auto-update
expect_rc 0 "$ADMIN" auto-update --interval 1h
expect_out "every 1h"
e1=$("$ADMIN" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["epoch"])')
expect_rc 0 "$ADMIN" auto-update run
expect_out "Not due"
P11MK_NOW=$(( $(date +%s) + 3700 )) expect_rc 0 "$ADMIN" auto-update run --quiet
expect_rc 0 "$ADMIN" auto-update run          # idempotent: the rotation just happened
expect_out "Not due"
e2=$("$ADMIN" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["epoch"])')
[ "$e2" -eq $((e1 + 1)) ] || fail "auto-update run did not rotate exactly once ($e1 -> $e2)"
"$ADMIN" status > st.txt
grep -q "Auto-update: *every 1h" st.txt || fail "status does not show the auto-update interval"
printf 'An0ther-strong-passphrase\n' > good2.pass
expect_rc 0 "$ADMIN" set-master-key --passphrase-file good2.pass --yes
expect_out "disables it"
expect_out "now disabled"
grep -q "Auto-update: *off" <<<"$("$ADMIN" status)" || fail "a manual set-master-key left auto-update on"
expect_rc 0 "$ADMIN" auto-update --disable
expect_out "disabled"
expect_rc 0 "$ADMIN" version
expect_out "AES-256-GCM"
expect_out "slot [0-9]+ +rot +format 2, epoch $((e2 + 1))"
ok "auto-update: interval, not due, due, idempotent, disabled by set-master-key; version per token"

# A second rotation step while one runs: with --wait 0 it is refused at once,
# naming the holder; by default it waits for the holder and then proceeds.
printf 'pid 4242, rewrap, since 2026-01-01T00:00:00Z\n' > "$KS/rotation.lock"
# The holder writes the time it lets go (the lock goes with its exit, after).
flock "$KS/rotation.lock" sh -c 'sleep 7; date +%s.%N > released' &
lpid=$!
sleep 0.3
expect_rc 6 "$ADMIN" stage --wait 0
expect_out "another rotation step is running.*pid 4242, rewrap"
expect_rc 6 "$ADMIN" clear-history --yes --wait 1
expect_out "another rotation step is running"
e_before=$("$ADMIN" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["epoch"])')
expect_rc 0 "$ADMIN" rotate              # waits (default 10 s) for the holder, then rotates
ended=$(date +%s.%N)
expect_out "waiting for another admin command on this keystore to finish \(pid 4242, rewrap"
wait $lpid
# Not a duration (on a loaded machine the commands before may use up most of
# the holder's 7 s): the rotate ended after the holder let go.
python3 -c 'import sys; sys.exit(float(sys.argv[1]) < float(sys.argv[2]))' "$ended" "$(cat released)" ||
    fail "rotate ended at $ended, before the lock holder let go at $(cat released): it did not wait"
e_after=$("$ADMIN" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["epoch"])')
[ "$e_after" -eq $((e_before + 1)) ] || fail "the waiting rotate did not rotate once ($e_before -> $e_after)"
expect_rc 2 "$ADMIN" rotate --wait -1
expect_rc 2 "$ADMIN" rotate --wait abc
for bad in "--keep -1" "--keep x" "--keep 1x" "--before 0" "--before -3" "--before 4294967296" "--before e"; do
    expect_rc 2 "$ADMIN" clear-history --yes $bad
done
ok "concurrent rotation steps: --wait 0 refuses naming the holder; the default waits, then proceeds"

# The staged key missing from the key file: operations that need it fail with
# CKR_DEVICE_ERROR and one log line says why; everything else keeps working.
# A login writes (the attempt is counted before the PIN is checked), so a new
# login is refused too; a process logged in before keeps reading.
rm -f "$T/go" "$T/go.ready"
ROT_CLIENT_WAIT_FOR=$T/go "$CLIENT" "$MOD" rot $PIN check 200 > "$T/check.out" 2>&1 & cpid=$!
for _ in $(seq 300); do [ -e "$T/go.ready" ] && break; sleep 0.1; done
[ -e "$T/go.ready" ] || fail "the checking client did not log in"
cp "$keyfile" "$T/pre-stage.key"
expect_rc 0 "$ADMIN" stage
cp "$T/pre-stage.key" "$keyfile"             # the key file lost NEW
: > "$T/p11mk.log"
expect_rc 1 p11 --token-label rot --login --pin $PIN --keygen --key-type AES:16 --label needs-new
expect_out "CKR_DEVICE_ERROR"
touch "$T/go"
wait $cpid || { cat "$T/check.out"; fail "existing objects unreadable while NEW is missing"; }
n=$(grep -c "staged master key of epoch .* is not in" "$T/p11mk.log" || true)
[ "$n" -ge 1 ] || fail "no log line explains the missing key"
expect_rc 4 "$ADMIN" rewrap
expect_out "not in the key file"
expect_rc 0 "$ADMIN" abort --quiet
expect_rc 0 "$ADMIN" verify
p11 --token-label rot --login --pin $PIN --keygen --key-type AES:16 --label after-abort >/dev/null \
    || fail "writes do not work again after the abort"
ok "missing staged key: CKR_DEVICE_ERROR with one log line per process (new logins too), reads go on, abort recovers"
