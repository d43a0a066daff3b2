# Shared setup for the integration tests (sourced). Gives every test its own
# temporary HOME, XDG dirs and keystore, and helpers to run the real tools.
set -euo pipefail
: "${P11MK_MODULE:?P11MK_MODULE must name the built p11mk-pkcs11.so}"
: "${P11MK_ADMIN:?P11MK_ADMIN must name the built p11mk-admin}"

# Tests that need an unprivileged user (p11-kit ignores per-user config for
# root; root ignores file permissions) set P11MK_NONROOT=1 before sourcing
# this file: as root they re-run themselves as nobody.
if [ "${P11MK_NONROOT:-}" = 1 ] && [ "$(id -u)" -eq 0 ]; then
    command -v setpriv >/dev/null || { echo "SKIP: running as root and setpriv is missing"; exit 77; }
    # Copy what the test runs into a directory nobody can read (the build
    # tree may live under /root).
    src=$(cd "$(dirname "$P11MK_TESTLIB")/../.." && pwd)
    D=$(mktemp -d /tmp/p11mk-nobody-XXXXXX)
    mkdir -p "$D/tests/integration" "$D/p11-kit-module"
    cp "$P11MK_TESTLIB" "$0" "$D/tests/integration/"
    cp "$src/p11-kit-module/p11mk.module.in" "$D/p11-kit-module/"
    cp "$P11MK_MODULE" "$P11MK_ADMIN" "$D/"
    # With a PostgreSQL cluster (below): the script that makes the database,
    # and a copy of the password file that nobody may read (libpq refuses one
    # that others can read).
    pg_env=()
    if [ -n "${P11MK_TEST_PG_DIR:-}" ]; then
        cp "${P11MK_PG_CLUSTER:-$(dirname "$P11MK_TESTLIB")/pg-cluster}" "$D/tests/integration/pg-cluster"
        pg_env=(P11MK_PG_CLUSTER="$D/tests/integration/pg-cluster" PGPASSFILE="$D/pgpass")
    fi
    chmod -R a+rX "$D"
    if [ -n "${P11MK_TEST_PG_DIR:-}" ]; then
        install -m 600 -o 65534 -g 65534 "${PGPASSFILE:-$P11MK_TEST_PG_DIR/pgpass}" "$D/pgpass"
    fi
    set +e
    setpriv --reuid=65534 --regid=65534 --clear-groups env \
        P11MK_MODULE="$D/$(basename "$P11MK_MODULE")" P11MK_ADMIN="$D/$(basename "$P11MK_ADMIN")" \
        P11MK_TESTLIB="$D/tests/integration/lib.sh" "${pg_env[@]}" bash "$D/tests/integration/$(basename "$0")"
    rc=$?
    rm -rf "$D"
    exit $rc
fi

T=$(mktemp -d /tmp/p11mk-it-XXXXXX)
cleanup() {
    rc=$?
    # A test that fails while a client runs in the background must not leave it running.
    for j in $(jobs -p); do kill "$j" 2>/dev/null; done
    [ $rc -ne 0 ] && [ -f "$T/p11mk.log" ] && { echo "--- module log:"; tail -n 30 "$T/p11mk.log"; }
    if [ -n "${PG_DB:-}" ]; then   # kept when the test failed, for a look
        if [ $rc -eq 0 ]; then
            "$PGC" dropdb "$P11MK_TEST_PG_DIR" "$PG_DB" >/dev/null 2>&1 || true
        else
            echo "--- the keystore's database is kept: $PG_CONNINFO"
        fi
    fi
    chmod -R u+rwX "$T" 2>/dev/null; rm -rf "$T"; exit $rc
}
trap cleanup EXIT
export HOME=$T/home XDG_CONFIG_HOME=$T/home/.config XDG_DATA_HOME=$T/home/.local/share
mkdir -p "$HOME" "$XDG_CONFIG_HOME" "$XDG_DATA_HOME"
KS=$T/keystore
CONF=$T/p11mk.conf
cat > "$CONF" <<CONF
keystore = $KS
log = $T/p11mk.log
log_level = info
CONF
export P11MK_CONF=$CONF
# The postgresql backend, only when P11MK_TEST_PG_DIR names a cluster that
# tests/integration/pg-cluster started: the keystore goes to a new database
# of it, reached as the role p11mk with the cluster's password file.
PG_DB=
if [ -n "${P11MK_TEST_PG_DIR:-}" ]; then
    PGC=${P11MK_PG_CLUSTER:-$(dirname "$P11MK_TESTLIB")/pg-cluster}
    PG_DB=$(basename "$T" | tr 'A-Z-' 'a-z_')_$$
    PG_CONNINFO=$("$PGC" newdb "$P11MK_TEST_PG_DIR" "$PG_DB") ||
        { PG_DB=; echo "FAIL: no database in the PostgreSQL cluster $P11MK_TEST_PG_DIR" >&2; exit 1; }
    printf 'backend = postgresql\npostgresql = %s\n' "$PG_CONNINFO" >> "$CONF"
    export PGPASSFILE=${PGPASSFILE:-$P11MK_TEST_PG_DIR/pgpass}
