#!/usr/bin/env bash
# tests/integration/pg-cluster, the private PostgreSQL clusters the postgresql
# backend's tests run against: start prints the variables; two databases made
# by newdb are reachable as the role p11mk with the cluster's pgpass file and
# with no other password; the server listens on no TCP port and (as root) runs
# as p11mk-pgtest; two clusters run side by side; data and connections survive
# a restart; stop ends the server and removes the directory; test_pg.h's
# test_pg_newdb makes databases one can connect to. Skips without PostgreSQL.
. "${P11MK_TESTLIB:?run the integration tests through meson test}"
PGC=${P11MK_PG_CLUSTER:-$(dirname "$P11MK_TESTLIB")/pg-cluster}

bindir=$("$PGC" available 2>"$T/avail.err") || skip "$(cat "$T/avail.err")"
PSQL=$bindir/psql

# The clusters live in directories of their own under /tmp (as root the
# server's user must be able to enter them; $T is private).
PGD=$(mktemp -d /tmp/p11mk-pg-XXXXXX)
PGD2=$(mktemp -d /tmp/p11mk-pg-XXXXXX)
trap 'rc=$?; for d in "$PGD" "$PGD2"; do "$PGC" stop "$d" >/dev/null 2>&1 || rm -rf "$d"; done; (exit $rc); cleanup' EXIT

# q CONNINFO SQL: one query as the connection string says, no password prompt.
q() { "$PSQL" -X -w -At -v ON_ERROR_STOP=1 -d "$1" -c "$2"; }

# start: the printed variables, the directory's and the pgpass file's modes.
"$PGC" start "$PGD" > "$T/start.out" || fail "pg-cluster start failed"
eval "$(cat "$T/start.out")"
[ "$PG_DIR" = "$PGD" ] && [ "$PG_HOST" = "$PGD" ] || fail "PG_DIR/PG_HOST: $(cat "$T/start.out")"
[[ $PG_PORT =~ ^[0-9]+$ ]] || fail "PG_PORT: '$PG_PORT'"
[ "$PGPASSFILE" = "$PGD/pgpass" ] && [ "$PG_ROLE" = p11mk ] && [ -n "$PG_SUPER" ] ||
    fail "PGPASSFILE/PG_ROLE/PG_SUPER: $(cat "$T/start.out")"
export PGPASSFILE
[ "$(stat -c %a "$PGD")" = 755 ] || fail "$PGD has mode $(stat -c %a "$PGD"), not 755"
[ "$(stat -c '%a %u' "$PGPASSFILE")" = "600 $(id -u)" ] ||
    fail "pgpass: mode/owner $(stat -c '%a %u' "$PGPASSFILE"), want 600 $(id -u)"
[ -S "$PGD/.s.PGSQL.$PG_PORT" ] || fail "no socket $PGD/.s.PGSQL.$PG_PORT"
[ "$(cat "$T/start.out")" = "$("$PGC" env "$PGD")" ] || fail "pg-cluster env differs from what start printed"
ok "start: PG_DIR PG_HOST PG_PORT PGPASSFILE PG_SUPER PG_ROLE; DIR 755, pgpass 600 and ours, the socket"

# newdb: two databases owned by p11mk, reachable with the pgpass file.
ci1=$("$PGC" newdb "$PGD" db_one) || fail "newdb db_one"
ci2=$("$PGC" newdb "$PGD" db_two) || fail "newdb db_two"
[ "$ci1" = "host=$PGD port=$PG_PORT dbname=db_one user=p11mk" ] || fail "newdb printed '$ci1'"
[ "$(q "$ci1" 'select current_user, current_database()')" = "p11mk|db_one" ] || fail "psql db_one as p11mk"
[ "$(q "$ci2" 'select current_database()')" = db_two ] || fail "psql db_two as p11mk"
[ "$(q "$ci1" 'select rolsuper from pg_roles where rolname = current_user')" = f ] || fail "p11mk is a superuser"
[ "$(q "$ci1" "select pg_catalog.pg_get_userbyid(datdba) from pg_database where datname = 'db_two'")" = p11mk ] ||
    fail "db_two is not owned by p11mk"
q "$ci1" 'create table t (k text primary key, v bytea); insert into t values ($$a$$, $$\x0102$$)' >/dev/null ||
    fail "p11mk cannot create a table in its database"
