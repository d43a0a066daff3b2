#!/usr/bin/env bash
# The served token (p11mk-server.service, p11mk-server(8)): the unit's own
# ExecStartPre, ExecStart and ExecStartPost lines run as a server user with the
# socket's group, as systemd would; clients in that group sign through
# p11-kit-client.so (ECDSA and RSA, checked by OpenSSL); a user outside the
# group is refused; the mechanisms and functions that pass p11-kit's RPC are
# probed; the master key is rotated under signers on the socket and over ssh
# with no failure; a restart of the server ends connections with an error and
# clients work again after re-initializing; the user unit; the ssh "remote:"
# path through a private sshd on localhost, as a second user; and the sign
# rate and latency in-process, over the socket and over ssh (printed).
. "${P11MK_TESTLIB:?run the integration tests through meson test}"
need p11-kit
need pkcs11-tool
need openssl
need setpriv
[ "$(id -u)" -eq 0 ] || skip "needs root: the server, its clients, a user outside the group and the ssh user are different users"
RC=${P11MK_REMOTE_CLIENT:?}
UNIT=${P11MK_SERVER_UNIT:?}
USER_UNIT=${P11MK_SERVER_USER_UNIT:?}
READY=${P11MK_SERVER_READY:?}
CLIENT_SO=$(pkg-config --variable=p11_module_path p11-kit-1)/p11-kit-client.so
PROXY=$(pkg-config --variable=proxy_module p11-kit-1)
[ -f "$CLIENT_SO" ] || skip "p11-kit-client.so not found (Debian package p11-kit-modules)"
[ -f "$PROXY" ] || skip "p11-kit-proxy.so not found"

