# Shared setup of the PostgreSQL backend's tests (sourced after lib.sh): a
# private cluster in a temporary directory (tests/integration/pg-cluster),
# stopped at exit whatever happened, one database in it, and "hosts":
# configurations of their own (keystore directory, key file, host_name) on
# that database.
#   pg_setup DB          start the cluster (or skip without PostgreSQL) and
#                        make database DB: sets PGD, BIN, CONNINFO, PG_* and
#                        exports PGPASSFILE
#   pg_at_exit           a function a test may define: run at exit, before
#                        the cluster stops (kill its clients, restart it...)
#   sql SQL              as the cluster's superuser, on DB
#   host_conf DIR [NAME] $T/DIR/p11mk.conf on DB, host_name NAME (default DIR)
#   on DIR CMD...        CMD with DIR's configuration
#   probe_start TOKEN    pg_probe (P11MK_PG_PROBE) on a coprocess with the
#                        configuration in P11MK_CONF, logged in to TOKEN;
#                        stopped at exit
#   ask LINE             one request to the probe, its answer on stdout
#   STOPPED              pids a test stopped (SIGSTOP): continued at exit
PGC=${P11MK_PG_CLUSTER:?}

pg_exit() {
    local r=$?
    set +e
    for p in ${STOPPED:-}; do kill -CONT "$p" 2>/dev/null; done
    [ -n "${PROBE_PID:-}" ] && kill "$PROBE_PID" 2>/dev/null
    declare -F pg_at_exit >/dev/null && pg_at_exit
    "$PGC" stop "$PGD" >/dev/null 2>&1
    (exit $r)
    cleanup
}

pg_setup() {
    "$PGC" available >/dev/null 2>&1 || skip "PostgreSQL (initdb, pg_ctl) is not installed"
    BIN=$("$PGC" available)
    PGD=$(mktemp -d "/tmp/p11mk-$1-pg-XXXXXX")
    rmdir "$PGD"
    trap pg_exit EXIT
    eval "$("$PGC" start "$PGD")" || fail "cannot start a PostgreSQL cluster"
    export PGPASSFILE
    PGL_DB=$1 # not PG_DB: lib.sh's cleanup owns that name (its own database, dropped at exit)
    CONNINFO=$("$PGC" newdb "$PGD" "$1") || fail "cannot make the database"
}

sql() { "$BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$PG_HOST" -p "$PG_PORT" -U "$PG_SUPER" -d "$PGL_DB" -c "$1"; }

host_conf() {
    mkdir -p "$T/$1"
    cat > "$T/$1/p11mk.conf" <<CONF
keystore = $T/$1/ks
backend = postgresql
postgresql = $CONNINFO
master_key = $T/$1/mk.key
host_name = ${2:-$1}
log = $T/$1/p11mk.log
log_level = info
CONF
}

on() { local h=$1; shift; P11MK_CONF=$T/$h/p11mk.conf "$@"; }

# pg_token HOST LABEL: on HOST's keystore, a token LABEL in slot 1 with the
# SO PIN $SO and the user PIN $PIN.
pg_token() {
    on "$1" pkcs11-tool --module "$MOD" --init-token --slot 1 --label "$2" --so-pin $SO >/dev/null
    on "$1" pkcs11-tool --module "$MOD" --token-label "$2" --login --login-type so --so-pin $SO --init-pin --pin $PIN >/dev/null
}

# The stalling proxy (pg_stall_proxy.py) on $T/px/.s.PGSQL.$PG_PORT; its
# pid in PROXY_PID (the caller's pg_at_exit stops it); $T/px/silent makes
# it go silent.
stall_proxy_start() {
    mkdir -p "$T/px"
    python3 "$(dirname "$P11MK_TESTLIB")/pg_stall_proxy.py" "$T/px/.s.PGSQL.$PG_PORT" "$PG_HOST/.s.PGSQL.$PG_PORT" \
        "$T/px/silent" &
    PROXY_PID=$!
    for i in $(seq 1 50); do [ -S "$T/px/.s.PGSQL.$PG_PORT" ] && break; sleep 0.1; done
    [ -S "$T/px/.s.PGSQL.$PG_PORT" ] || fail "the proxy did not start"
}

probe_start() {
    coproc PR { exec "${P11MK_PG_PROBE:?}" "$MOD" "$1" "$PIN" 2>"$T/probe.err"; }
    PROBE_PID=$PR_PID
    local l
    IFS= read -r -t 60 l <&"${PR[0]}" && [ "$l" = ready ] || fail "probe did not start: $(cat "$T/probe.err")"
}

ask() { echo "$1" >&"${PR[1]}"; local l; IFS= read -r -t 120 l <&"${PR[0]}" || fail "probe: no answer to '$1' ($(cat "$T/probe.err"))"; echo "$l"; }
