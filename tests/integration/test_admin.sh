#!/usr/bin/env bash
# p11mk-admin: init, status (text and JSON), help, version, exit codes and
# messages for bad configuration, wrong or exposed master keys, missing keystores.
. "${P11MK_TESTLIB:?run the integration tests through meson test}"

expect_rc 0 "$ADMIN" --help
expect_out "Exit codes"
expect_rc 0 "$ADMIN" version
expect_out "keystore format 2 \(reads 1 and 2\)"
expect_rc 2 "$ADMIN"
expect_rc 2 "$ADMIN" frobnicate
expect_out "unknown command 'frobnicate'"
expect_rc 2 "$ADMIN" status --bogus
# set-master-key takes a key someone enters: --generate is refused before
# anything is asked or opened.
expect_rc 2 "$ADMIN" set-master-key --generate --yes
expect_out "for a generated key run 'p11mk-admin rotate'"
cmds="init status list verify version set-master-key rotate stage rewrap commit abort clear-history
      auto-update backup restore export delete-token"
for c in $cmds; do
    expect_rc 0 "$ADMIN" $c --help
    expect_out "^Usage: p11mk-admin $c"
done
ok "help, version, usage errors; every command has its --help"

# The man pages: every command and every configuration key documented, and
# (when groff is there) the pages render without warnings.
SRC=$(cd "$(dirname "$P11MK_TESTLIB")/../.." && pwd)
for c in $cmds; do
    grep -Eq "^\.B[IR]? \"?${c//-/\\\\-}( |$)" "$SRC/admin/p11mk-admin.1" || fail "p11mk-admin.1 does not document '$c'"
done
keys=$(awk '/^#define KNOWN_KEYS/ { f = 1 } f { print } f && !/\\$/ { exit }' "$SRC/keystore/ks_config.c" |
       grep -o '"[^"]*"' | tr -d '",')
[ -n "$keys" ] || fail "cannot read the configuration keys from ks_config.c"
for k in $keys; do
    grep -Eq "^\.BI? $k( |$)" "$SRC/admin/p11mk.conf.5" || fail "p11mk.conf.5 does not document '$k'"
done
if command -v groff >/dev/null; then
    for m in "$SRC/admin/p11mk-admin.1" "$SRC/admin/p11mk.conf.5"; do
        w=$(groff -man -ww -z "$m" 2>&1) && [ -z "$w" ] || fail "$(basename "$m") renders with warnings: $w"
    done
fi
ok "man pages document every command and configuration key"

# status before init: the keystore is missing -> 5 with the remedy.
expect_rc 5 "$ADMIN" status
expect_out "p11mk-admin init"
ok "missing keystore"

expect_rc 0 "$ADMIN" init
if [ -n "$PG_DB" ]; then
    echo "SKIP: the keystore's data.mdb and its mode: the keystore is in a PostgreSQL database"
else
    [ -f "$KS/data.mdb" ] || fail "init did not create the keystore"
    [ "$(stat -c %a "$KS/data.mdb")" = 600 ] || fail "data.mdb is not mode 600"
fi
expect_rc 0 "$ADMIN" status
expect_out "Keystore: +$KS"
expect_out "default"
expect_out "WARNING"
expect_rc 0 "$ADMIN" status --json
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["epoch"]==1, d; assert d["master_key"]["default"] is True, d' "$T/out" \
    || fail "status --json is not the expected JSON"
ok "init and status on the default key"

# Tokens and object counts show up in status.
init_token alpha
p11 --token-label alpha --login --pin $PIN --keygen --key-type AES:32 --label k --id 01 >/dev/null
expect_rc 0 "$ADMIN" status --json
python3 - "$T/out" <<'PY' || fail "status --json does not list token alpha with 2 objects"
import json, sys
d = json.load(open(sys.argv[1]))
t = [t for t in d["tokens"] if t["label"] == "alpha"]
assert len(t) == 1 and t[0]["objects"] == 1, d
PY
ok "status lists tokens with object counts"

