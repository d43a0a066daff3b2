#!/usr/bin/env bash
# Two hosts on one PostgreSQL keystore (backend = postgresql): two
# configurations with their own key files, lock directories and host names,
# one database, in a private cluster this test starts.
#  - both sign, verify and create while the master key rotates fleet-wide
#    (stage on A, rewrap refused until B loads the same key, rewrap and
#    commit): zero failed operations on either host;
#  - a host missing NEW: rewrap and commit refused, naming it; host-remove;
#  - the database restarts under load: clients get errors for what could not
#    complete, never wrong data, and work again when it is back;
#  - kill -9 of rewrap on one host, resumed from the other;
#  - backup on one backend, restore on the other, both ways;
#  - bad input: unreachable database, wrong credentials, another schema
#    version, a database holding an unrelated keystore, a partial schema.
. "${P11MK_TESTLIB:?run the integration tests through meson test}"
need pkcs11-tool
need openssl
CLIENT=${P11MK_ROT_CLIENT:?}
. "$(dirname "$P11MK_TESTLIB")/pg_lib.sh"
pg_setup fleet
host_conf a
host_conf b

# ---- the fleet ------------------------------------------------------------
on a expect_rc 0 "$ADMIN" init --generate-key "$T/a/mk.key"
cp -p "$T/a/mk.key" "$T/b/mk.key" # a new host joins with a copy of the key file
on a pkcs11-tool --module "$MOD" --init-token --slot 1 --label fleet --so-pin $SO >/dev/null
on a pkcs11-tool --module "$MOD" --token-label fleet --login --login-type so --so-pin $SO --init-pin --pin $PIN >/dev/null
on a pkcs11-tool --module "$MOD" --token-label fleet --login --pin $PIN --keypairgen --key-type EC:prime256v1 \
    --id f1ee7a --label ec1 >/dev/null || fail "keypair generation on host a"
on a pubkey_der fleet f1ee7a ec1.der
openssl pkey -pubin -inform DER -in ec1.der -out ec1.pem
echo "signed on host b" > msg
on b pkcs11-tool --module "$MOD" --token-label fleet --login --pin $PIN --sign -m ECDSA-SHA256 --id f1ee7a \
    --signature-format openssl -i msg -o sig.b >/dev/null || fail "host b cannot sign with host a's key"
openssl dgst -sha256 -verify ec1.pem -signature sig.b msg >/dev/null || fail "host b's signature does not verify"
on b "$ADMIN" status --json > st.json
python3 - st.json <<'PY' || fail "status does not list both hosts holding CURRENT"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["backend"] == "postgresql", d["backend"]
hosts = {h["name"]: h for h in d["hosts"]}
assert set(hosts) == {"a", "b"}, hosts
assert all(h["holds_current"] for h in hosts.values()), hosts
PY
ok "two hosts share one keystore: a key made on a signs on b, verified by OpenSSL; status lists both"

