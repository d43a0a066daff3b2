#!/usr/bin/env bash
# The listener holds its `work` lock through libpq's PQconnectStartParams/
# PQconnectPoll, which resolve the host name with a blocking getaddrinfo().
# With a name server that is slow to answer (here a getaddrinfo shim,
# slow_dns.c: "slowhost" answers after SLOW_DNS_MS), a fork() made while
# the listener reconnected waited for the whole look-up (4 s here), with the
# fork gate shut for every other thread of the application; a fork now
# waits for a listener FORK_WAIT_MS (1 s) at most (ks_pg.c). pg_forkstorm
# idle: initialized, no call in flight, the main thread forks every 20 ms
# while the server terminates the keystore's backends every 2 s (the
# listener reconnects). BUG when a fork took over FORK_MAX_MS (3 s).
. "${P11MK_TESTLIB:?run the integration tests through meson test}"
need pkcs11-tool
need python3
FS=${P11MK_PG_FORKSTORM:?}
. "$(dirname "$P11MK_TESTLIB")/pg_lib.sh"
pg_at_exit() { [ -n "${PROXY_PID:-}" ] && kill "$PROXY_PID" 2>/dev/null; [ -n "${killer:-}" ] && kill "$killer" 2>/dev/null; true; }
pg_setup forkdns
host_conf a
on a expect_rc 0 "$ADMIN" init --generate-key "$T/a/mk.key"
pg_token a fd
# TCP on 127.0.0.1 relayed to the cluster's Unix socket (it listens on no TCP port)
python3 - "$PG_HOST/.s.PGSQL.$PG_PORT" "$T/tport" <<'PY' &
import socket, sys, threading
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0)); srv.listen(64)
open(sys.argv[2] + ".tmp", "w").write(str(srv.getsockname()[1])); import os; os.rename(sys.argv[2] + ".tmp", sys.argv[2])
def relay(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d: break
            b.sendall(d)
    except OSError: pass
    for s in (a, b):
        try: s.shutdown(socket.SHUT_RDWR)
        except OSError: pass
while True:
    c, _ = srv.accept()
    u = socket.socket(socket.AF_UNIX); u.connect(sys.argv[1])
    threading.Thread(target=relay, args=(c, u), daemon=True).start()
    threading.Thread(target=relay, args=(u, c), daemon=True).start()
PY
PROXY_PID=$!
for i in $(seq 1 50); do [ -s "$T/tport" ] && break; sleep 0.1; done
TPORT=$(cat "$T/tport")
{ cat "$PGPASSFILE"; sed -n "s|^$PG_HOST:[^:]*:|slowhost:$TPORT:|p" "$PGPASSFILE"; } > "$T/pgpass"; chmod 600 "$T/pgpass"
export PGPASSFILE=$T/pgpass
sed -i "s|^postgresql = .*|postgresql = $(echo "$CONNINFO" | sed "s|host=[^ ]*|host=slowhost|; s|port=[^ ]*|port=$TPORT|")|" "$T/a/p11mk.conf"
grep '^postgresql' "$T/a/p11mk.conf"
export SLOW_DNS_MS=${SLOW_DNS_MS:-6000}
( sleep 10; end=$((SECONDS + 20)); while [ $SECONDS -lt $end ]; do
    sql "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'forkdns' AND application_name = 'p11mk' AND pid <> pg_backend_pid()" >/dev/null 2>&1
    sleep 2; done ) & killer=$!
rc=0; t0=$SECONDS
on a env LD_PRELOAD="${P11MK_SLOW_DNS:?}" timeout -s KILL 120 "$FS" "${FS_MODULE:-$MOD}" fd "$PIN" idle 30 > "$T/fs.out" 2> "$T/fs.err" || rc=$?
echo "# rc $rc in $((SECONDS - t0)) s: $(cat "$T/fs.out")"
sort "$T/fs.err" | uniq -c | sort -rn > "$T/fs.sum"; head "$T/fs.sum"
wait $killer; killer=
if [ $rc -ne 0 ]; then fail "forks waited for the listener's name look-up (rc $rc)"; fi
ok "no fork waited over ${FORK_MAX_MS:-3000} ms"
