#!/usr/bin/env bash
# backup / restore / export --to-default: a hot copy taken while a client
# writes, restored and verified; a keystore moved to a "host" with another
# master key through the default key; a copy under a key this host lacks is
# refused with the key check value and the remedies; restore refuses while
# applications use the keystore.
. "${P11MK_TESTLIB:?run the integration tests through meson test}"
CLIENT=${P11MK_ROT_CLIENT:?}

init_token home
"$CLIENT" "$MOD" home $PIN fill 300 >/dev/null
expect_rc 0 "$ADMIN" rotate --quiet         # host A now has a key file of its own

# A hot backup while a client keeps writing.
rm -f stop
"$CLIENT" "$MOD" home $PIN run "$T/stop" > client.out 2>&1 &
cpid=$!
sleep 0.5
expect_rc 0 "$ADMIN" backup "$T/home.bak"
expect_out "Backup written"
expect_rc 1 "$ADMIN" backup "$T/home.bak"   # never overwrites
expect_out "refusing to overwrite"
# Restore refuses while the client has the keystore open (LMDB: it swaps
# the files; a keystore in PostgreSQL is restored online, in one transaction).
if [ -n "$PG_DB" ]; then
    echo "SKIP: restore refused while in use: a keystore in PostgreSQL is restored online, not refused"
else
    expect_rc 6 "$ADMIN" restore "$T/home.bak" --yes
    expect_out "in use"
fi
touch stop; wait $cpid || { cat client.out; fail "client failed during backup"; }
expect_rc 0 "$ADMIN" restore "$T/home.bak" --yes
expect_rc 0 "$ADMIN" verify
"$CLIENT" "$MOD" home $PIN check 300 >/dev/null || fail "objects missing after restore"
ok "hot backup under load, restore refused while in use, restore + verify"

# Host B: another keystore under another key.
B=$T/hostb; mkdir -p "$B"
head -c 32 /dev/urandom > "$B/b.key"; chmod 600 "$B/b.key"
printf 'keystore = %s/ks\nmaster_key = %s/b.key\nlog = %s/p11mk.log\n' "$B" "$B" "$T" > "$B/p11mk.conf"
P11MK_CONF=$B/p11mk.conf expect_rc 0 "$ADMIN" init
# A's backup is sealed under A's key: B cannot use it, and says why.
P11MK_CONF=$B/p11mk.conf expect_rc 4 "$ADMIN" restore "$T/home.bak" --yes
expect_out "check value [0-9a-f]{16}.*\(1\).*\(2\).*\(3\)"
# Through the default key it moves.
expect_rc 0 "$ADMIN" export --to-default "$T/home.export"
P11MK_CONF=$B/p11mk.conf expect_rc 0 "$ADMIN" restore "$T/home.export" --yes
P11MK_CONF=$B/p11mk.conf expect_rc 0 "$ADMIN" verify
P11MK_CONF=$B/p11mk.conf "$ADMIN" status > b.txt
grep -q "Master key: *$B/b.key" b.txt || fail "host B does not use its own key"
P11MK_CONF=$B/p11mk.conf "$CLIENT" "$MOD" home $PIN check 300 >/dev/null || fail "objects missing on host B"
# ... and the export itself is no longer what B's keystore is sealed under.
P11MK_CONF=$B/p11mk.conf "$ADMIN" status --json | python3 -c '
import json, sys
d = json.load(sys.stdin)
assert not d["master_key"]["default"], d
' || fail "host B's keystore is still under the default key"
expect_rc 2 "$ADMIN" export "$T/x"
expect_out "to-default"
# B's key file now names the keystore put in place (a copy keeps A's
# keystore id, its records are bound to it): B's steps go on.
P11MK_CONF=$B/p11mk.conf expect_rc 0 "$ADMIN" rotate --quiet
grep -q "^# keystore [0-9a-f]\{32\}\$" "$B/b.key" || fail "B's key file does not name its keystore"
ok "export --to-default on A, restore on B: resealed under B's key, objects intact"