# ---- rotation under load on both hosts --------------------------------------
on a "$CLIENT" "$MOD" fleet $PIN fill 100 >/dev/null
rm -f stop
on a "$CLIENT" "$MOD" fleet $PIN run "$T/stop" > client.a 2>&1 &
ca=$!
on b "$CLIENT" "$MOD" fleet $PIN run "$T/stop" > client.b 2>&1 &
cb=$!
sleep 1
printf 'fleet key one, entered on every host\n' > pass1
on a expect_rc 0 "$ADMIN" stage --passphrase-file pass1
on a expect_rc 6 "$ADMIN" rewrap
expect_out "has not loaded the new master key"
expect_out "b \\(last contact"
on a expect_rc 6 "$ADMIN" commit
expect_out "b \\(last contact"
on b expect_rc 0 "$ADMIN" stage --passphrase-file pass1
expect_out "now holds the master key staged"
on a expect_rc 0 "$ADMIN" rewrap --quiet
on b expect_rc 0 "$ADMIN" commit
sleep 1
touch stop
wait $ca || { cat client.a; fail "host a's client saw failures during the fleet rotation"; }
wait $cb || { cat client.b; fail "host b's client saw failures during the fleet rotation"; }
grep -q "failures 0" client.a && grep -q "failures 0" client.b || fail "a client reported failures"
ops_a=$(sed -n 's/.* ops \([0-9]*\) .*/\1/p' client.a)
ops_b=$(sed -n 's/.* ops \([0-9]*\) .*/\1/p' client.b)
[ "${ops_a:-0}" -gt 20 ] && [ "${ops_b:-0}" -gt 20 ] || fail "too little work to prove anything ($ops_a, $ops_b)"
on a "$ADMIN" status --json > st.json
python3 - st.json <<'PY' || fail "not committed, or records left under the old epoch"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["epoch"] == 2 and d["rotation"]["state"] == "idle", d["rotation"]
assert list(d["rotation"]["records_per_epoch"]) == ["2"], d["rotation"]
PY
on b expect_rc 0 "$ADMIN" verify
ok "fleet rotation under load: stage on a, refused until b loaded the key, rewrap on a, commit on b; $ops_a + $ops_b operations, 0 failures"

# A generated key cannot be loaded on other hosts: rotate refuses.
on a expect_rc 6 "$ADMIN" rotate
expect_out "shared by 1 other host"

# ---- a host that lacks NEW; host-remove --------------------------------------
host_conf c
cp -p "$T/a/mk.key" "$T/c/mk.key"
on c expect_rc 0 "$ADMIN" status >/dev/null # c joins the fleet
printf 'fleet key two, entered on every host\n' > pass2
on a expect_rc 0 "$ADMIN" stage --passphrase-file pass2
on b expect_rc 0 "$ADMIN" stage --passphrase-file pass2
on a expect_rc 6 "$ADMIN" rewrap
expect_out "c \\(last contact"
on a expect_rc 0 "$ADMIN" host-remove c
on a expect_rc 1 "$ADMIN" host-remove nosuchhost
expect_out "no host named nosuchhost"
on a expect_rc 0 "$ADMIN" rewrap --quiet

# ---- kill -9 of rewrap on one host, resumed from the other --------------------
on a "$ADMIN" abort --quiet >/dev/null
on a "$CLIENT" "$MOD" fleet $PIN fill 1500 >/dev/null
printf 'fleet key three, entered on every host\n' > pass3
on a expect_rc 0 "$ADMIN" stage --passphrase-file pass3
on b expect_rc 0 "$ADMIN" stage --passphrase-file pass3
on a "$ADMIN" rewrap --batch 20 --quiet &
rp=$!
sleep 0.3
kill -9 $rp 2>/dev/null || true
wait $rp 2>/dev/null || true
on b expect_rc 0 "$ADMIN" rewrap --quiet
on b expect_rc 0 "$ADMIN" commit
on a expect_rc 0 "$ADMIN" verify
expect_out "Verified"
on a "$CLIENT" "$MOD" fleet $PIN check 1600 >/dev/null || fail "objects missing after the resumed rewrap"
ok "rewrap killed on a (kill -9) resumed and committed from b; every record opens"

# ---- the database restarts under load -----------------------------------------
rm -f stop2
on a "$CLIENT" "$MOD" fleet $PIN run "$T/stop2" > client.r 2>&1 &
cr=$!
sleep 1
"$PGC" restart "$PGD" >/dev/null || fail "cannot restart the cluster"
sleep 2
n1=$(grep -c "failed" client.r || true)
sleep 1.5
n2=$(grep -c "failed" client.r || true)
touch stop2
wait $cr || true # operations during the restart may fail, never with wrong data
[ "$n1" = "$n2" ] || { tail -n 5 client.r; fail "the client kept failing after the database was back ($n1 -> $n2)"; }
# What could not complete is a device error, nothing else (no wrong data, no vanished objects).
others=$(grep "failed" client.r | grep -v "0x30$" | sort | uniq -c || true)
[ -z "$others" ] || fail "failures other than CKR_DEVICE_ERROR across the restart: $others"
on a "$CLIENT" "$MOD" fleet $PIN check 1600 >/dev/null || fail "objects unreadable after the database restart"
on b pkcs11-tool --module "$MOD" --token-label fleet --login --pin $PIN --sign -m ECDSA-SHA256 --id f1ee7a \
    --signature-format openssl -i msg -o sig.r >/dev/null || fail "no signing after the database restart"