# Who is who. The server runs as a uid with no account (as _p11mk would; a
# free uid is picked), the socket's group is a real group made for the test
# (the ssh user must be in it through /etc/group), clients are nobody with
# and without that group, and the ssh login user is an account made for the
# test. The names carry this test's pid, so that two runs do not meet; all
# are removed at the end, and those of a run that was killed at the start of
# the next.
TGROUP=p11mkt$$g TSSH=p11mkt$$s
for name in $(getent passwd | cut -d: -f1 | grep -E '^p11mkt[0-9]+s$' || true); do
    pid=${name#p11mkt}; kill -0 "${pid%s}" 2>/dev/null || userdel "$name" 2>/dev/null || true
done
for name in $(getent group | cut -d: -f1 | grep -E '^p11mkt[0-9]+g$' || true); do
    pid=${name#p11mkt}; kill -0 "${pid%g}" 2>/dev/null || groupdel "$name" 2>/dev/null || true
done
SUID=$((61000 + $$ % 3000))
while getent passwd $SUID >/dev/null || getent group $SUID >/dev/null; do SUID=$((SUID + 1)); done
groupadd "$TGROUP" || fail "cannot create the group $TGROUP"
GID=$(getent group "$TGROUP" | cut -d: -f3)

# Everything the other users need lives in a directory they can enter: the
# checkout (and $T) may be one they cannot.
S=$(mktemp -d /tmp/p11mk-remote-XXXXXX)
chmod 755 "$S"
SRV_PG= UPG= SSHD_PID=
remote_cleanup() {
    local rc=$?
    [ -n "$SRV_PG" ] && kill -TERM -- "-$SRV_PG" 2>/dev/null
    [ -n "$UPG" ] && kill -TERM -- "-$UPG" 2>/dev/null
    [ -n "$SSHD_PID" ] && kill "$SSHD_PID" 2>/dev/null
    sleep 0.2
    if [ $rc -ne 0 ]; then
        for f in "$S"/server.out "$S"/server/p11mk.log "$S"/sshd/log; do
            [ -s "$f" ] && { echo "--- $f:"; tail -n 25 "$f"; }
        done
    fi
    userdel "$TSSH" 2>/dev/null
    groupdel "$TGROUP" 2>/dev/null
    rm -rf "$S"
    (exit $rc)
    cleanup
}
trap remote_cleanup EXIT

mkdir -p "$S/bin" "$S/etc" "$S/server" "$S/client" "$S/run" "$S/out"
cp "$MOD" "$ADMIN" "$RC" "$READY" "$S/bin/"
chmod -R a+rX "$S/bin"
chmod 1777 "$S/out"   # outputs of every user
chown "$SUID:$SUID" "$S/server" && chmod 700 "$S/server"
chown 65534:65534 "$S/client" && chmod 700 "$S/client"
SMOD=$S/bin/$(basename "$MOD")
SADMIN=$S/bin/$(basename "$ADMIN")
SRC=$S/bin/$(basename "$RC")
SCONF=$S/etc/server.conf
cat > "$SCONF" <<EOF
keystore = $S/server/keystore
master_key = $S/server/master.key
log = $S/server/p11mk.log
log_level = info
EOF
chmod 644 "$SCONF"
SOCK=$S/run/p11mk/pkcs11
ADDR=unix:path=$SOCK
BASEPATH=/usr/sbin:/usr/bin:/sbin:/bin

# as_server / as_client / as_outsider CMD...: run CMD as that user, with a
# clean environment (stdin stays closed or whatever the caller gives).
as_server() {
    setpriv --reuid=$SUID --regid=$GID --clear-groups \
        env -i HOME="$S/server" PATH=$BASEPATH P11MK_CONF="$SCONF" "$@"
}
as_client() {
    setpriv --reuid=65534 --regid=65534 --groups=$GID \
        env -i HOME="$S/client" PATH=$BASEPATH P11_KIT_SERVER_ADDRESS=$ADDR "$@"
}
as_outsider() {
    setpriv --reuid=65534 --regid=65534 --clear-groups \
        env -i HOME="$S/client" PATH=$BASEPATH P11_KIT_SERVER_ADDRESS=$ADDR "$@"
}

# ---- the unit's lines -------------------------------------------------------
# unit_value FILE KEY: the value of the unit's first KEY= line.
unit_value() { sed -n "s/^$2=//p" "$1" | head -n 1; }
# unit_argv FILE KEY RUNTIME: the command of an Exec line as an array in ARGV,
# with %t made RUNTIME and the programs of this project taken from $S/bin.
unit_argv() {
    local line
    line=$(unit_value "$1" "$2")
    [ -n "$line" ] || fail "$1 has no $2= line"
    read -r -a ARGV <<< "${line//%t/$3}"
    local base
    base=$(basename "${ARGV[0]}")
    [ -x "$S/bin/$base" ] && ARGV[0]=$S/bin/$base
    for i in "${!ARGV[@]}"; do
        [ "${ARGV[$i]}" = --provider ] && ARGV[$((i + 1))]=$SMOD
    done
    return 0
}
[ "$(unit_value "$UNIT" User)" = _p11mk ] || fail "the system unit does not run as _p11mk"
[ "$(unit_value "$UNIT" Group)" = p11mk ] || fail "the system unit's group is not p11mk"
grep -q '^Environment=P11MK_CONF=/.*/p11mk/server.conf$' "$UNIT" || fail "the system unit does not name server.conf in P11MK_CONF"
[ "$(unit_value "$UNIT" RuntimeDirectory)" = p11mk ] || fail "the system unit has no RuntimeDirectory=p11mk"
RUNMODE=$(unit_value "$UNIT" RuntimeDirectoryMode)
unit_argv "$UNIT" ExecStart "$S/run"
[ "${ARGV[1]}" = server ] && [ "$(basename "${ARGV[0]}")" = p11-kit ] || fail "ExecStart is not p11-kit server: ${ARGV[*]}"
[ -x "${ARGV[0]}" ] || fail "the unit's p11-kit (${ARGV[0]}) is not installed"
START=("${ARGV[@]}")
unit_argv "$UNIT" ExecStartPre "$S/run"; PRE=("${ARGV[@]}")
unit_argv "$UNIT" ExecStartPost "$S/run"; POST=("${ARGV[@]}")

# start_server: what systemd does for the unit: the runtime directory, the
# lines in order, the service in a process group of its own.
start_server() {
    rm -rf "$S/run/p11mk"
    install -d -o $SUID -g $GID -m "$RUNMODE" "$S/run/p11mk"
    as_server "${PRE[@]}" > "$S/out/pre" 2>&1 </dev/null || { cat "$S/out/pre"; fail "ExecStartPre failed"; }
    setsid setpriv --reuid=$SUID --regid=$GID --clear-groups \
        env -i HOME="$S/server" PATH=$BASEPATH P11MK_CONF="$SCONF" "${START[@]}" > "$S/server.out" 2>&1 </dev/null &
    SRV_PG=$!
    as_server "${POST[@]}" </dev/null || fail "ExecStartPost failed"
}
stop_server() { # as systemd stops the unit: every process of it
    kill -TERM -- "-$SRV_PG"
    for _ in $(seq 50); do kill -0 -- "-$SRV_PG" 2>/dev/null || break; sleep 0.1; done
    kill -0 -- "-$SRV_PG" 2>/dev/null && fail "the server did not stop on SIGTERM"
    SRV_PG=
}

# ---- the keystore, the server, the access --------------------------------------
expect_rc 4 as_server "${PRE[@]}"
expect_out "master key"
ok "ExecStartPre refuses to start the service before the keystore exists: $(head -c 120 "$T/out")"
as_server "$SADMIN" init --generate-key "$S/server/master.key" > "$T/init.out"
grep -q "names this key file already" "$T/init.out" || { cat "$T/init.out"; fail "init does not say that server.conf names the new key file"; }
# Root may read the served keystore, never write into it: files it left there
# would be root's, and the server's user could not open them.
P11MK_CONF=$SCONF "$SADMIN" status >/dev/null || fail "root cannot read the server's keystore's status"
expect_rc 1 env P11MK_CONF="$SCONF" "$SADMIN" rotate
expect_out "belongs to uid $SUID: as root, 'rotate' would leave files there .* with P11MK_CONF=$SCONF"
[ -z "$(find "$S/server" -uid 0)" ] || fail "root's refused rotate left files: $(find "$S/server" -uid 0)"
# The lock files a read as root makes, where there were none (the owner's
# restore removes lock.mdb), are the owner's: made root's and 0600 they
# locked the server's user out of its keystore (a hostile tester).
rm -f "$S/server/keystore/lock.mdb" "$S/server/keystore/users.lock"
P11MK_CONF=$SCONF "$SADMIN" status >/dev/null || fail "root cannot read the server's keystore's status"
P11MK_CONF=$SCONF "$SADMIN" list >/dev/null || fail "root cannot list the server's keystore"
[ -z "$(find "$S/server" -uid 0)" ] || fail "root's status and list left root's files: $(find "$S/server" -uid 0)"
as_server "$SADMIN" status >/dev/null || fail "the server's user cannot read its keystore after root's status"
ok "as root, p11mk-admin reads the server's keystore but refuses to write into it, naming the user to run as"
start_server
[ "$(stat -c %a "$SOCK")" = 660 ] || fail "the socket is $(stat -c %a "$SOCK"), not 0660"
[ "$(stat -c %a:%g "$S/run/p11mk")" = "${RUNMODE#0}:$GID" ] || fail "the runtime directory is $(stat -c %a:%g "$S/run/p11mk")"
ok "the unit's lines start p11-kit server as the keystore's user; socket 0660 in a 0750 directory of the group"

# A client in the group makes the token through the socket, as the man page says.
as_client pkcs11-tool --module "$CLIENT_SO" -L > "$T/slots" 2>&1 || { cat "$T/slots"; fail "the client cannot list slots"; }
grep -q uninitialized "$T/slots" || { cat "$T/slots"; fail "no free slot through the socket"; }
as_client pkcs11-tool --module "$CLIENT_SO" --init-token --slot-index 0 --label srv --so-pin $SO >/dev/null
as_client pkcs11-tool --module "$CLIENT_SO" --token-label srv --login --login-type so --so-pin $SO --init-pin --new-pin $PIN >/dev/null
as_client "$SRC" "$CLIENT_SO" srv $PIN keys >/dev/null
ok "a member of the group initializes a token and makes keys through p11-kit-client.so"

# ECDSA over a hash made here (CKM_ECDSA) and RSA, with pkcs11-tool; OpenSSL verifies.
cd "$S/out"
echo "signed through the socket $RANDOM" > msg
openssl dgst -sha256 -binary msg > msg.sha256
CP=(--module "$CLIENT_SO" --token-label srv --login --pin $PIN)
as_client pkcs11-tool "${CP[@]}" --sign -m ECDSA --id ec -i msg.sha256 -o ec.sig --signature-format openssl >/dev/null 2>&1 \
    || fail "ECDSA signature through the socket"
as_client pkcs11-tool "${CP[@]}" --sign -m SHA256-RSA-PKCS --id 5a -i msg -o rsa.sig >/dev/null 2>&1 \
    || fail "RSA signature through the socket"
p11() { as_client pkcs11-tool --module "$CLIENT_SO" "$@"; }
pubkey_der srv ec ec.der
pubkey_der srv 5a rsa.der
openssl pkeyutl -verify -pubin -keyform DER -inkey ec.der -in msg.sha256 -sigfile ec.sig >/dev/null \
    || fail "OpenSSL refuses the ECDSA signature made through the socket"
openssl dgst -sha256 -keyform DER -verify rsa.der -signature rsa.sig msg >/dev/null \
    || fail "OpenSSL refuses the RSA signature made through the socket"
echo tampered >> msg; openssl dgst -sha256 -binary msg > msg.sha256
openssl pkeyutl -verify -pubin -keyform DER -inkey ec.der -in msg.sha256 -sigfile ec.sig >/dev/null 2>&1 \
    && fail "OpenSSL accepts the ECDSA signature for another message"
openssl dgst -sha256 -keyform DER -verify rsa.der -signature rsa.sig msg >/dev/null 2>&1 \
    && fail "OpenSSL accepts the RSA signature for another message"
# The mechanism a client may try first does not pass p11-kit 0.24's RPC: refused, not wrong.
if as_client pkcs11-tool "${CP[@]}" --sign -m ECDSA-SHA256 --id ec -i msg -o ec2.sig >/dev/null 2>&1; then
    echo "note: CKM_ECDSA_SHA256 passed p11-kit's RPC here (the README's table says it does not)"
else
    echo "note: CKM_ECDSA_SHA256 is refused through p11-kit's RPC, as the README's table says"
fi
cd "$T"
ok "ECDSA (CKM_ECDSA over a SHA-256 made by the client) and SHA256-RSA-PKCS through the socket, verified by OpenSSL"

# Outside the group: no connection, no token; in or out of it: no keystore, no key file.
as_outsider python3 -c "
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except PermissionError:
    sys.exit(0)
sys.exit('connected')" "$SOCK" || fail "a user outside the group connects to the socket"
expect_rc 2 as_outsider "$SRC" "$CLIENT_SO" srv $PIN bench 1
expect_out "no token labeled srv"
for who in as_client as_outsider; do
    $who cat "$S/server/master.key" >/dev/null 2>&1 && fail "$who reads the master key"
    $who ls "$S/server/keystore" >/dev/null 2>&1 && fail "$who lists the keystore"
done
ok "a user outside the group cannot connect (EACCES) nor see the token; no client reads the keystore or the key file"

# The client's module file, as shipped (server/p11mk-remote.module): p11-kit
# aware programs and p11-kit-proxy.so reach the socket with no environment.
EXAMPLE=${P11MK_REMOTE_MODULE:?}
grep -qx 'remote: unix:path=/run/p11mk/pkcs11' "$EXAMPLE" || fail "the example module file does not name /run/p11mk/pkcs11"
mkdir -p "$S/client/.config/pkcs11/modules"
sed "s|^remote: unix:path=/run/p11mk/pkcs11$|remote: unix:path=$SOCK|" "$EXAMPLE" > "$S/client/.config/pkcs11/modules/p11mk-remote.module"
chown -R 65534:65534 "$S/client/.config"
as_client env -u P11_KIT_SERVER_ADDRESS "$SRC" "$PROXY" srv $PIN bench 10 > "$T/viaproxy" 2>&1 </dev/null \
    || { cat "$T/viaproxy"; fail "signing through p11-kit-proxy.so and the example module file"; }
rm "$S/client/.config/pkcs11/modules/p11mk-remote.module"
ok "the shipped client module file (remote: unix:path=...) takes p11-kit-proxy.so to the socket: ECDSA signatures verified by OpenSSL"

# ---- what passes p11-kit's RPC -------------------------------------------------
as_server "$SRC" "$SMOD" srv $PIN probe > "$T/probe.direct" 2>&1 || { cat "$T/probe.direct"; fail "the probe in-process"; }
as_client "$SRC" "$CLIENT_SO" srv $PIN probe > "$T/probe.remote" 2>&1 || { cat "$T/probe.remote"; fail "the probe through the socket"; }
echo "mechanisms and functions, in-process | through p11-kit $(dpkg-query -W -f='${Version}' p11-kit 2>/dev/null) RPC:"
python3 - "$T/probe.direct" "$T/probe.remote" <<'PY'
import sys
def rows(path):
    out = {}
    for line in open(path):
        w = line.split()
        if w and w[0] == "mech":
            name = line[5:line.index(" listed=")]
            listed, rv = line[line.index(" listed=") + 8:].split()
            out[name] = (listed, rv)
        elif w and w[0] in ("func", "listed"):
            out[" ".join(w[:-1])] = ("", w[-1])
    return out
d, r = rows(sys.argv[1]), rows(sys.argv[2])
for k in d:
    print("  %-40s %-4s %-28s %-4s %s" % (k, d[k][0], d[k][1], r.get(k, ("", "-"))[0], r.get(k, ("", "-"))[1]))
PY
bad=$(grep '^mech' "$T/probe.direct" | grep -v ' CKR_OK$' || true)
[ -z "$bad" ] || fail "the probe fails in-process: $bad"
for m in SHA256 SHA384 SHA512 EC-KEY-PAIR-GEN ECDSA RSA-PKCS-KEY-PAIR-GEN "RSA-PKCS (sign)" "RSA-PKCS (encrypt)" \
         SHA256-RSA-PKCS RSA-PKCS-PSS RSA-PKCS-OAEP SHA256-HMAC AES-KEY-GEN AES-ECB GENERIC-SECRET-KEY-GEN; do
    grep -qx "mech $m listed=yes CKR_OK" "$T/probe.remote" || fail "$m does not work through the socket: $(grep "^mech $m " "$T/probe.remote")"
done
for fn in C_GenerateRandom C_CreateObject C_CopyObject C_SetAttributeValue C_DestroyObject C_SetPIN; do
    grep -qx "func $fn CKR_OK" "$T/probe.remote" || fail "$fn does not work through the socket"
done
ok "the common client paths work through the socket (digests, EC/RSA keys, ECDSA, RSA PKCS#1/PSS/OAEP, HMAC, AES-ECB, objects, PINs)"

# ---- ssh: a private sshd on localhost, a second user --------------------------------
SSHD=/usr/sbin/sshd
have_ssh=1
if [ ! -x $SSHD ] || ! command -v ssh >/dev/null || ! command -v ssh-keygen >/dev/null; then
    have_ssh=
    echo "SKIP: the ssh remote: path: openssh-server or openssh-client is not installed"
fi
if [ -n "$have_ssh" ]; then
    mkdir -p "$S/sshd" "$S/sshuser"
    useradd --no-create-home --home-dir "$S/sshuser" --shell /bin/sh -G "$TGROUP" "$TSSH" \
        || fail "cannot create the ssh test user"
    usermod -p '*' "$TSSH"   # no password, but not locked: sshd admits keys
    chown "$TSSH:" "$S/sshuser" && chmod 700 "$S/sshuser"
    ssh-keygen -q -t ed25519 -N '' -C p11mk-test-host -f "$S/sshd/host_key"
    ssh-keygen -q -t ed25519 -N '' -C p11mk-test-client -f "$S/client/id"
    chown 65534:65534 "$S/client/id" "$S/client/id.pub"
    cp "$S/client/id.pub" "$S/sshd/authorized_keys" && chmod 644 "$S/sshd/authorized_keys"
    PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    echo "[127.0.0.1]:$PORT $(cut -d' ' -f1,2 "$S/sshd/host_key.pub")" > "$S/client/known_hosts"
    cat > "$S/sshd/config" <<EOF
Port $PORT
ListenAddress 127.0.0.1
HostKey $S/sshd/host_key
PidFile $S/sshd/pid
AuthorizedKeysFile $S/sshd/authorized_keys
AllowUsers $TSSH
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin no
StrictModes no
X11Forwarding no
AllowTcpForwarding no
AllowAgentForwarding no
PermitTTY no
PrintMotd no
PrintLastLog no
LogLevel VERBOSE
EOF
    mkdir -p /run/sshd   # sshd's privilege separation directory
    $SSHD -t -f "$S/sshd/config" || fail "sshd refuses the test's configuration"
    $SSHD -D -f "$S/sshd/config" -E "$S/sshd/log" </dev/null &
    SSHD_PID=$!
    for _ in $(seq 50); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)" 2>/dev/null && break
        sleep 0.1
    done
    SSH="ssh -F none -T -p $PORT -i $S/client/id -o IdentitiesOnly=yes -o BatchMode=yes -o UserKnownHostsFile=$S/client/known_hosts -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o LogLevel=ERROR $TSSH@127.0.0.1"
    as_client $SSH id -un > "$T/sshid" 2>&1 </dev/null || { cat "$T/sshid"; fail "ssh to the test sshd"; }
    [ "$(cat "$T/sshid")" = "$TSSH" ] || fail "ssh logged in as $(cat "$T/sshid")"

    # (a) The deployment: over ssh to the server host, then through its socket
    # (the ssh user is in the group; the keystore stays the server's).
    # (b) The module itself on the other host, run by the ssh user on a
    # keystore of that user's own.
    SSHCONF=$S/sshuser/p11mk.conf
    printf 'keystore = %s\nlog = %s\n' "$S/sshuser/keystore" "$S/sshuser/p11mk.log" > "$SSHCONF"
    chown "$TSSH:" "$SSHCONF"
    as_ssh() { runuser -u "$TSSH" -- env -i HOME="$S/sshuser" PATH=$BASEPATH P11MK_CONF="$SSHCONF" "$@"; }
    as_ssh pkcs11-tool --module "$SMOD" --init-token --slot-index 0 --label sshown --so-pin $SO >/dev/null </dev/null
    as_ssh pkcs11-tool --module "$SMOD" --token-label sshown --login --login-type so --so-pin $SO --init-pin --new-pin $PIN >/dev/null </dev/null
    as_ssh "$SRC" "$SMOD" sshown $PIN keys >/dev/null </dev/null
    mkdir -p "$S/client/.config/pkcs11/modules"
    echo "remote: |$SSH env P11_KIT_SERVER_ADDRESS=$ADDR p11-kit remote $CLIENT_SO" > "$S/client/.config/pkcs11/modules/p11mk-ssh.module"
    echo "remote: |$SSH env P11MK_CONF=$SSHCONF p11-kit remote $SMOD" > "$S/client/.config/pkcs11/modules/p11mk-ssh-own.module"
    chown -R 65534:65534 "$S/client/.config"
    as_client pkcs11-tool --module "$PROXY" -L > "$T/sshslots" 2>&1 </dev/null || { cat "$T/sshslots"; fail "pkcs11-tool through p11-kit-proxy and ssh"; }
    grep -q "token label *: srv" "$T/sshslots" || { cat "$T/sshslots"; fail "the served token is not listed over ssh"; }
    grep -q "token label *: sshown" "$T/sshslots" || { cat "$T/sshslots"; fail "the ssh user's token is not listed over ssh"; }
    cd "$S/out"
    echo "signed over ssh $RANDOM" > smsg
    openssl dgst -sha256 -binary smsg > smsg.sha256
    as_client pkcs11-tool --module "$PROXY" --token-label srv --login --pin $PIN --sign -m ECDSA --id ec \
        -i smsg.sha256 -o ssh-ec.sig --signature-format openssl >/dev/null 2>&1 </dev/null || fail "ECDSA over ssh to the socket"
    openssl pkeyutl -verify -pubin -keyform DER -inkey ec.der -in smsg.sha256 -sigfile ssh-ec.sig >/dev/null \
        || fail "OpenSSL refuses the ECDSA signature made over ssh"
    as_client pkcs11-tool --module "$PROXY" --token-label sshown --login --pin $PIN --sign -m SHA256-RSA-PKCS --id 5a \
        -i smsg -o ssh-rsa.sig >/dev/null 2>&1 </dev/null || fail "RSA over ssh with the module on the ssh user's keystore"
    as_client pkcs11-tool --module "$PROXY" --token-label sshown --read-object --type pubkey --id 5a -o ssh-rsa.der >/dev/null 2>&1 </dev/null
    openssl dgst -sha256 -keyform DER -verify ssh-rsa.der -signature ssh-rsa.sig smsg >/dev/null \
        || fail "OpenSSL refuses the RSA signature made over ssh"
    cd "$T"
    grep -q "Accepted publickey for $TSSH" "$S/sshd/log" || fail "sshd did not log the test user's logins"
    ok "remote: |ssh ... p11-kit remote MODULE, as a second user of a private sshd: the served token (through its socket) and a keystore of the ssh user's own, signatures verified by OpenSSL"
fi

# ---- rotation under remote signers ------------------------------------------------
epoch() { as_server "$SADMIN" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["epoch"])'; }
e0=$(epoch)
rm -f "$S/out/stop" "$S/out/stop.started" "$S/out/sstop" "$S/out/sstop.started"
as_client "$SRC" "$CLIENT_SO" srv $PIN sign "$S/out/stop" > "$T/signer.out" 2>&1 </dev/null & sp=$!
if [ -n "$have_ssh" ]; then
    as_client "$SRC" "$PROXY" srv $PIN sign "$S/out/sstop" > "$T/ssigner.out" 2>&1 </dev/null & ssp=$!
fi
for _ in $(seq 300); do
    [ -e "$S/out/stop.started" ] && { [ -z "$have_ssh" ] || [ -e "$S/out/sstop.started" ]; } && break
    sleep 0.1
done
[ -e "$S/out/stop.started" ] || { cat "$T/signer.out"; fail "the signer on the socket did not start"; }
as_server "$SADMIN" rotate >/dev/null
as_server "$SADMIN" rotate >/dev/null
as_server "$SADMIN" stage >/dev/null
as_server "$SADMIN" rewrap >/dev/null
as_server "$SADMIN" commit >/dev/null
sleep 0.5
touch "$S/out/stop" "$S/out/sstop"
wait $sp || { cat "$T/signer.out"; fail "the signer on the socket saw failures during the rotations"; }
echo "socket: $(cat "$T/signer.out")"
grep -q "failures 0 " "$T/signer.out" || fail "signer: $(cat "$T/signer.out")"
if [ -n "$have_ssh" ]; then
    wait $ssp || { cat "$T/ssigner.out"; fail "the signer over ssh saw failures during the rotations"; }
    echo "ssh: $(cat "$T/ssigner.out")"
fi
[ "$(epoch)" -eq $((e0 + 3)) ] || fail "epoch $(epoch), expected $((e0 + 3))"
for e in $((e0 + 1)) $((e0 + 2)) $((e0 + 3)); do
    grep -q "master key epoch $e is now current" "$S/server/p11mk.log" \
        || fail "no serving process noticed epoch $e"
done
ok "two rotations and a stage/rewrap/commit under signers on the socket${have_ssh:+ and over ssh}: no failure, every signature verified by OpenSSL"

# ---- a restart ------------------------------------------------------------------
mkdir -m 1777 "$S/out/r1" "$S/out/r2"
as_client "$SRC" "$CLIENT_SO" srv $PIN restart "$S/out/r1" > "$T/restart.out" 2>&1 </dev/null & r1=$!
as_client env REMOTE_CLIENT_SIGPIPE=default "$SRC" "$CLIENT_SO" srv $PIN restart "$S/out/r2" > "$T/restart2.out" 2>&1 </dev/null & r2=$!
for _ in $(seq 300); do [ -e "$S/out/r1/ready" ] && [ -e "$S/out/r2/ready" ] && break; sleep 0.1; done
[ -e "$S/out/r1/ready" ] && [ -e "$S/out/r2/ready" ] || fail "the restart clients did not start"
stop_server
start_server
touch "$S/out/r1/go" "$S/out/r2/go"
wait $r1 || { cat "$T/restart.out"; fail "a client ignoring SIGPIPE did not recover after the restart"; }
grep -q "after=CKR_DEVICE_ERROR .*reinit=CKR_OK signed_after_reinit=CKR_OK" "$T/restart.out" \
    || fail "restart: $(cat "$T/restart.out")"
echo "$(cat "$T/restart.out")"
set +e; wait $r2; r2rc=$?; set -e
if [ $r2rc -eq 141 ]; then
    echo "note: a client that does not ignore SIGPIPE is killed by it at its first call after the restart (exit 141)"
else
    echo "note: a client that does not ignore SIGPIPE: exit $r2rc: $(cat "$T/restart2.out")"
fi
ok "a server restart: the next call answers CKR_DEVICE_ERROR; C_Finalize + C_Initialize + C_Login and the client signs again"

# ---- the user unit ------------------------------------------------------------------
# nobody's own keystore served to nobody: the socket admits its owner only.
grep -q '^User=' "$USER_UNIT" && fail "the user unit names a user"
UR=$S/urun
mkdir -p "$UR" && chown 65534:65534 "$UR" && chmod 700 "$UR"
install -d -o 65534 -g 65534 -m "$(unit_value "$USER_UNIT" RuntimeDirectoryMode)" "$UR/p11mk"
unit_argv "$USER_UNIT" ExecStart "$UR"
setsid setpriv --reuid=65534 --regid=65534 --clear-groups env -i HOME="$S/client" PATH=$BASEPATH \
    "${ARGV[@]}" > "$S/out/user-server.out" 2>&1 </dev/null &
UPG=$!
for _ in $(seq 50); do [ -S "$UR/p11mk/pkcs11" ] && break; sleep 0.1; done
[ -S "$UR/p11mk/pkcs11" ] || fail "the user unit's server made no socket"
as_user() { setpriv --reuid=65534 --regid=65534 --clear-groups env -i HOME="$S/client" PATH=$BASEPATH P11_KIT_SERVER_ADDRESS=unix:path=$UR/p11mk/pkcs11 "$@"; }
as_user pkcs11-tool --module "$CLIENT_SO" --init-token --slot-index 0 --label mine --so-pin $SO >/dev/null </dev/null
as_user pkcs11-tool --module "$CLIENT_SO" --token-label mine --login --login-type so --so-pin $SO --init-pin --new-pin $PIN >/dev/null </dev/null
as_user "$SRC" "$CLIENT_SO" mine $PIN keys >/dev/null </dev/null
as_user "$SRC" "$CLIENT_SO" mine $PIN bench 20 > "$T/user.out" || { cat "$T/user.out"; fail "signing through the user unit's socket"; }
[ -d "$S/client/.local/share/p11mk" ] || fail "the user unit did not serve the user's own keystore"
setpriv --reuid=$SUID --regid=$SUID --clear-groups env -i PATH=$BASEPATH python3 -c "
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except PermissionError:
    sys.exit(0)
sys.exit('connected')" "$UR/p11mk/pkcs11" || fail "another user connects to the user unit's socket"
kill -TERM -- "-$UPG"; wait "$UPG" 2>/dev/null || true; UPG=
ok "the user unit serves the user's own keystore on \$XDG_RUNTIME_DIR/p11mk/pkcs11; another user cannot connect"

# ---- figures (printed, never asserted) -----------------------------------------
N=${P11MK_REMOTE_BENCH:-2000}
echo "ECDSA P-256 sign (C_SignInit + C_Sign, hash made by the client), $N signatures each:"
bench() { # what, run-as, module
    local what=$1; shift
    "$@" bench "$N" > "$T/bench.out" 2>&1 </dev/null || { cat "$T/bench.out"; fail "bench $what"; }
    printf '  %-34s %s\n' "$what" "$(sed 's/^bench: //' "$T/bench.out")"
}
bench "in-process (the module)" as_server "$SRC" "$SMOD" srv $PIN
bench "Unix socket (p11-kit-client.so)" as_client "$SRC" "$CLIENT_SO" srv $PIN
if [ -n "$have_ssh" ]; then
    bench "ssh to the socket (proxy, remote:)" as_client "$SRC" "$PROXY" srv $PIN
    bench "ssh, module on the far side" as_client "$SRC" "$PROXY" sshown $PIN
fi
ok "figures printed"