# A key file keystore.
KS2=$T/ks2
cat > "$T/k.conf" <<CONF
keystore = $KS2
master_key = $T/master.key
CONF
P11MK_CONF=$T/k.conf expect_rc 4 "$ADMIN" status
expect_out "master.key"
P11MK_CONF=$T/k.conf expect_rc 0 "$ADMIN" init --generate-key "$T/master.key"
[ "$(stat -c %a "$T/master.key")" = 600 ] || fail "key file is not mode 600"
P11MK_CONF=$T/k.conf expect_rc 0 "$ADMIN" status
expect_out "$T/master.key"
if grep -q WARNING "$T/out"; then fail "a key-file keystore must not warn about the default key"; fi
# init refuses to overwrite an existing key file.
P11MK_CONF=$T/k.conf expect_rc 4 "$ADMIN" init --generate-key "$T/master.key"
expect_out "refusing to overwrite"
ok "init --generate-key"

# Loose permissions on the key file: refused, with the fix.
chmod 644 "$T/master.key"
P11MK_CONF=$T/k.conf expect_rc 4 "$ADMIN" status
expect_out "chmod 600"
chmod 600 "$T/master.key"

# The wrong key: both key check values named.
head -c 32 /dev/urandom > "$T/other.key"; chmod 600 "$T/other.key"
sed "s|$T/master.key|$T/other.key|" "$T/k.conf" > "$T/wrong.conf"
P11MK_CONF=$T/wrong.conf expect_rc 4 "$ADMIN" status
expect_out "check value [0-9a-f]{16}.*check value [0-9a-f]{16}"
# Truncated key file.
head -c 16 /dev/urandom > "$T/short.key"; chmod 600 "$T/short.key"
sed "s|$T/master.key|$T/short.key|" "$T/k.conf" > "$T/short.conf"
P11MK_CONF=$T/short.conf expect_rc 4 "$ADMIN" status
expect_out "truncated"
ok "key file permissions, wrong key, truncated key"

# Configuration errors name file, line and key; the module refuses too.
printf 'keystore = %s\nmaster-key = default\n' "$KS" > "$T/bad.conf"
P11MK_CONF=$T/bad.conf expect_rc 3 "$ADMIN" status
expect_out "bad.conf:2: unknown key 'master-key'"
P11MK_CONF=$T/bad.conf expect_rc 1 pkcs11-tool --module "$MOD" -L
expect_out "C_Initialize failed: rv = CKR_GENERAL_ERROR"
P11MK_CONF=$T/nonexistent.conf expect_rc 3 "$ADMIN" status
ok "configuration errors"

