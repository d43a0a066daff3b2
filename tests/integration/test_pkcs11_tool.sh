#!/usr/bin/env bash
# OpenSC pkcs11-tool against the built module: token and PIN life cycle, key
# generation (EC, RSA, AES, generic secret), sign/verify, encrypt/decrypt,
# objects listed, read and deleted, PIN lock-out, the mechanism list and its
# flags, C_WaitForSlotEvent (--test-hotplug).
. "${P11MK_TESTLIB:?run the integration tests through meson test}"
need pkcs11-tool
need openssl

# The free slot.
p11 -L > slots.txt
grep -q "token state: *uninitialized" slots.txt || grep -q "uninitialized" slots.txt || fail "no free slot: $(cat slots.txt)"
grep -q "p11mk" <<<"$(p11 -I)" || fail "C_GetInfo does not name p11mk"
ok "free slot listed"

init_token first
p11 -L > slots.txt
grep -q "token label *: first" slots.txt || fail "token 'first' not listed"
[ "$(grep -c '^Slot ' slots.txt)" -eq 2 ] || fail "expected the token's slot plus one free slot"
grep -q "PIN initialized" slots.txt || fail "user PIN not reported as initialized"
ok "init-token, init-pin"

P=(--token-label first --login --pin $PIN)
p11 "${P[@]}" --keypairgen --key-type EC:prime256v1 --label ec256 --id 01 >/dev/null
p11 "${P[@]}" --keypairgen --key-type EC:secp384r1 --label ec384 --id 02 >/dev/null
p11 "${P[@]}" --keypairgen --key-type rsa:2048 --label rsa2048 --id 03 >/dev/null
p11 "${P[@]}" --keygen --key-type AES:32 --label aes256 --id 04 >/dev/null
p11 "${P[@]}" --keygen --key-type GENERIC:32 --label hmac --id 05 >/dev/null
p11 "${P[@]}" -O > objs.txt
for l in ec256 ec384 rsa2048 aes256 hmac; do grep -q "label: *$l" objs.txt || fail "object $l missing"; done
[ "$(grep -c '^Private Key Object' objs.txt)" -eq 3 ] || fail "expected 3 private keys"
[ "$(grep -c '^Public Key Object' objs.txt)" -eq 3 ] || fail "expected 3 public keys"
[ "$(grep -c '^Secret Key Object' objs.txt)" -eq 2 ] || fail "expected 2 secret keys"
# Without login, private objects are invisible; public ones are not.
p11 --token-label first -O > pub.txt
grep -q "^Private Key Object" pub.txt && fail "private keys visible without login"
grep -q "^Public Key Object" pub.txt || fail "public keys not visible without login"
ok "key generation EC P-256/P-384, RSA-2048, AES-256, generic secret"

echo "message to sign $RANDOM" > msg
for spec in "01 ECDSA-SHA256 sha256" "02 ECDSA-SHA256 sha256" "03 SHA256-RSA-PKCS sha256"; do
    set -- $spec
    p11 "${P[@]}" --sign -m "$2" --id "$1" -f openssl -i msg -o sig.$1 >/dev/null
    # (pkcs11-tool 0.23 exits 0 on a bad signature: read its verdict)
    expect_rc 0 p11 "${P[@]}" --verify -m "$2" --id "$1" -f openssl -i msg --signature-file sig.$1
    expect_out "Signature is valid"
    pubkey_der first "$1" pub.$1.der
    openssl pkey -pubin -inform DER -in pub.$1.der -out pub.$1.pem
    openssl dgst -"$3" -verify pub.$1.pem -signature sig.$1 msg >/dev/null || fail "openssl rejects signature of key $1"
    # A corrupted signature is refused.
    cp sig.$1 bad.$1; printf '\x01' | dd of=bad.$1 bs=1 seek=10 conv=notrunc 2>/dev/null
    if cmp -s sig.$1 bad.$1; then printf '\x02' | dd of=bad.$1 bs=1 seek=10 conv=notrunc 2>/dev/null; fi
    set +e; p11 "${P[@]}" --verify -m "$2" --id "$1" -f openssl -i msg --signature-file bad.$1 >"$T/out" 2>&1; set -e
    expect_out "Invalid signature"
