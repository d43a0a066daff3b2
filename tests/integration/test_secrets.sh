#!/usr/bin/env bash
# Secrets stay secret: with log_level = debug, a token's whole life (PINs
# right and wrong, keys of known value imported and used, master-key changes
# by passphrase and by generated key, backup, verify, list, status) leaves no
# PIN, passphrase, key value or master key in the module log or in anything
# p11mk-admin printed, and no key value or PIN in the keystore files at rest.
. "${P11MK_TESTLIB:?run the integration tests through meson test}"
need pkcs11-tool
need openssl

cat > "$CONF" <<CONF
keystore = $KS
master_key = $T/master.key
log = $T/p11mk.log
log_level = debug
CONF
OUT=$T/printed
admin() { "$ADMIN" "$@" >>"$OUT" 2>&1 || { tail -n 20 "$OUT"; fail "p11mk-admin $* failed"; }; }
nkeys=0
keys() { nkeys=$((nkeys + 1)); cp "$T/master.key" "$T/registers.$nkeys"; }
tool() { p11 "$@" >>"$OUT" 2>&1 || { tail -n 20 "$OUT"; fail "pkcs11-tool $* failed"; }; }

admin init --generate-key "$T/master.key"
keys
init_token secrets
P=(--token-label secrets --login --pin $PIN)
WRONG=wrong-pin-987
p11 --token-label secrets --login --pin $WRONG -O >>"$OUT" 2>&1 && fail "a wrong PIN logged in"

# Keys whose values the test knows, imported and used.
head -c 32 /dev/urandom > aes.bin
tool "${P[@]}" --write-object aes.bin --type secrkey --key-type AES:32 --id 11 --label aes-known --usage-decrypt
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -outform DER -out ec.der 2>/dev/null
tool "${P[@]}" --write-object ec.der --type privkey --id 12 --label ec-known --usage-sign
echo "data to protect" > msg
tool "${P[@]}" --encrypt -m AES-CBC-PAD --id 11 --iv 000102030405060708090a0b0c0d0e0f -i msg -o ct
tool "${P[@]}" --sign -m ECDSA-SHA256 --id 12 -i msg -o sig

# Master-key changes while the keys exist, each register recorded.
PASS="Correct-Horse-Battery-Staple-42"
echo "$PASS" > pass.txt
admin set-master-key --passphrase-file pass.txt --yes
keys
admin rotate
keys
admin stage --generate
keys
admin rewrap --quiet
admin commit
keys
tool "${P[@]}" --sign -m ECDSA-SHA256 --id 12 -i msg -o sig2
tool "${P[@]}" --decrypt -m AES-CBC-PAD --id 11 --iv 000102030405060708090a0b0c0d0e0f -i ct -o back
cmp -s msg back || fail "decryption after the rotations"
for c in status "status --json" list "list --json" verify version; do admin $c; done
admin backup "$T/backup.mdb"

[ "$(grep -c 'debug' "$T/p11mk.log")" -ge 5 ] || fail "the module wrote no debug lines: this test would prove nothing"

python3 - "$T" "$PIN" "$SO" "$WRONG" "$PASS" <<'PY' || fail "a secret leaked (see above)"
import glob, re, subprocess, sys
T, pins = sys.argv[1], sys.argv[2:]
secrets = {}  # name -> raw bytes
for i, p in enumerate(pins):
    secrets["PIN/passphrase %d" % i] = p.encode()
secrets["AES key"] = open(T + "/aes.bin", "rb").read()
text = subprocess.run(["openssl", "pkey", "-inform", "DER", "-in", T + "/ec.der", "-text", "-noout"],
                      capture_output=True, text=True, check=True).stdout
m = re.search(r"priv:\s*((?:[0-9a-f]{2}:?\s*)+)pub:", text)
scalar = bytes.fromhex(re.sub(r"[^0-9a-f]", "", m.group(1)))
secrets["EC private key"] = scalar[-32:]
masters = set()
for snap in glob.glob(T + "/registers.*"):
    data = open(snap, "rb").read()
    if len(data) == 32:  # the first key file format: the raw key
        masters.add(data)
    else:
        masters |= {bytes.fromhex(h) for h in re.findall(r"^(?:current|new|old) ([0-9a-f]{64})(?: [^\n]*)?$", data.decode(), re.M)}
assert len(masters) >= 4, "expected the keys of 4 epochs in the key file snapshots, got %d" % len(masters)
for i, k in enumerate(sorted(masters)):
    secrets["master key %d" % i] = k

def forms(v):
    f = [v, v.hex().encode(), v.hex().upper().encode()]
    if len(v) >= 16:
        f.append(":".join("%02x" % b for b in v).encode())
    return f

