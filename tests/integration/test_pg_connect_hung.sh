#!/usr/bin/env bash
# Hostile: a PostgreSQL "server" that accepts the connection and never
# answers (a hung host, a half-open path), first in a multi-host connection
# string. libpq's connect_timeout is per host and PQconnectdbParams honours
# it; PQconnectPoll does not (the application must), so since connections
# are made step by step (ks_pg.c connect_new/connect_wait) the module:
#  1. never reaches the second host of "host=hung,good connect_timeout=2":
#     its 10 s budget goes on the hung one, C_Initialize fails (FAILS: was
#     ~2 s per connection, then the good host);
#  2. with the hung host alone, says why: not "...failed: " with nothing
#     after it (libpq's prefix of an attempt still going), and within about
#     connect_timeout per connection (FAILS: 10 s each, empty reason).
. "${P11MK_TESTLIB:?run the integration tests through meson test}"
need pkcs11-tool
need python3
. "$(dirname "$P11MK_TESTLIB")/pg_lib.sh"
pg_at_exit() { [ -n "${HUNG_PID:-}" ] && kill "$HUNG_PID" 2>/dev/null || true; }
pg_setup connhung
host_conf a
export P11MK_CONF=$T/a/p11mk.conf
expect_rc 0 "$ADMIN" init --generate-key "$T/a/mk.key"
pkcs11-tool --module "$MOD" --init-token --slot 1 --label hung --so-pin $SO >/dev/null || fail "cannot init the token"

# The hung server: a Unix socket that listens (the kernel completes the
# connection) and never accepts nor answers.
mkdir -p "$T/hung"
python3 - "$T/hung/.s.PGSQL.5999" <<'PY' &
import socket, sys, time
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(128)
time.sleep(300)
PY
HUNG_PID=$!
for i in $(seq 1 50); do [ -S "$T/hung/.s.PGSQL.5999" ] && break; sleep 0.1; done
good=$(echo "$CONNINFO" | sed -n 's/.*host=\([^ ]*\).*/\1/p')
port=$(echo "$CONNINFO" | sed -n 's/.*port=\([^ ]*\).*/\1/p')
rest=$(echo "$CONNINFO" | sed 's/host=[^ ]* *//; s/port=[^ ]* *//')
setconn() { sed -i "s|^postgresql = .*|postgresql = $1|" "$P11MK_CONF"; }
bad=0

# 1.
setconn "host=$T/hung,$good port=5999,$port $rest connect_timeout=2"
t0=$SECONDS
if out=$(timeout 15 pkcs11-tool --module "$MOD" -L 2>&1) && echo "$out" | grep -q "token label *: hung"; then
    ok "hung first host: the second one serves ($((SECONDS - t0)) s)"
else
    echo "BUG: 'host=hung,good connect_timeout=2': the good host is never tried, C_Initialize fails after $((SECONDS - t0)) s: $(echo "$out" | tail -2 | tr '\n' ' ')"
    bad=1
fi

# 2.
setconn "host=$T/hung port=5999 $rest connect_timeout=2"
t0=$SECONDS
rc=0; timeout 25 "$ADMIN" status >/dev/null 2>"$T/status.err" || rc=$?
el=$((SECONDS - t0))
msg=$(grep -m1 "cannot connect" "$T/status.err" || true)
[ $rc -ne 0 ] && [ $rc -ne 124 ] || { echo "BUG: status against a hung server: rc $rc after $el s"; bad=1; }
case $msg in
    *"failed: "|*"failed: ;"*|"") echo "BUG: no reason given for the failed connection: '$msg'"; bad=1 ;;
    *) ok "reason given: ${msg##*failed: }" ;;
esac
[ $el -le 9 ] && ok "hung server, connect_timeout=2: status fails in $el s" ||
    { echo "BUG: connect_timeout=2 not honoured: status took $el s"; bad=1; }
[ $bad -eq 0 ] || fail "see the BUG lines"
