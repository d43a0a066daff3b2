#!/usr/bin/env bash
# Hostile: the fleet's lifecycle rules on a shared PostgreSQL keystore.
#  1. stage on two hosts at once with different keys: one wins, the other is
#     refused (or joins nothing): never two different NEW keys recorded;
#  2. rewrap on both hosts at once: the lifecycle lock lets one run, the
#     other is refused as busy; then commit; every record opens on both;
#  3. a host row copied under another name (the proof binds the name): the
#     copy does not count as holding any key;
#  4. two hosts configured with the same host_name (a copied configuration)
#     share one row: whichever announced last decides, so rewrap passes while
#     one of them lacks NEW, and that host then cannot use the keystore
#     (FAILS: nothing tells two hosts of one name apart).
. "${P11MK_TESTLIB:?run the integration tests through meson test}"
need pkcs11-tool
CLIENT=${P11MK_ROT_CLIENT:?}
. "$(dirname "$P11MK_TESTLIB")/pg_lib.sh"
pg_setup fh
host_conf a
host_conf b
on a expect_rc 0 "$ADMIN" init --generate-key "$T/a/mk.key"
cp -p "$T/a/mk.key" "$T/b/mk.key"
pg_token a fh
on a "$CLIENT" "$MOD" fh $PIN fill 300 >/dev/null
on b "$ADMIN" status >/dev/null
bad=0
state() { on "$1" "$ADMIN" status --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["rotation"]["state"], d["epoch"])'; }

# 1.
printf 'key of host a\n' > pa
printf 'key of host b\n' > pb
on a "$ADMIN" stage --passphrase-file pa > sa.out 2>&1 & p1=$!
on b "$ADMIN" stage --passphrase-file pb > sb.out 2>&1 & p2=$!
ra=0; wait $p1 || ra=$?; rb=0; wait $p2 || rb=$?
echo "stage a: rc $ra: $(head -c 300 sa.out | tr '\n' ' ')"
echo "stage b: rc $rb: $(head -c 300 sb.out | tr '\n' ' ')"
if [ $ra -eq 0 ] && [ $rb -eq 0 ]; then
    echo "BUG: both hosts staged different keys and both succeeded"; bad=1
fi
on a "$ADMIN" status --json > st.json
python3 - st.json <<'PY' || bad=1
import json, sys
d = json.load(open(sys.argv[1]))
hosts = d["hosts"]
print("after the two stages:", d["rotation"]["state"], [(h["name"], h.get("holds_new")) for h in hosts])
if all(h.get("holds_new") for h in hosts):
    print("BUG: every host holds 'NEW' though they staged different keys"); sys.exit(1)
PY
# bring both to the same key, whichever won
winner=a; [ $ra -eq 0 ] || winner=b
cp "p$winner" pw
on a expect_rc 0 "$ADMIN" stage --passphrase-file pw || { echo "BUG: a cannot join the winning stage"; cat "$T/out"; bad=1; }
on b expect_rc 0 "$ADMIN" stage --passphrase-file pw || { echo "BUG: b cannot join the winning stage"; cat "$T/out"; bad=1; }
ok "concurrent stage with different keys: a rc $ra, b rc $rb"

# 2.
on a "$ADMIN" rewrap --batch 5 --quiet > ra.out 2>&1 & p1=$!
on b "$ADMIN" rewrap --batch 5 --quiet > rb.out 2>&1 & p2=$!
ra=0; wait $p1 || ra=$?; rb=0; wait $p2 || rb=$?
echo "rewrap a rc $ra: $(head -c 200 ra.out | tr '\n' ' '); rewrap b rc $rb: $(head -c 200 rb.out | tr '\n' ' ')"
[ $ra -eq 0 ] || [ $rb -eq 0 ] || on a expect_rc 0 "$ADMIN" rewrap --quiet
on b expect_rc 0 "$ADMIN" commit || { echo "BUG: commit after the concurrent rewraps"; cat "$T/out"; bad=1; }
on a expect_rc 0 "$ADMIN" verify || { echo "BUG: verify"; cat "$T/out"; bad=1; }
on b "$CLIENT" "$MOD" fh $PIN check 300 >/dev/null || { echo "BUG: b cannot read every object"; bad=1; }
ok "rewrap on both hosts at once, then commit: every record opens ($(state a))"

# 3.
sql "INSERT INTO p11mk_hosts SELECT 'c', install, info, now() FROM p11mk_hosts WHERE name = 'a'"
on a "$ADMIN" status --json > st.json
python3 - st.json <<'PY' || bad=1
import json, sys
d = json.load(open(sys.argv[1]))
c = [h for h in d["hosts"] if h["name"] == "c"][0]
if c.get("holds_current"):
    print("BUG: a row copied from a under the name c counts as holding CURRENT", c); sys.exit(1)
print("copied row:", c)
PY
on a expect_rc 0 "$ADMIN" host-remove c
ok "a host row copied under another name proves nothing"

# 4.
host_conf b2 a   # b2: another machine, configured as "a" by a copied file
cp -p "$T/b/mk.key" "$T/b2/mk.key"
on b2 "$ADMIN" status >/dev/null
printf 'the fourth fleet key\n' > p4
on a expect_rc 0 "$ADMIN" stage --passphrase-file p4
on b expect_rc 0 "$ADMIN" stage --passphrase-file p4
on a "$ADMIN" status >/dev/null   # a announces again: the row "a" holds NEW
rc=0; on a "$ADMIN" rewrap --quiet > rw.out 2>&1 || rc=$?
if [ $rc -eq 0 ]; then
    on a "$ADMIN" commit >/dev/null 2>&1
    if ! on b2 "$CLIENT" "$MOD" fh $PIN check 300 > b2.out 2>&1; then
        echo "BUG: rewrap and commit passed while b2 (host_name a, a copied configuration) lacked NEW: b2 cannot read its objects any more"
        bad=1
    fi
else
    ok "rewrap refused with two hosts named a: $(head -c 200 rw.out)"
fi
[ $bad -eq 0 ] || fail "see the BUG lines"