openssl dgst -sha256 -verify ec1.pem -signature sig.r msg >/dev/null || fail "bad signature after the restart"
ok "database restart under load: clients recover, data intact ($(tail -n 1 client.r))"

# ---- backups move between backends ---------------------------------------------
on a expect_rc 0 "$ADMIN" backup "$T/pg.backup"
cat > "$T/lmdb.conf" <<CONF
keystore = $T/lmdbks
master_key = $T/a/mk.key
log = $T/lmdb.log
CONF
mkdir -p "$T/lmdbks"
P11MK_CONF=$T/lmdb.conf expect_rc 0 "$ADMIN" restore --yes "$T/pg.backup"
P11MK_CONF=$T/lmdb.conf pkcs11-tool --module "$MOD" --token-label fleet --login --pin $PIN --sign -m ECDSA-SHA256 \
    --id f1ee7a --signature-format openssl -i msg -o sig.l >/dev/null || fail "the LMDB copy cannot sign"
openssl dgst -sha256 -verify ec1.pem -signature sig.l msg >/dev/null || fail "bad signature from the LMDB copy"
P11MK_CONF=$T/lmdb.conf expect_rc 0 pkcs11-tool --module "$MOD" --token-label fleet --login --pin $PIN \
    --delete-object --type privkey --id f1ee7a
P11MK_CONF=$T/lmdb.conf expect_rc 0 "$ADMIN" backup "$T/lmdb.backup"
on a expect_rc 0 "$ADMIN" restore --yes "$T/lmdb.backup"
on b expect_rc 1 pkcs11-tool --module "$MOD" --token-label fleet --login --pin $PIN --sign -m ECDSA-SHA256 \
    --id f1ee7a -i msg -o sig.gone
expect_out "Private key not found|No private key found|not found"
on b expect_rc 0 "$ADMIN" verify
ok "backup of the PostgreSQL keystore restored into LMDB, and an LMDB backup restored into PostgreSQL (online)"

# ---- a copy of another keystore restored online ----------------------------------
# Its records are bound to its own id: a process that has the keystore open
# cannot follow it; it says so once (not "damaged" on every operation), and
# a new process uses the copy.
cat > "$T/foreign.conf" <<CONF
keystore = $T/foreignks
master_key = $T/foreign.key
log = $T/foreign.log
CONF
mkdir -p "$T/foreignks"
P11MK_CONF=$T/foreign.conf expect_rc 0 "$ADMIN" init --generate-key "$T/foreign.key"
P11MK_CONF=$T/foreign.conf pkcs11-tool --module "$MOD" --init-token --slot 1 --label foreign --so-pin $SO >/dev/null
P11MK_CONF=$T/foreign.conf expect_rc 0 "$ADMIN" export --to-default "$T/foreign.export"
on b "$CLIENT" "$MOD" fleet $PIN run "$T/stop3" > client.o 2>&1 &
held=$!
sleep 2 # logged in and signing
on a expect_rc 0 "$ADMIN" restore --yes "$T/foreign.export"
sleep 2
touch "$T/stop3"
set +e; wait $held; set -e
n=$(grep -c "was replaced by a copy of another keystore" "$T/b/p11mk.log" || true)
[ "$n" = 1 ] || { tail -n 5 "$T/b/p11mk.log"; fail "the running process said $n times that the keystore was replaced"; }
! grep -q "missing or failed authentication" "$T/b/p11mk.log" || fail "the running process reported damage"
grep -q "failed: 0x30" client.o || fail "the running process was not refused after the keystore was replaced"
on b pkcs11-tool --module "$MOD" -L > slots.o 2>&1 || fail "a new process cannot open the restored copy"
grep -q "foreign" slots.o || fail "a new process does not see the restored copy's token"
# a's key file was a commit behind (b committed the last rotation): the copy
# is sealed under the fleet's current key, which b's file follows.
on b expect_rc 0 "$ADMIN" verify
ok "another keystore's copy restored online: the running process says it must restart, a new one uses the copy"