# delete-token: shows what goes, asks (no terminal and no --yes: refused),
# deletes the token with its objects, and never gives its slot id again.
init_token beta
init_token gamma
p11 --token-label gamma --login --pin $PIN --keygen --key-type AES:32 --label g1 --id 07 >/dev/null
p11 --token-label gamma --login --pin $PIN --keygen --key-type AES:32 --label g2 --id 08 >/dev/null
gslot=$("$ADMIN" list --token gamma --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["tokens"][0]["slot"])')
expect_rc 1 "$ADMIN" delete-token --token gamma </dev/null
expect_out "holds 2 objects"
expect_out "add --yes"
"$ADMIN" list --token gamma >/dev/null || fail "a declined delete-token deleted the token"
expect_rc 2 "$ADMIN" delete-token
expect_rc 2 "$ADMIN" delete-token --token gamma --slot "$gslot"
expect_rc 1 "$ADMIN" delete-token --token nosuch --yes
expect_out "no token labeled 'nosuch'"
expect_rc 1 "$ADMIN" delete-token --slot 999 --yes
expect_out "no token in slot 999"
expect_rc 0 "$ADMIN" delete-token --token gamma --yes
expect_out "Deleted token 'gamma' \\(slot $gslot\\) and its 2 objects"
expect_rc 1 "$ADMIN" list --token gamma
expect_out "no token labeled 'gamma'"
p11 -L > slots.txt
grep -q "token label *: gamma" slots.txt && fail "pkcs11-tool still lists token gamma"
grep -q "token label *: beta" slots.txt || fail "delete-token took token beta too"
grep -q "token label *: alpha" slots.txt || fail "delete-token took token alpha too"
grep -q "(0x$(printf %x "$gslot")): " slots.txt && fail "slot $gslot is offered again after its token was deleted"
expect_rc 0 "$ADMIN" verify
# Two tokens with one label: --token is refused, --slot picks one.
init_token twin
init_token twin
expect_rc 1 "$ADMIN" delete-token --token twin --yes
expect_out "2 tokens are labeled 'twin'; name one with --slot N"
tslot=$("$ADMIN" list --token twin --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["tokens"][0]["slot"])')
expect_rc 0 "$ADMIN" delete-token --slot "$tslot" --yes
[ "$("$ADMIN" list --token twin --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["tokens"]))')" = 1 ] ||
    fail "delete-token --slot did not delete exactly one of the twins"
left=$("$ADMIN" list --token twin --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["tokens"][0]["slot"])')
expect_rc 0 "$ADMIN" list --slot "$left"
expect_out "^Token twin \\(slot $left\\)"
expect_rc 1 "$ADMIN" list --slot 999
expect_out "no token in slot 999"
ok "delete-token: asks, deletes one token and its objects, never reuses the slot id; list --slot"

# rsa_min_bits: the smallest RSA key generation makes, reported by C_GetMechanismInfo.
init_token rsamin
R=(--token-label rsamin --login --pin $PIN)
p11 -M > mechs.txt
grep -Eiq "RSA-PKCS-KEY-PAIR-GEN, keySize=\{2048,8192\}" mechs.txt || { cat mechs.txt; fail "default RSA minimum not 2048"; }
expect_rc 1 p11 "${R[@]}" --keypairgen --key-type rsa:1024 --label small
expect_out "CKR_ATTRIBUTE_VALUE_INVALID"
echo "rsa_min_bits = 1024" >> "$CONF"
grep -Eiq "RSA-PKCS-KEY-PAIR-GEN, keySize=\{1024,8192\}" <<<"$(p11 -M)" || fail "rsa_min_bits = 1024 not reported"
expect_rc 0 p11 "${R[@]}" --keypairgen --key-type rsa:1024 --label small
for bad in 512 1023 9000 abc 2049; do
    sed -i '/^rsa_min_bits/d' "$CONF"
    echo "rsa_min_bits = $bad" >> "$CONF"
    expect_rc 3 "$ADMIN" status
    expect_out "rsa_min_bits .* must be a number of bits from 1024 to 8192"
done
sed -i '/^rsa_min_bits/d' "$CONF"
echo "rsa_min_bits =" >> "$CONF"
expect_rc 3 "$ADMIN" status
expect_out "key 'rsa_min_bits' has an empty value"
sed -i '/^rsa_min_bits/d' "$CONF"
ok "rsa_min_bits: 2048 by default, 1024 when configured, bad values refused with a sentence"
echo "wrap_policy = loose" >> "$CONF"
expect_rc 3 "$ADMIN" status
expect_out "wrap_policy 'loose' is not one of default, strict"
sed -i '/^wrap_policy/d' "$CONF"
echo "wrap_policy = strict" >> "$CONF"
expect_rc 0 "$ADMIN" status
sed -i '/^wrap_policy/d' "$CONF"
ok "wrap_policy: default or strict, anything else refused with a sentence"
for bad in 1 63 100 131072 -1 2k; do
    echo "secure_heap = $bad" >> "$CONF"
    expect_rc 3 "$ADMIN" status
    expect_out "secure_heap '.*' must be 0 .* or a power of two of KiB from 64 to 65536"
    sed -i '/^secure_heap/d' "$CONF"