fi
cd "$T"

MOD=$P11MK_MODULE
ADMIN=$P11MK_ADMIN
SO=so-pin-123 PIN=user-pin-1

p11() { pkcs11-tool --module "$MOD" "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
skip() { echo "SKIP: $*"; exit 77; }
ok() { echo "ok - $*"; }
need() { command -v "$1" >/dev/null 2>&1 || skip "$1 is not installed"; }

# expect_rc N cmd...: the command must exit with status N.
expect_rc() {
    local want=$1; shift
    set +e; "$@" >"$T/out" 2>&1; local got=$?; set -e
    [ "$got" -eq "$want" ] || { cat "$T/out" >&2; fail "'$*' exited $got, expected $want"; }
}
# expect_out REGEX: the last expect_rc output matches.
expect_out() { grep -Eq -- "$1" "$T/out" || { cat "$T/out" >&2; fail "output does not match '$1'"; }; }

# init_token LABEL: initialize the free slot (listed last) and set the user PIN.
init_token() {
    local idx
    idx=$(( $(p11 -L 2>/dev/null | grep -c '^Slot ') - 1 ))
    p11 --init-token --slot-index "$idx" --label "$1" --so-pin $SO >/dev/null
    p11 --token-label "$1" --login --login-type so --so-pin $SO --init-pin --new-pin $PIN >/dev/null
}

# pubkey_der TOKEN ID OUT: the public key with this CKA_ID as DER
# SubjectPublicKeyInfo. pkcs11-tool 0.23 exports RSA keys itself; for EC keys
# its export reads memory it has freed (an OpenSC bug that ASan also reports)
# and fails or not depending on the heap, so the SPKI is built here from the
# CKA_EC_POINT and CKA_EC_PARAMS that pkcs11-tool lists.
pubkey_der() {
    p11 --token-label "$1" --list-objects --type pubkey > "$T/pubkeys.txt" 2>/dev/null || true
    if python3 - "$2" "$3" "$T/pubkeys.txt" <<'PY'
import sys
want, out = sys.argv[1].lower(), sys.argv[2]
blocks, cur = [], None
for line in open(sys.argv[3]).read().splitlines():
    if line.startswith("Public Key Object"):
        cur = {"type": line}
        blocks.append(cur)
    elif cur is not None and ":" in line:
        k, v = line.split(":", 1)
        cur[k.strip()] = v.strip()
def der_len(n):
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b
def tlv(tag, body):
    return bytes([tag]) + der_len(len(body)) + body
for b in blocks:
    if b.get("ID", "").lower() != want or "EC_POINT" not in b:
        continue
    point = bytes.fromhex(b["EC_POINT"])
    if point[0] == 0x04 and len(point) > 2 and point[1] == len(point) - 2:
        point = point[2:]                      # DER OCTET STRING around the point
    elif point[0] == 0x04 and point[1] == 0x81:
        point = point[3:]
    alg = tlv(0x30, bytes.fromhex("06072a8648ce3d0201") + bytes.fromhex(b["EC_PARAMS"]))
    open(out, "wb").write(tlv(0x30, alg + tlv(0x03, b"\x00" + point)))
    sys.exit(0)
sys.exit(3)  # not an EC key listed with its point: let pkcs11-tool export it
PY
    then
        return 0
    fi
    p11 --token-label "$1" --read-object --type pubkey --id "$2" -o "$3" >/dev/null
}
