#!/usr/bin/env bash
# A keystore made before private objects were bound to the PIN
# (tests/fixtures/pin-v1, see its README.md) keeps working: it passes verify,
# its private objects give the values they were made with after the user's
# first login and after the SO's (who re-sets the user PIN), in either order.
. "${P11MK_TESTLIB:?run the integration tests through meson test}"
need pkcs11-tool
need openssl
RACE=${P11MK_PIN_RACE:?P11MK_PIN_RACE must name the built pin_race}
FX=$(cd "$(dirname "$P11MK_TESTLIB")/../fixtures/pin-v1" && pwd)
NEWPIN=user-pin-new

# The fixture's keystore and master key, as a fresh copy.
fresh_fixture() {
    rm -rf "$KS" "$T/master.key"
    mkdir -m 700 "$KS"
    cp "$FX/data.mdb" "$KS/data.mdb"
    chmod 600 "$KS/data.mdb"
    install -m 600 "$FX/master.key" "$T/master.key"
}
fresh_fixture
echo "master_key = $T/master.key" >> "$CONF"

# Known results: the AES-256 encryption of a block under aes.bin, the RSA
# public key of rsa.der.
head -c 64 /dev/zero | tr '\0' 'B' > block
openssl enc -aes-256-ecb -K "$(od -An -tx1 -v "$FX/aes.bin" | tr -d ' \n')" -nopad -in block -out block.want
openssl pkey -inform DER -in "$FX/rsa.der" -pubout -out rsa.pem || fail "cannot read the fixture's rsa.der"
echo "a message for the legacy keys" > msg

admin_checks() { # WHEN
    expect_rc 0 "$ADMIN" verify
    expect_rc 0 "$ADMIN" list
    for l in aes1 rsa1 data1 ec1; do
        grep -q "label=$l " "$T/out" || { cat "$T/out" >&2; fail "$1: p11mk-admin list does not list $l"; }
    done
    ok "$1: p11mk-admin verify passes, list lists aes1 rsa1 data1 ec1"
}

# binding_is WHEN WANT: what status says of the private objects' protection.
binding_is() {
    expect_rc 0 "$ADMIN" status --json
    grep -q "\"private_objects\": \"$2\"" "$T/out" || { cat "$T/out" >&2; fail "$1: status does not say $2"; }
    ok "$1: status says the private objects are $2"
}

# user_checks PIN WHEN: every private object of the fixture works for the user.
user_checks() {
    local U=(--token-label legacy --login --pin "$1")
    # aes1: the fixture's README calls it extractable; where it is, its value
    # must read back. Either way it must encrypt as a key of value aes.bin.
    rm -f aes.got block.got data.got rsa.sig ec.sig
    if grep -E 'label=aes1 ' "$T/list.txt" | grep >/dev/null extractable; then
        p11 "${U[@]}" --read-object --type secrkey --label aes1 -o aes.got >/dev/null 2>&1
        cmp -s aes.got "$FX/aes.bin" || fail "$2: aes1 does not read back the value aes.bin"
        ok "$2: aes1 reads back the value aes.bin"
    fi
    p11 "${U[@]}" --encrypt -m AES-ECB --id 02 -i block -o block.got >/dev/null 2>&1 ||
        fail "$2: aes1 does not encrypt"
    cmp -s block.got block.want || fail "$2: aes1 does not encrypt as a key of value aes.bin"
    p11 "${U[@]}" --read-object --type data --label data1 -o data.got >/dev/null 2>&1 ||
        fail "$2: data1 cannot be read"
    cmp -s data.got "$FX/data.bin" || fail "$2: data1 does not read back data.bin"
    p11 "${U[@]}" --sign -m SHA256-RSA-PKCS --id 03 -i msg -o rsa.sig >/dev/null 2>&1 || fail "$2: rsa1 does not sign"
    openssl dgst -sha256 -verify rsa.pem -signature rsa.sig msg >/dev/null ||
        fail "$2: the rsa1 signature does not verify with the public key of rsa.der"
    p11 "${U[@]}" --sign -m ECDSA-SHA256 --id 04 --signature-format openssl -i msg -o ec.sig >/dev/null 2>&1 ||
        fail "$2: ec1 does not sign"
    openssl dgst -sha256 -verify ec.pem -signature ec.sig msg >/dev/null ||
        fail "$2: the ec1 signature does not verify with its public key"
    ok "$2: aes1 encrypts as aes.bin, data1 reads back data.bin, rsa1 and ec1 sign verifiably"
}

# so_resets_user_pin WHEN: the SO logs in and sets the user PIN to NEWPIN;
# the old user PIN is then wrong.
so_resets_user_pin() {
    p11 --token-label legacy --login --login-type so --so-pin "$SO" --init-pin --new-pin "$NEWPIN" >/dev/null 2>&1 ||
        fail "$1: the SO cannot log in and set the user PIN"
    local out
    out=$("$RACE" "$MOD" legacy login user "$PIN")
    [ "$out" = CKR_PIN_INCORRECT ] || fail "$1: the old user PIN gave $out after the SO set a new one"
    ok "$1: the SO logged in and set a new user PIN"
}

# The fixture as it comes.
admin_checks "the fixture"
cp "$T/out" "$T/list.txt"
binding_is "the fixture" master-key-only
if ! grep -E 'label=aes1 ' "$T/list.txt" | grep >/dev/null extractable; then
    echo "note: aes1 is not extractable (see the fixture's README): its value is checked by encryption"
fi
pubkey_der legacy 04 ec.der
openssl pkey -pubin -inform DER -in ec.der -out ec.pem || fail "no public key for ec1"

# The user logs in first, then the SO.
user_checks "$PIN" "user first"
admin_checks "user first, after the user's login"
binding_is "user first, after the user's login" escrowed-until-so-login
so_resets_user_pin "user first"
user_checks "$NEWPIN" "user first, new user PIN"
admin_checks "user first, after the SO's login"
binding_is "user first, after the SO's login" pin-bound

# A fresh copy: the SO logs in first, then the user with the PIN the SO set.
fresh_fixture
so_resets_user_pin "SO first"
user_checks "$NEWPIN" "SO first, new user PIN"
admin_checks "SO first, after both logins"
binding_is "SO first, after both logins" pin-bound
