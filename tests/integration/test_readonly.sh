#!/usr/bin/env bash
# A keystore this user may read but not write is served read-only: tokens are
# write-protected, keys still sign, writes fail with CKR_TOKEN_WRITE_PROTECTED.
# A keystore directory that cannot be created fails C_Initialize with a
# clear log line. (Root ignores permissions: as root this runs as nobody.)
P11MK_NONROOT=1
. "${P11MK_TESTLIB:?run the integration tests through meson test}"
need pkcs11-tool

init_token ro
P=(--token-label ro --login --pin $PIN)
p11 "${P[@]}" --keypairgen --key-type EC:prime256v1 --label signer --id 01 >/dev/null
echo data > msg

chmod 0400 "$KS/data.mdb"
chmod 0500 "$KS"
p11 -L > slots.txt
grep -q "token label *: ro" slots.txt || fail "read-only keystore: token not listed"
grep -Eiq "readonly|write.protected" slots.txt || { cat slots.txt; fail "token not reported write-protected"; }
p11 "${P[@]}" --sign -m ECDSA-SHA256 --id 01 -i msg -o sig >/dev/null || fail "signing from a read-only keystore"
expect_rc 0 p11 "${P[@]}" --verify -m ECDSA-SHA256 --id 01 -i msg --signature-file sig
expect_out "Signature is valid"
expect_rc 1 p11 "${P[@]}" --keygen --key-type AES:16 --label new
expect_out "CKR_TOKEN_WRITE_PROTECTED"
grep -q "not writable by this user: serving it read-only" "$T/p11mk.log" || fail "no log line about the read-only keystore"
expect_rc 1 p11 --token-label ro --login --pin wrong-pin -O
expect_out "CKR_PIN_INCORRECT"
grep -q "wrong user PIN (not counted: read-only keystore)" "$T/p11mk.log" || fail "no log line about the uncounted wrong PIN"
expect_rc 0 "$ADMIN" status
ok "read-only keystore: listed, write-protected, signs, refuses writes; a wrong PIN is CKR_PIN_INCORRECT"
chmod 0700 "$KS"; chmod 0600 "$KS/data.mdb"

# A keystore directory that cannot be created.
printf 'keystore = /proc/p11mk-nowhere/ks\nlog = %s\n' "$T/p11mk.log" > "$T/bad.conf"
P11MK_CONF=$T/bad.conf expect_rc 1 pkcs11-tool --module "$MOD" -L
expect_out "C_Initialize failed: rv = CKR_GENERAL_ERROR"
grep -q "cannot create keystore directory /proc/p11mk-nowhere/ks" "$T/p11mk.log" || fail "no log line naming the directory"
P11MK_CONF=$T/bad.conf expect_rc 5 "$ADMIN" status
expect_out "p11mk-admin init"
ok "uncreatable keystore directory: C_Initialize fails with a clear log line"