done
# Raw ECDSA on a digest computed outside.
openssl dgst -sha256 -binary msg > msg.sha256
p11 "${P[@]}" --sign -m ECDSA --id 01 -i msg.sha256 -o raw.sig >/dev/null
[ "$(stat -c %s raw.sig)" -eq 64 ] || fail "raw ECDSA P-256 signature is not 64 bytes"
expect_rc 0 p11 "${P[@]}" --verify -m ECDSA --id 01 -i msg.sha256 --signature-file raw.sig
expect_out "Signature is valid"
# HMAC
p11 "${P[@]}" --sign -m SHA256-HMAC --id 05 -i msg -o mac >/dev/null
[ "$(stat -c %s mac)" -eq 32 ] || fail "HMAC-SHA256 is not 32 bytes"
# EdDSA (Ed25519) through pkcs11-tool.
p11 "${P[@]}" --keypairgen --key-type EC:edwards25519 --label ed25519 --id 07 >/dev/null
p11 "${P[@]}" --sign -m EDDSA --id 07 -i msg -o ed.sig >/dev/null
[ "$(stat -c %s ed.sig)" -eq 64 ] || fail "Ed25519 signature is not 64 bytes"
expect_rc 0 p11 "${P[@]}" --verify -m EDDSA --id 07 -i msg --signature-file ed.sig
expect_out "Signature is valid"
p11 "${P[@]}" --delete-object --type privkey --id 07 >/dev/null
p11 "${P[@]}" --delete-object --type pubkey --id 07 >/dev/null
ok "sign/verify ECDSA, RSA PKCS#1, HMAC, EdDSA; openssl verifies; corrupted signatures refused"

# A key that wants the PIN for every use: pkcs11-tool sees CKA_ALWAYS_AUTHENTICATE
# and logs in with CKU_CONTEXT_SPECIFIC after C_SignInit.
p11 "${P[@]}" --keypairgen --key-type EC:prime256v1 --always-auth --label always --id 0a > aa.txt
grep -q "Access: *always authenticate" aa.txt || { cat aa.txt; fail "the key does not always authenticate"; }
p11 "${P[@]}" --sign -m ECDSA-SHA256 --id 0a -f openssl -i msg -o sig.0a >"$T/out" 2>&1 || { cat "$T/out"; fail "sign with an always-authenticate key"; }
expect_rc 0 p11 "${P[@]}" --verify -m ECDSA-SHA256 --id 0a -f openssl -i msg --signature-file sig.0a
expect_out "Signature is valid"
p11 "${P[@]}" --delete-object --type privkey --id 0a >/dev/null
p11 "${P[@]}" --delete-object --type pubkey --id 0a >/dev/null
ok "CKA_ALWAYS_AUTHENTICATE key: pkcs11-tool signs after its context-specific login"

IV=00112233445566778899aabbccddeeff
head -c 1000 /dev/urandom > plain
p11 "${P[@]}" --encrypt -m AES-CBC-PAD --id 04 --iv $IV -i plain -o ct >/dev/null
p11 "${P[@]}" --decrypt -m AES-CBC-PAD --id 04 --iv $IV -i ct -o back >/dev/null
cmp plain back || fail "AES-CBC-PAD round trip"
[ "$(stat -c %s ct)" -eq 1008 ] || fail "AES-CBC-PAD ciphertext length"
head -c 100 plain > short
openssl pkeyutl -encrypt -pubin -inkey pub.03.pem -in short -out short.rsa
p11 "${P[@]}" --decrypt -m RSA-PKCS --id 03 -i short.rsa -o short.back >/dev/null
cmp short short.back || fail "RSA-PKCS decrypt of an openssl ciphertext"
ok "encrypt/decrypt AES-CBC-PAD and RSA-PKCS"
# pkcs11-tool 0.23 encrypts with none of the AEAD mechanisms ("Mechanism
# AES-GCM illegal or not supported"; AES-CCM and ChaCha20-Poly1305 neither,
# and it has no ChaCha20 key type); test_aead drives them through the
# module. A pkcs11-tool that can must get the plaintext back.
set +e; p11 "${P[@]}" --encrypt -m AES-GCM --id 04 --iv 000102030405060708090a0b -i plain -o gcm >"$T/out" 2>&1; rc=$?; set -e
if [ $rc -eq 0 ]; then
    p11 "${P[@]}" --decrypt -m AES-GCM --id 04 --iv 000102030405060708090a0b -i gcm -o gcm.back >/dev/null
    cmp plain gcm.back || fail "AES-GCM round trip"
    ok "encrypt/decrypt AES-GCM"
else
    expect_out "AES-GCM illegal or not supported"
    ok "AES-GCM (this pkcs11-tool does not encrypt with it)"
fi

