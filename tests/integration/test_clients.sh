#!/usr/bin/env bash
# The tools people use, against the built module: pkcs11-tool --test, OpenSSL
# through the libp11 engine (self-signed certificate and CSR signed by token
# keys, verified by plain openssl, certificate stored on the token),
# ssh-keygen -D, GnuTLS p11tool and certtool, NSS modutil/certutil, and a
# Python (PyKCS11) client. Each part skips with a message if its tool is absent.
. "${P11MK_TESTLIB:?run the integration tests through meson test}"
need pkcs11-tool
need openssl

init_token clients
P=(--token-label clients --login --pin $PIN)
p11 "${P[@]}" --keypairgen --key-type rsa:2048 --label rsa-key --id 01 >/dev/null
p11 "${P[@]}" --keypairgen --key-type EC:prime256v1 --label ec-key --id 02 >/dev/null

# OpenSC's own test suite.
expect_rc 0 p11 "${P[@]}" --test
expect_out "No errors"
ok "pkcs11-tool --test"

# OpenSSL with the libp11 engine.
ENGINE=$(ls /usr/lib/*/engines-3/pkcs11.so 2>/dev/null | head -n 1)
if [ -n "$ENGINE" ]; then
    export PKCS11_MODULE_PATH=$MOD
    for k in rsa-key ec-key; do
        OPENSSL_CONF=/dev/null openssl req -new -x509 -days 1 -subj "/CN=p11mk $k" -engine pkcs11 -keyform engine \
            -key "pkcs11:token=clients;object=$k;type=private;pin-value=$PIN" -out "$k.crt" >/dev/null 2>"$T/out" \
            || { cat "$T/out"; fail "openssl req -x509 with the token's $k"; }
        openssl verify -CAfile "$k.crt" "$k.crt" >/dev/null || fail "self-signed certificate of $k does not verify"
        OPENSSL_CONF=/dev/null openssl req -new -subj "/CN=p11mk csr $k" -engine pkcs11 -keyform engine \
            -key "pkcs11:token=clients;object=$k;type=private;pin-value=$PIN" -out "$k.csr" >/dev/null 2>&1 \
            || fail "openssl req (CSR) with the token's $k"
        openssl req -in "$k.csr" -noout -verify 2>&1 | grep >/dev/null "verify OK" || fail "CSR of $k does not verify"
    done
    openssl x509 -in rsa-key.crt -outform DER -out rsa-key.der
    p11 "${P[@]}" --write-object rsa-key.der --type cert --id 01 --label rsa-cert >/dev/null
    p11 --token-label clients --read-object --type cert --id 01 -o back.der >/dev/null
    cmp rsa-key.der back.der || fail "certificate stored on the token differs"
    unset PKCS11_MODULE_PATH
    ok "openssl + libp11 engine: certificates and CSRs signed by RSA and EC token keys; certificate stored"
else
    echo "SKIP: libp11 engine (libengine-pkcs11-openssl) not installed"
fi

# ssh-keygen -D: the same public keys as the token lists them.
if command -v ssh-keygen >/dev/null; then
    ssh-keygen -D "$MOD" > ssh.txt 2>"$T/out" || { cat "$T/out"; fail "ssh-keygen -D"; }
    for id in 01 02; do
        pubkey_der clients $id pub$id.der
        openssl pkey -pubin -inform DER -in pub$id.der -out pub$id.pem
        want=$(ssh-keygen -i -m PKCS8 -f pub$id.pem | cut -d' ' -f2)
        grep -q "$want" ssh.txt || { cat ssh.txt; fail "ssh-keygen -D does not list key $id as exported"; }
    done
    ok "ssh-keygen -D lists the RSA and EC keys as exported another way"
else
    echo "SKIP: ssh-keygen not installed"
fi

# GnuTLS: p11tool lists with pkcs11: URIs, certtool signs with a key given by URI.
if command -v p11tool >/dev/null && command -v certtool >/dev/null; then
    p11tool --provider "$MOD" --list-tokens > tokens.txt
    grep -q "URL: pkcs11:.*token=clients" tokens.txt || { cat tokens.txt; fail "p11tool --list-tokens"; }
    GNUTLS_PIN=$PIN p11tool --provider "$MOD" --login --list-all 'pkcs11:token=clients' > objs.txt
    grep -q "object=ec-key;type=private" objs.txt || { cat objs.txt; fail "p11tool --list-all"; }
    printf 'cn = "p11mk certtool"\nserial = 9\nexpiration_days = 1\nsigning_key\n' > tmpl.cfg
    GNUTLS_PIN=$PIN certtool --provider "$MOD" --generate-self-signed --template tmpl.cfg --outfile gnutls.crt \
        --load-privkey 'pkcs11:token=clients;object=ec-key;type=private' \
        --load-pubkey 'pkcs11:token=clients;object=ec-key;type=public' >/dev/null 2>"$T/out" \
        || { cat "$T/out"; fail "certtool with a token key"; }
    openssl verify -CAfile gnutls.crt gnutls.crt >/dev/null || fail "certtool's certificate does not verify"
    ok "p11tool lists tokens and objects by URI; certtool signs with a token key"
else
    echo "SKIP: gnutls-bin not installed"
fi

# NSS: a fresh database, the module added, the token's certificate listed.
if command -v modutil >/dev/null && command -v certutil >/dev/null && [ -f rsa-key.der ]; then
    mkdir -p nss
    certutil -N -d sql:nss --empty-password
    modutil -dbdir sql:nss -add p11mk -libfile "$MOD" -force >/dev/null 2>"$T/out" || { cat "$T/out"; fail "modutil -add"; }
    modutil -dbdir sql:nss -list 2>&1 | grep >/dev/null "p11mk" || fail "modutil does not list the module"
    echo "$PIN" > pin.txt
    certutil -L -d sql:nss -h clients -f pin.txt > nsscerts.txt 2>&1 </dev/null || { cat nsscerts.txt; fail "certutil -L -h clients"; }
    grep -q "clients:rsa-cert" nsscerts.txt || { cat nsscerts.txt; fail "certutil does not list the token's certificate"; }
    ok "NSS: modutil -add, certutil -L -h lists the token's certificate"
else
    echo "SKIP: NSS tools not installed (or no certificate from the OpenSSL part)"
fi

# Python: PyKCS11 (Debian's python3-pykcs11, for the system python).
PY=/usr/bin/python3
if [ -x $PY ] && $PY -c 'import PyKCS11' 2>/dev/null; then
    $PY - "$MOD" "$PIN" <<'PY' || fail "PyKCS11 round trip"
import sys, PyKCS11
from PyKCS11.LowLevel import CKA_CLASS, CKO_PRIVATE_KEY, CKA_LABEL
lib = PyKCS11.PyKCS11Lib()
lib.load(sys.argv[1])
slot = [s for s in lib.getSlotList(tokenPresent=True) if lib.getTokenInfo(s).label.strip() == "clients"][0]
s = lib.openSession(slot, PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
s.login(sys.argv[2])
key = s.generateKey([(PyKCS11.CKA_CLASS, PyKCS11.CKO_SECRET_KEY), (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_AES),
                     (PyKCS11.CKA_VALUE_LEN, 32), (PyKCS11.CKA_ENCRYPT, True), (PyKCS11.CKA_DECRYPT, True),
                     (PyKCS11.CKA_LABEL, "py-aes")])
iv = bytes(16)
m = PyKCS11.Mechanism(PyKCS11.CKM_AES_CBC_PAD, iv)
ct = s.encrypt(key, b"from python", m)
assert bytes(s.decrypt(key, ct, m)) == b"from python"
priv = s.findObjects([(CKA_CLASS, CKO_PRIVATE_KEY), (CKA_LABEL, "ec-key")])[0]
sig = s.sign(priv, b"signed from python", PyKCS11.Mechanism(PyKCS11.CKM_ECDSA_SHA256))
assert len(sig) == 64
pub = s.findObjects([(CKA_CLASS, PyKCS11.CKO_PUBLIC_KEY), (CKA_LABEL, "ec-key")])[0]
assert s.verify(pub, b"signed from python", sig, PyKCS11.Mechanism(PyKCS11.CKM_ECDSA_SHA256))
d = s.digest(b"abc", PyKCS11.Mechanism(PyKCS11.CKM_SHA256))
assert bytes(d).hex().startswith("ba7816bf")
s.logout()
print("pykcs11 ok")
PY
    ok "Python (PyKCS11): AES round trip, ECDSA sign/verify, digest"
else
    echo "SKIP: python3-pykcs11 not installed"
fi

# p11mk-admin list: every object with a pkcs11: URI that other tools accept.
expect_rc 0 "$ADMIN" list --token clients
expect_out "private +ec +label=ec-key"
uri=$("$ADMIN" list --json | python3 -c '
import json, sys
d = json.load(sys.stdin)
objs = [o for t in d["tokens"] if t["label"] == "clients" for o in t["objects"]]
print([o["uri"] for o in objs if o["label"] == "ec-key" and o["class"] == "private"][0])')
case "$uri" in pkcs11:*token=clients*object=ec-key*type=private*) ;; *) fail "bad URI: $uri" ;; esac
if command -v p11tool >/dev/null; then
    GNUTLS_PIN=$PIN p11tool --provider "$MOD" --login --list-all "$uri" | grep >/dev/null "Label: ec-key" \
        || fail "p11tool does not accept the URI from p11mk-admin list"
fi
expect_rc 1 "$ADMIN" list --token no-such-token
expect_out "no token labeled 'no-such-token'"
ok "p11mk-admin list: objects with RFC 7512 URIs that p11tool accepts"