# A key file serves one keystore. A copy of A (the same keystore id) on the
# default key is not given A's key file; no keystore is created on it.
AKEY=$("$ADMIN" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["master_key"]["source"])')
[ -f "$AKEY" ] || fail "host A has no key file ($AKEY)"
C=$T/clone; mkdir -p "$C"
printf 'keystore = %s/ks\nmaster_key = default\nlog = %s/p11mk.log\n' "$C" "$T" > "$C/p11mk.conf"
P11MK_CONF=$C/p11mk.conf expect_rc 0 "$ADMIN" init
P11MK_CONF=$C/p11mk.conf expect_rc 0 "$ADMIN" restore "$T/home.export" --yes
cp "$AKEY" "$T/akey.before"
P11MK_CONF=$C/p11mk.conf expect_rc 4 "$ADMIN" rotate --quiet --key-file "$AKEY"
expect_out "not a new key file"
cmp -s "$AKEY" "$T/akey.before" || fail "a refused adoption changed A's key file"
grep -q "master_key = default" "$C/p11mk.conf" || fail "a refused adoption changed the clone's configuration"
P11MK_CONF=$C/p11mk.conf expect_rc 0 "$ADMIN" rotate --quiet    # a key file of its own, next to its configuration
P11MK_CONF=$C/p11mk.conf "$CLIENT" "$MOD" home $PIN check 300 >/dev/null || fail "objects missing in the copy"
printf 'keystore = %s/ks2\nmaster_key = %s\nlog = %s/p11mk.log\n' "$C" "$AKEY" "$T" > "$C/p2.conf"
P11MK_CONF=$C/p2.conf expect_rc 4 "$ADMIN" init
expect_out "already serves a keystore"
P11MK_CONF=$C/p2.conf expect_rc 5 "$ADMIN" verify
expect_out "holds no p11mk keystore"
# ... nor does a restore into a new directory give A's key file to another
# keystore's copy. (A copy of A itself, the same id, is let in: that is how
# A comes back into a new directory from its backup. Two live copies of one
# keystore on one key file are what p11mk cannot tell apart: README.)
D=$T/other; mkdir -p "$D"
printf 'keystore = %s/ks\nmaster_key = default\nlog = %s/p11mk.log\n' "$D" "$T" > "$D/p11mk.conf"
P11MK_CONF=$D/p11mk.conf expect_rc 0 "$ADMIN" init
P11MK_CONF=$D/p11mk.conf expect_rc 0 "$ADMIN" export --to-default "$T/other.export"
P11MK_CONF=$C/p2.conf expect_rc 4 "$ADMIN" restore "$T/other.export" --yes
expect_out "serves another keystore"
cmp -s "$AKEY" "$T/akey.before" || fail "a refused restore changed A's key file"
P11MK_CONF=$C/p2.conf expect_rc 5 "$ADMIN" verify
expect_rc 0 "$ADMIN" rotate --quiet
expect_rc 0 "$ADMIN" verify
ok "one keystore per key file: a copy does not take A's, none is created on it, A rotates on"

# History: an old backup opens while its key is in the history, not after
# clear-history.
expect_rc 0 "$ADMIN" rotate --quiet
expect_rc 0 "$ADMIN" restore "$T/home.bak" --yes          # sealed under a retired key: still known
# (an older copy: the scratch copy it is made ready in is no rollback to report)
grep -i "error" "$T/out" && fail "a restore that succeeded printed an error"
expect_rc 0 "$ADMIN" verify
expect_rc 0 "$ADMIN" rotate --quiet
expect_rc 1 "$ADMIN" clear-history </dev/null            # no terminal to confirm: nothing done
expect_out "no terminal"
expect_rc 0 "$ADMIN" clear-history --yes
expect_out "History cleared"
"$ADMIN" status --json | python3 -c 'import json,sys; assert json.load(sys.stdin)["rotation"]["history"] == 0' \
    || fail "history not empty after clear-history"
expect_rc 4 "$ADMIN" restore "$T/home.bak" --yes
expect_out "check value"
expect_rc 0 "$ADMIN" verify
ok "clear-history: backups under retired keys open before, not after"