# Triple DES. pkcs11-tool 0.23 gives every secret key generation a
# CKA_VALUE_LEN, which DES keys do not have (their type fixes the length):
# the token takes one that says the type's length, and refuses another.
expect_rc 0 p11 "${P[@]}" --keygen --key-type DES3:24 --label des3 --id 07
expect_out "Secret Key Object; DES3"
expect_rc 1 p11 "${P[@]}" --keygen --key-type DES3:16 --label des3short --id 08
expect_out "CKR_TEMPLATE_INCONSISTENT"
p11 "${P[@]}" --list-objects --type secrkey > secrets.txt
grep -q "label: *des3" secrets.txt || fail "DES3 key not listed"
grep -q "des3short" secrets.txt && fail "a 16-byte DES3 key was made"
# pkcs11-tool 0.23 encrypts with AES only ("Mechanism DES3-CBC-PAD illegal
# or not supported"); test_des drives DES3 encryption through the module. A
# pkcs11-tool that can must get the plaintext back.
IV8=0011223344556677
set +e; p11 "${P[@]}" --encrypt -m DES3-CBC-PAD --id 07 --iv $IV8 -i plain -o ct3 >"$T/out" 2>&1; rc=$?; set -e
if [ $rc -eq 0 ]; then
    p11 "${P[@]}" --decrypt -m DES3-CBC-PAD --id 07 --iv $IV8 -i ct3 -o back3 >/dev/null
    cmp plain back3 || fail "DES3-CBC-PAD round trip"
    [ "$(stat -c %s ct3)" -eq 1008 ] || fail "DES3-CBC-PAD ciphertext length"
    ok "DES3 key generation, encrypt/decrypt DES3-CBC-PAD"
else
    expect_out "DES3-CBC-PAD illegal or not supported"
    ok "DES3 key generation (this pkcs11-tool does not encrypt with DES3)"
fi

# Sensitive keys do not leave the token.
expect_rc 1 p11 "${P[@]}" --read-object --type secrkey --id 04 -o leak
expect_out "C_GetAttributeValue\\(VALUE\\) failed: rv = CKR_ATTRIBUTE_SENSITIVE"
# Data objects and certificates.
echo "some data" > data.bin
p11 "${P[@]}" --write-object data.bin --type data --label blob --application-label app >/dev/null
p11 "${P[@]}" --read-object --type data --label blob -o data.out >/dev/null
cmp data.bin data.out || fail "data object round trip"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout /dev/null \
    -subj /CN=p11mk-test -days 1 -outform DER -out cert.der 2>/dev/null
p11 "${P[@]}" --write-object cert.der --type cert --label cert1 --id 06 >/dev/null
p11 --token-label first --read-object --type cert --id 06 -o cert.out >/dev/null
cmp cert.der cert.out || fail "certificate round trip"
ok "data objects and certificates"

# Delete objects.
p11 "${P[@]}" --delete-object --type privkey --id 02 >/dev/null
p11 "${P[@]}" --delete-object --type data --label blob >/dev/null
p11 "${P[@]}" -O > objs.txt
grep -q "label: *blob" objs.txt && fail "deleted data object still listed"
[ "$(grep -c '^Private Key Object' objs.txt)" -eq 2 ] || fail "deleted private key still listed"
ok "delete-object"

# A second token in another slot; objects stay apart.
init_token second
p11 --token-label second --login --pin $PIN -O > objs2.txt
grep -q "Object" objs2.txt && fail "a new token shows objects of another token"
grep -q "token label *: second" <<<"$(p11 -L)" || fail "second token not listed"
ok "two tokens"

# Change the user PIN, then lock it out with wrong PINs; the SO resets it.
p11 --token-label second --login --pin $PIN --change-pin --new-pin newpin-1 >/dev/null
expect_rc 1 p11 --token-label second --login --pin $PIN -O
expect_out "C_Login failed: rv = CKR_PIN_INCORRECT"
p11 --token-label second --login --pin newpin-1 -O >/dev/null
for i in $(seq 1 10); do
    expect_rc 1 p11 --token-label second --login --pin wrong-pin -O
    expect_out "C_Login failed: rv = CKR_PIN_(INCORRECT|LOCKED)"
done
p11 -L > slots.txt
grep -A12 "token label *: second" slots.txt | grep >/dev/null "user PIN locked" || fail "user PIN not reported locked: $(cat slots.txt)"
expect_rc 1 p11 --token-label second --login --pin newpin-1 -O
expect_out "CKR_PIN_LOCKED"
p11 --token-label second --login --login-type so --so-pin $SO --init-pin --new-pin fresh-pin >/dev/null
p11 --token-label second --login --pin fresh-pin -O >/dev/null || fail "SO reset of a locked PIN"
ok "change PIN, lock-out after 10 wrong PINs, SO reset"

# Re-initializing a token wipes its objects.
p11 --init-token --slot-index 0 --label first --so-pin $SO >/dev/null
p11 --token-label first --login --login-type so --so-pin $SO --init-pin --new-pin $PIN >/dev/null
p11 --token-label first --login --pin $PIN -O > objs.txt
grep -q "Object" objs.txt && fail "re-initialized token kept objects"
ok "re-init wipes the token"

