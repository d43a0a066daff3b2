#!/usr/bin/env bash
# Over TCP, each of the module's connections asks the server to probe a
# silent peer after 15 s (tcp_keepalives_idle 15, interval 5, count 3:
# ks_pg.c SESSION_LIMITS_SQL), so that a client host that vanished with a
# transaction open (holding the writers' row lock) is found dead in about
# 30 s, not after the kernel's two hours. The other tests' clusters listen on
# a Unix socket only, where these settings do not apply; this one listens on
# 127.0.0.1 too, on a port of its own. Seen from outside, with ss(8): every
# server-side socket of the database's connections from a running
# application (its pool and its notification listener) has a keepalive timer
# of at most 15 s (FAILS without the settings: none, or the kernel's 7200 s).
. "${P11MK_TESTLIB:?run the integration tests through meson test}"
need pkcs11-tool
need python3
need ss
. "$(dirname "$P11MK_TESTLIB")/pg_lib.sh"
pg_setup tcpka
# A free TCP port: the server's port names its socket too, so the
# connection string's port changes with it.
P=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
sed -i "s/^listen_addresses = ''/listen_addresses = '127.0.0.1'/; s/^port = .*/port = $P/" "$PGD/data/postgresql.conf"
echo "host all all 127.0.0.1/32 scram-sha-256" >> "$PGD/data/pg_hba.conf"
sed -i "s/^PG_PORT=.*/PG_PORT=$P/" "$PGD/cluster.env"
"${P11MK_PG_CLUSTER:?}" restart "$PGD" || fail "cannot restart the cluster on port $P"
PG_PORT=$P
pw=$(cut -d: -f5 "$PGPASSFILE")
(umask 077; printf '127.0.0.1:%s:*:%s:%s\n' "$P" "$PG_ROLE" "$pw" > "$T/pgpass")
export PGPASSFILE=$T/pgpass
CONNINFO=$(echo "$CONNINFO" | sed "s|host=[^ ]*|host=127.0.0.1|; s|port=[^ ]*|port=$P|")
host_conf a
export P11MK_CONF=$T/a/p11mk.conf
expect_rc 0 "$ADMIN" init --generate-key "$T/a/mk.key"
pkcs11-tool --module "$MOD" --init-token --slot 1 --label tcp --so-pin $SO >/dev/null || fail "cannot init the token over TCP"

coproc HOLD { exec python3 "$(dirname "$P11MK_TESTLIB")/p11_hold.py" "$MOD" 2>"$T/hold.err"; }
IFS= read -r -t 60 l <&"${HOLD[0]}" && [ "$l" = ready ] || fail "the application did not start: $(cat "$T/hold.err")"
sleep 1 # the listener connects in its own thread
ss -tnoi state established "( sport = :$P )" > "$T/ss.out"
echo quit >&"${HOLD[1]}"
wait "$HOLD_PID" || fail "the application failed: $(cat "$T/hold.err")"
n=$(grep -c "127.0.0.1:$P" "$T/ss.out" || true)
[ "$n" -ge 2 ] || fail "expected the pool's and the listener's connections, ss shows $n: $(cat "$T/ss.out")"
timers=$(grep -o 'timer:(keepalive,[^,]*' "$T/ss.out" | sed 's/.*,//' | tr '\n' ' ')
long=0
for t in $timers; do
    case $t in *min*|*h*) long=1 ;; *sec) [ "${t%sec}" -le 15 ] || long=1 ;; *ms) ;; *) long=1 ;; esac
done
nt=$(echo $timers | wc -w)
if [ "$nt" -ne "$n" ] || [ $long -ne 0 ]; then
    fail "$n server-side connections, keepalive timers: '$timers' (want one of 15 s at most each): $(cat "$T/ss.out")"
fi
ok "$n server-side connections over TCP, each with a keepalive timer of at most 15 s: $timers"