bad = 0
printed = [T + "/p11mk.log", T + "/printed"]
at_rest = [T + "/keystore/data.mdb", T + "/backup.mdb"]
for path in printed + at_rest:
    data = open(path, "rb").read()
    for name, v in secrets.items():
        for form in forms(v):
            if form in data:
                print("LEAK: %s found in %s" % (name, path))
                bad += 1
                break
print("checked %d secrets in %d files" % (len(secrets), len(printed + at_rest)))
sys.exit(1 if bad else 0)
PY
ok "no PIN, passphrase, key value or master key in the debug log, the admin's output or the files at rest"

# A core dump of an application using the module (gcore of a process that
# signs without pause) holds no master key, raw or hex: the keystore keeps its
# keys in memory excluded from dumps, and nothing else keeps a copy.
if ldd "$MOD" 2>/dev/null | grep -E >/dev/null 'lib(asan|tsan)'; then
    echo "SKIP: the core dump check in a sanitizer build (its shadow memory makes a dump of many GiB)"
elif command -v gcore >/dev/null; then
    keyfile=$(sed -n 's/^master_key = //p' "$CONF")
    rm -f "$T/stop"
    "$P11MK_ROT_CLIENT" "$MOD" secrets $PIN run "$T/stop" > "$T/client.out" 2>&1 &
    cpid=$!
    sleep 1
    gcore -o "$T/core" $cpid >/dev/null 2>&1 || { touch "$T/stop"; wait $cpid; fail "gcore could not dump the client"; }
    touch "$T/stop"
    wait $cpid || { cat "$T/client.out"; fail "the client failed"; }
    python3 - "$keyfile" "$T/core.$cpid" <<'PY' || fail "a master key is in the application's core dump"
import re, sys
text = open(sys.argv[1]).read()
keys = [bytes.fromhex(h) for h in re.findall(r"^(?:current|new|old) ([0-9a-f]{64})", text, re.M)]
import mmap
with open(sys.argv[2], "rb") as f:
    core = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # searched in place, not read into memory