p11 --generate-random 64 -o rnd >/dev/null
[ "$(stat -c %s rnd)" -eq 64 ] || fail "C_GenerateRandom"
p11 -M > mechs.txt
for m in AES-KEY-GEN AES-GCM AES-CBC-PAD ECDSA-KEY-PAIR-GEN ECDSA ECDSA-SHA256 RSA-PKCS-KEY-PAIR-GEN RSA-PKCS \
         SHA256-RSA-PKCS SHA256 GENERIC-SECRET-KEY-GEN SHA256-HMAC DES2-KEY-GEN DES3-KEY-GEN DES3-ECB DES3-CBC \
         DES3-CBC-PAD DES3-CMAC; do
    grep -q "^ *$m[ ,]" mechs.txt || grep -q "^ *$m\$" mechs.txt || fail "mechanism $m not listed"
done
# Single DES and MD5 only with legacy_mechanisms = yes (test_admin, test_des).
for m in DES-KEY-GEN DES-ECB DES-CBC DES-CBC-PAD MD5 MD5-HMAC; do
    grep -q "^ *$m[ ,]" mechs.txt && fail "legacy mechanism $m listed by default"
done
# The AEAD mechanisms encrypt messages (CKF_MESSAGE_ENCRYPT, _DECRYPT,
# CKF_MULTI_MESSAGE: "other flags=0x26"), the MACs sign them
# (CKF_MESSAGE_SIGN, _VERIFY, CKF_MULTI_MESSAGE: 0x38), no others;
# pkcs11-tool 0.23 names AES-CCM, ChaCha20-Poly1305 and ChaCha20 key
# generation by number.
for m in AES-GCM mechtype-0x1088 mechtype-0x4021; do
    grep -q "^ *$m, keySize={[0-9]*,32}, encrypt, decrypt, other flags=0x26\$" mechs.txt || fail "$m not listed as AEAD"
done
for m in AES-CMAC DES3-CMAC SHA-1-HMAC SHA256-HMAC SHA3-224-HMAC SHA3-256-HMAC; do
    grep -q "^ *$m, keySize={[0-9]*,[0-9]*}, sign, verify, other flags=0x38\$" mechs.txt || fail "$m not listed with message signing"
done
[ "$(grep -c 'other flags=0x26$' mechs.txt)" -eq 3 ] && [ "$(grep -c 'sign, verify, other flags=0x38$' mechs.txt)" -eq 18 ] &&
    [ "$(grep -c 'other flags=' mechs.txt)" -eq 21 ] || fail "message-based flags: $(grep 'other flags=' mechs.txt)"
grep -E "^ *[A-Z0-9-]*(RSA|ECDSA|EDDSA)[A-Z0-9-]*," mechs.txt | grep "other flags" && fail "a signature mechanism signs messages"
grep -q "^ *mechtype-0x1225, keySize={32,32}, generate\$" mechs.txt || fail "ChaCha20 key generation not listed"
ok "random, mechanism list"
# Recovery on RSA-PKCS and RSA-X-509 only; the SHA-x key derivations (pkcs11-tool
# 0.23 names SHA-1's only, and its --derive takes EC keys only: test_funcs and
# test_vectors derive with them through the module).
for m in RSA-PKCS RSA-X-509; do
    grep -Eq "^ *$m, .*sign_recover, .*verify_recover" mechs.txt || fail "$m does not say it recovers"
done
[ "$(grep -c sign_recover mechs.txt)" -eq 2 ] || fail "another mechanism says it recovers: $(grep sign_recover mechs.txt)"
for m in SHA1-KEY-DERIVATION mechtype-0x396 mechtype-0x393 mechtype-0x394 mechtype-0x395; do
    grep -Eq "^ *$m, keySize=\{8,4096\}, derive\$" mechs.txt || fail "key derivation $m not listed"
done
grep -q "other flags=0x220" <<<"$(p11 -T)" || fail "no CKF_DUAL_CRYPTO_OPERATIONS in the token flags"
ok "sign/verify recover and key derivation mechanisms, dual-function flag"

# C_WaitForSlotEvent: pkcs11-tool --test-hotplug lists the slots once, then
# blocks in it until another process initializes a token on the free slot.
p11 -L > slots.txt
free=$(grep '^Slot ' slots.txt | tail -1 | sed 's/.*(\(0x[0-9a-f]*\)).*/\1/')
idx=$(( $(grep -c '^Slot ' slots.txt) - 1 ))
{ echo x; echo; sleep 1; p11 --init-token --slot-index "$idx" --label hotplug --so-pin $SO >/dev/null; sleep 1; echo x; } |
    timeout 60 pkcs11-tool --module "$MOD" --test-hotplug > hotplug.txt 2>&1 || { cat hotplug.txt; fail "--test-hotplug"; }
grep -q "Calling C_WaitForSlotEvent: event on slot $free\$" hotplug.txt || { cat hotplug.txt; fail "no event on slot $free"; }
grep -q "token label *: hotplug" hotplug.txt || fail "the slot listed after the event has no token 'hotplug'"
ok "C_WaitForSlotEvent: pkcs11-tool --test-hotplug sees a token initialized by another process"