[ -z "$(q "$ci1" 'show listen_addresses')" ] || fail "the server listens on TCP: $(q "$ci1" 'show listen_addresses')"
expect_rc 1 "$PGC" newdb "$PGD" db_one
expect_out "already exists"
expect_rc 1 "$PGC" newdb "$PGD" 'Bad;Name'
ok "newdb: two databases owned by p11mk (not a superuser), pgpass logins, no TCP; a taken or bad name is refused"

# Only the password authenticates p11mk: a wrong one, none at all.
(umask 077; printf '%s:%s:*:p11mk:not-the-password\n' "$PGD" "$PG_PORT" > "$T/wrong.pgpass")
expect_rc 2 env PGPASSFILE="$T/wrong.pgpass" "$PSQL" -X -w -d "$ci1" -c 'select 1'
expect_out "password authentication failed for user \"p11mk\""
expect_rc 2 env PGPASSFILE="$T/none" "$PSQL" -X -w -d "$ci1" -c 'select 1'
expect_out "no password supplied"
ok "a wrong password and no password are refused"

# As root the server runs as p11mk-pgtest.
"$PGC" status "$PGD" > "$T/status.out" || fail "status of a running cluster: $(cat "$T/status.out")"
pid=$(sed -n 's/^running: pid \([0-9]*\)$/\1/p' "$T/status.out")
[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || fail "status: '$(cat "$T/status.out")'"
if [ "$(id -u)" -eq 0 ]; then
    [ "$(ps -o user= -p "$pid")" = p11mk-pgtest ] || fail "the server runs as $(ps -o user= -p "$pid")"
    ok "status: running; as root the server runs as p11mk-pgtest"
else
    [ "$(ps -o uid= -p "$pid" | tr -d ' ')" = "$(id -u)" ] || fail "the server does not run as us"
    ok "status: running, as ourselves"
fi

# A second cluster side by side (same socket name, another directory).
"$PGC" start "$PGD2" > "$T/start2.out" || fail "a second cluster did not start"
ci3=$("$PGC" newdb "$PGD2" db_one) || fail "newdb in the second cluster"
[ "$(PGPASSFILE=$PGD2/pgpass q "$ci3" 'select count(*) from pg_tables where tablename = $$t$$')" = 0 ] ||
    fail "the second cluster's db_one"
expect_rc 2 "$PSQL" -X -w -d "$ci3" -c 'select 1'     # the first cluster's pgpass is not for it
"$PGC" stop "$PGD2" || fail "stop the second cluster"
[ "$(q "$ci1" 'select count(*) from t')" = 1 ] || fail "the first cluster after the second stopped"
ok "two clusters side by side, each with its own password"

# restart: the data and new connections.
"$PGC" restart "$PGD" || fail "restart failed"
[ "$(q "$ci1" 'select encode(v, $$hex$$) from t where k = $$a$$')" = 0102 ] || fail "db_one after restart"
[ "$(q "$ci2" 'select current_database()')" = db_two ] || fail "db_two after restart"
ok "restart: connections work again, the data is kept"

# test_pg.h against this cluster: each call a database of its own.
if [ -n "${P11MK_PG_HELPER:-}" ]; then
    P11MK_TEST_PG_DIR=$PGD P11MK_PG_CLUSTER=$PGC "$P11MK_PG_HELPER" > "$T/helper.out" 2>&1 ||
        { cat "$T/helper.out"; fail "test_pg_helper"; }
    n=0
    while read -r ci; do
        [ "$(q "$ci" 'select current_user')" = p11mk ] || fail "test_pg_newdb's '$ci'"
        n=$((n + 1))
    done < <(sed -n 's/^conninfo: //p' "$T/helper.out")
    [ $n -eq 2 ] || { cat "$T/helper.out"; fail "test_pg_helper printed $n connection strings"; }
    ok "test_pg_newdb: two new databases, reachable as p11mk"
fi

# dropdb, then stop: the server ends, the directory goes.
"$PGC" dropdb "$PGD" db_two || fail "dropdb"
expect_rc 2 "$PSQL" -X -w -d "$ci2" -c 'select 1'
expect_out 'database "db_two" does not exist'
"$PGC" stop "$PGD" || fail "stop failed"
[ ! -e "$PGD" ] || fail "stop left $PGD"
for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$pid" 2>/dev/null && fail "the server (pid $pid) still runs after stop"
expect_rc 1 "$PGC" status "$PGD"
expect_out "not a cluster"
ok "dropdb; stop: the server ends, $PGD is removed"