assert len(core) > 1 << 20, "the core dump is too small to mean anything"
bad = [k.hex()[:16] for k in keys if core.find(k) >= 0 or core.find(k.hex().encode()) >= 0]
print("core dump of %d bytes, %d master keys looked for, %d found" % (len(core), len(keys), len(bad)))
sys.exit(1 if bad else 0)
PY
    rm -f "$T/core.$cpid"
    ok "a core dump of an application using the module holds no master key"

    # Key values: an application that has used a token AES key, a token EC
    # private key, and session AES and HMAC keys of known values, and holds
    # them (cached, sessions open) when it is dumped. Kept out by the module:
    # attribute values and cached secret bytes (ks_secmem) always; EC private
    # numbers (cached EVP_PKEYs) only with secure_heap (OpenSSL's secure heap,
    # off by default: README, threat model).
    hold_dump() { # SECURE_HEAP_KIB "names that must not be in the dump"
        local hold=$T/hold$1
        mkdir -p "$hold"
        head -c 32 /dev/urandom > "$hold/sess.bin"
        head -c 32 /dev/urandom > "$hold/hmac.bin"
        sed -i '/^secure_heap/d' "$CONF"
        echo "secure_heap = $1" >> "$CONF"
        "$P11MK_ROT_CLIENT" "$MOD" secrets $PIN hold "$hold" > "$T/hold.out" 2>&1 &
        hpid=$!
        for _ in $(seq 600); do [ -e "$hold/hold.ready" ] || ! kill -0 $hpid 2>/dev/null && break; sleep 0.1; done
        [ -e "$hold/hold.ready" ] || { cat "$T/hold.out"; fail "the holding client did not get ready"; }
        gcore -o "$T/core" $hpid >/dev/null 2>&1 || { touch "$hold/hold.stop"; wait $hpid; fail "gcore could not dump the client"; }
        touch "$hold/hold.stop"
        wait $hpid || { cat "$T/hold.out"; fail "the holding client failed"; }
        sed -i '/^secure_heap/d' "$CONF"
        python3 - "$T" "$hold" "$T/core.$hpid" "$2" <<'PY' || fail "a key value is in the application's core dump (secure_heap = $1)"
import mmap, re, subprocess, sys
T, hold, core_path, required = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
keys = {"token AES key": open(T + "/aes.bin", "rb").read(),
        "session AES key": open(hold + "/sess.bin", "rb").read(),
        "session HMAC key": open(hold + "/hmac.bin", "rb").read()}
text = subprocess.run(["openssl", "pkey", "-inform", "DER", "-in", T + "/ec.der", "-text", "-noout"],
                      capture_output=True, text=True, check=True).stdout
m = re.search(r"priv:\s*((?:[0-9a-f]{2}:?\s*)+)pub:", text)
keys["token EC private key"] = bytes.fromhex(re.sub(r"[^0-9a-f]", "", m.group(1)))[-32:]
assert set(required) <= set(keys), required
with open(core_path, "rb") as f:
    core = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # searched in place
assert len(core) > 1 << 20, "the core dump is too small to mean anything"
found = []
for name, v in keys.items():
    # as stored, byte-reversed, and as OpenSSL's big numbers keep it (64-bit words, least significant first)
    words = b"".join(v[i:i + 8][::-1] for i in range(len(v) - 8, -1, -8)) if len(v) % 8 == 0 else b""
    for form in (v, v[::-1], words, v.hex().encode()):
        if form and core.find(form) >= 0:
            found.append(name)
            break
# HMAC's inner and outer states (SHA-256 after one block of the key XOR
# 0x36, and of 0x5c): each makes MACs as the key does, and OpenSSL keeps
# them in its HMAC context, which a session keeps between operations
# re-keyed under zeros (tok_op.c, scrub).
def sha256_block(block):
    K = [int(x, 16) for x in """428a2f98 71374491 b5c0fbcf e9b5dba5 3956c25b 59f111f1 923f82a4 ab1c5ed5
    d807aa98 12835b01 243185be 550c7dc3 72be5d74 80deb1fe 9bdc06a7 c19bf174 e49b69c1 efbe4786 0fc19dc6
    240ca1cc 2de92c6f 4a7484aa 5cb0a9dc 76f988da 983e5152 a831c66d b00327c8 bf597fc7 c6e00bf3 d5a79147
    06ca6351 14292967 27b70a85 2e1b2138 4d2c6dfc 53380d13 650a7354 766a0abb 81c2c92e 92722c85 a2bfe8a1
    a81a664b c24b8b70 c76c51a3 d192e819 d6990624 f40e3585 106aa070 19a4c116 1e376c08 2748774c 34b0bcb5
    391c0cb3 4ed8aa4a 5b9cca4f 682e6ff3 748f82ee 78a5636f 84c87814 8cc70208 90befffa a4506ceb bef9a3f7
    c67178f2""".split()]
    H = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]
    M = 0xffffffff
    ror = lambda x, n: ((x >> n) | (x << (32 - n))) & M
    w = [int.from_bytes(block[i:i + 4], "big") for i in range(0, 64, 4)]
    for i in range(16, 64):
        s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3)
        s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10)
        w.append((w[i - 16] + s0 + w[i - 7] + s1) & M)
    a, b, c, d, e, f, g, h = H
    for i in range(64):
        t1 = (h + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i]) & M
        t2 = ((ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) & M
        a, b, c, d, e, f, g, h = (t1 + t2) & M, a, b, c, (d + t1) & M, e, f, g
    return [(x + y) & M for x, y in zip(H, [a, b, c, d, e, f, g, h])]
import hashlib
assert sha256_block(b"abc" + b"\x80" + bytes(52) + (24).to_bytes(8, "big")) == [
    int.from_bytes(hashlib.sha256(b"abc").digest()[i:i + 4], "big") for i in range(0, 32, 4)]
hk = keys["session HMAC key"].ljust(64, b"\0")
for pad, name in ((0x36, "inner"), (0x5c, "outer")):
    st = sha256_block(bytes(b ^ pad for b in hk))
    for form in (b"".join(x.to_bytes(4, "little") for x in st), b"".join(x.to_bytes(4, "big") for x in st)):
        if core.find(form) >= 0:
            found.append("session HMAC key's %s state" % name)
            break
    keys["session HMAC key's %s state" % name] = None
required += ["session HMAC key's inner state", "session HMAC key's outer state"]
bad = [n for n in found if n in required]
print("core dump of %d bytes: looked for %s; found: %s" % (len(core), ", ".join(keys), ", ".join(found) or "none"))
sys.exit(1 if bad else 0)
PY
        rm -f "$T/core.$hpid"
    }
    hold_dump 0 "token AES key,session AES key,session HMAC key"
    ok "a core dump of an application holding token and session AES and HMAC keys holds none of their values"
    hold_dump 2048 "token AES key,session AES key,session HMAC key,token EC private key"
    ok "with secure_heap = 2048, the cached EC private key is not in the dump either"
else
    echo "SKIP: gcore (gdb) is not installed: the core dump check did not run"
fi
