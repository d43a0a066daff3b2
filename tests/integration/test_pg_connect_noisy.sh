#!/usr/bin/env bash
# Hostile: a PostgreSQL "server" that, during the start-up of every
# connection, sends AuthenticationOk, a NoticeResponse and a FATAL error,
# then closes. The notice must reach the module's log, never the
# application's stderr (libpq's default notice processor), and the FATAL
# must be the reason C_Initialize logs (ks_pg.c connect_new: the notice
# processor is set before the start-up reads anything). Also: connections
# accepted and closed at once, without a word.
. "${P11MK_TESTLIB:?run the integration tests through meson test}"
need pkcs11-tool
need python3
mkdir -p "$T/noisy" "$T/ks"
python3 - "$T/noisy/.s.PGSQL.5998" "$T/noisy/.s.PGSQL.5997" <<'PY' &
import socket, struct, sys, threading
def msg(t, b): return t + struct.pack('!I', len(b) + 4) + b
def fields(sev, code, m): return b'S' + sev + b'\0V' + sev + b'\0C' + code + b'\0M' + m + b'\0\0'
def serve(c, noisy):
    try:
        if noisy:
            n = struct.unpack('!I', c.recv(4))[0]; c.recv(n - 4)
            c.sendall(msg(b'R', struct.pack('!I', 0)) + msg(b'N', fields(b'NOTICE', b'00000', b'hostile notice at startup'))
                      + msg(b'E', fields(b'FATAL', b'57P01', b'terminating connection hostile')))
    except Exception: pass
    c.close()
def run(path, noisy):
    s = socket.socket(socket.AF_UNIX); s.bind(path); s.listen(16)
    while True:
        c, _ = s.accept(); threading.Thread(target=serve, args=(c, noisy), daemon=True).start()
threading.Thread(target=run, args=(sys.argv[2], False), daemon=True).start()
run(sys.argv[1], True)
PY
for i in $(seq 1 50); do [ -S "$T/noisy/.s.PGSQL.5998" ] && [ -S "$T/noisy/.s.PGSQL.5997" ] && break; sleep 0.1; done
conf() { cat > "$T/n.conf" <<CONF
keystore = $T/ks
backend = postgresql
postgresql = host=$T/noisy port=$1 dbname=x user=x connect_timeout=3
log = $T/n.log
log_level = info
CONF
}
bad=0
conf 5998
t0=$SECONDS
P11MK_CONF=$T/n.conf timeout 30 pkcs11-tool --module "$MOD" -L >/dev/null 2>"$T/err" && { echo "BUG: C_Initialize succeeded"; bad=1; }
grep -q "hostile" "$T/err" && { echo "BUG: the server's messages on the application's stderr:"; grep hostile "$T/err"; bad=1; }
grep -q "NOTICE:  hostile notice at startup" "$T/n.log" && ok "the start-up notice is in the log" ||
    { echo "BUG: the start-up notice is not in the log"; bad=1; }
grep -q "cannot connect.*FATAL:  terminating connection hostile" "$T/n.log" && ok "the FATAL is the reason logged" ||
    { echo "BUG: the reason logged is not the FATAL: $(grep -m1 'cannot connect' "$T/n.log")"; bad=1; }
conf 5997
P11MK_CONF=$T/n.conf timeout 30 pkcs11-tool --module "$MOD" -L >/dev/null 2>"$T/err2" && { echo "BUG: C_Initialize succeeded"; bad=1; }
grep -q "cannot connect.*5997.*failed: ." "$T/n.log" && ok "closed at once: $(grep -m1 'cannot connect.*5997' "$T/n.log" | sed 's/.*failed: //')" ||
    { echo "BUG: no reason for a connection closed at once: $(grep -m1 'cannot connect.*5997' "$T/n.log")"; bad=1; }
[ $((SECONDS - t0)) -le 20 ] || { echo "BUG: took $((SECONDS - t0)) s"; bad=1; }
[ $bad -eq 0 ] || fail "see the BUG lines"