# ---- bad input ------------------------------------------------------------------
bad_conf() { # name, connection string
    sed "s|^postgresql = .*|postgresql = $2|" "$T/a/p11mk.conf" > "$T/$1.conf"
}
bad_conf unreach "host=$T/nosuchdir dbname=fleet user=p11mk connect_timeout=2"
P11MK_CONF=$T/unreach.conf expect_rc 5 "$ADMIN" status
expect_out "cannot connect to its PostgreSQL database"
P11MK_CONF=$T/unreach.conf expect_rc 1 pkcs11-tool --module "$MOD" -L
printf '%s:%s:*:p11mk:wrong-password\n' "$PG_HOST" "$PG_PORT" > "$T/badpass"
chmod 600 "$T/badpass"
PGPASSFILE=$T/badpass P11MK_CONF=$T/a/p11mk.conf expect_rc 5 "$ADMIN" status
expect_out "password authentication failed"
grep -q "wrong-password" "$T/a/p11mk.log" "$T"/*.log 2>/dev/null && fail "a password reached a log"
# A database holding an unrelated keystore: refused by its check value, nothing changed.
OTHER=$("$PGC" newdb "$PGD" other)
bad_conf other "$OTHER"
sed -i "s|^master_key = .*|master_key = $T/other.key|" "$T/other.conf"
P11MK_CONF=$T/other.conf expect_rc 0 "$ADMIN" init --generate-key "$T/other.key"
on a sed "s|^postgresql = .*|postgresql = $OTHER|" "$T/a/p11mk.conf" > "$T/cross.conf"
P11MK_CONF=$T/cross.conf expect_rc 4 "$ADMIN" status
expect_out "check value"
# Another schema version; a partial schema.
psql -q "$OTHER" -c "UPDATE p11mk_schema SET version = 7" || fail "psql"
P11MK_CONF=$T/other.conf expect_rc 5 "$ADMIN" status
expect_out "schema version 7"
# No version row (a concurrent creation is looked at again, ks_pg.c probe;
# one still empty is damage).
psql -q "$OTHER" -c "DELETE FROM p11mk_schema" || fail "psql"
P11MK_CONF=$T/other.conf expect_rc 5 "$ADMIN" status
expect_out "no single version row"
psql -q "$OTHER" -c "INSERT INTO p11mk_schema VALUES (1)" -c "DROP TABLE p11mk_idx" || fail "psql"
P11MK_CONF=$T/other.conf expect_rc 5 "$ADMIN" status
expect_out "holds only 4 of p11mk's 5 tables"
# A password in a configuration others may read.
sed "s|^postgresql = \(.*\)|postgresql = \1 password=x|" "$T/a/p11mk.conf" > "$T/pw.conf"
chmod 644 "$T/pw.conf"
P11MK_CONF=$T/pw.conf expect_rc 3 "$ADMIN" status
expect_out "move the password to ~/.pgpass"
# An LMDB keystore directory named with backend = postgresql.
sed "s|^keystore = .*|keystore = $T/lmdbks|" "$T/a/p11mk.conf" > "$T/mixed.conf"
P11MK_CONF=$T/mixed.conf expect_rc 3 "$ADMIN" status
expect_out "holds an LMDB keystore"
ok "bad input: unreachable database, wrong password (not logged), unrelated keystore, schema version 7, partial schema, password in a readable file, LMDB directory"