done
for good in 0 64 4096; do
    echo "secure_heap = $good" >> "$CONF"
    expect_rc 0 "$ADMIN" status
    p11 "${R[@]}" --keypairgen --key-type EC:prime256v1 --label "sh$good" >/dev/null ||
        fail "a key pair with secure_heap = $good"
    sed -i '/^secure_heap/d' "$CONF"
done
ok "secure_heap: 0 or a power of two of KiB, anything else refused with a sentence"

# One map from failures to exit codes: the same failure gives the same code
# whichever command meets it (configuration 3, key file 4, keystore 5), and
# the message says what to do.
E=$T/exitmap
mkdir -p "$E"
printf 'keystore = %s/ks\nmaster_key = %s/mk\n' "$E" "$E" > "$E/c.conf"
P11MK_CONF=$E/c.conf expect_rc 0 "$ADMIN" init --generate-key "$E/mk"
cmds=("status" "list" "verify" "stage --generate --yes" "rotate --yes" "backup $E/b.mdb" "delete-token --slot 1 --yes")
each() { # code message: every command fails with that code and says the message
    for c in "${cmds[@]}"; do
        # shellcheck disable=SC2086
        P11MK_CONF=$E/c.conf expect_rc "$1" "$ADMIN" $c
        expect_out "$2"
    done
}
chmod 777 "$E/ks"
each 5 "writable by every user; run: chmod o-w"
chmod 700 "$E/ks"
chmod 644 "$E/mk"
each 4 "lets others read it; run: chmod 600"
chmod 600 "$E/mk"
cp "$E/c.conf" "$E/c.good"
echo "keystore = $E/ks" >> "$E/c.conf"
each 3 "key 'keystore' is set twice"
cp "$E/c.good" "$E/c.conf"
P11MK_CONF=$E/c.conf expect_rc 0 "$ADMIN" status
ok "exit codes: a keystore, key-file or configuration failure gives the same code from every command"

# legacy_mechanisms: single DES and MD5 only when asked for, and only when
# OpenSSL's legacy provider loads (into the module's own library context).
legacy="DES-KEY-GEN DES-ECB DES-CBC DES-CBC-PAD MD5 MD5-HMAC"
echo "legacy_mechanisms = maybe" >> "$CONF"
expect_rc 3 "$ADMIN" status
expect_out "legacy_mechanisms 'maybe' is not one of no, yes"
sed -i '/^legacy_mechanisms/d' "$CONF"
p11 -M > mechs.txt
for m in $legacy; do grep -q "^ *$m[ ,]" mechs.txt && fail "$m listed by default"; done
echo "legacy_mechanisms = yes" >> "$CONF"
p11 -M > mechs.txt
for m in $legacy; do grep -q "^ *$m[ ,]" mechs.txt || fail "$m not listed with legacy_mechanisms = yes"; done
expect_rc 0 p11 "${R[@]}" --keygen --key-type DES:8 --label des1
expect_out "Secret Key Object; DES"
printf abc > abc
p11 --token-label rsamin --hash -m MD5 -i abc -o abc.md5 >/dev/null
[ "$(od -An -tx1 abc.md5 | tr -d ' \n')" = 900150983cd24fb0d6963f7d28e17f72 ] || fail "MD5 of abc"
OPENSSL_MODULES=$T/no-modules p11 -M > mechs.txt
for m in $legacy; do grep -q "^ *$m[ ,]" mechs.txt && fail "$m listed without a legacy provider"; done
grep -q "legacy provider cannot be loaded" "$T/p11mk.log" || fail "no warning for a missing legacy provider"
sed -i '/^legacy_mechanisms/d' "$CONF"
ok "legacy_mechanisms: off by default, single DES and MD5 with yes, none (and a warning) without the provider"
