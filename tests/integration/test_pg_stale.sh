#!/usr/bin/env bash
# Hostile: stale key state served from the token's key cache on a PostgreSQL
# keystore (the cache trusts ks_commit_seq(), kept from notifications).
# Host a keeps one long-lived client (pg_probe) with an EC key cached; host b
# destroys or changes that key. Host a must stop using it within a bounded
# delay (the notification delay, a few seconds at most), whatever happened to
# its notification connection or to the numbers in p11mk_seq:
#  1. control: a plain destroy on b is seen on a at once;
#  2. control: the listener's backend terminated (pg_terminate_backend), then
#     b destroys: seen on a (commit_seq is 0 while the listener is down);
#  3. the listener's backend hung (SIGSTOP: what a half-open TCP connection,
#     a NAT or firewall that dropped the idle connection, looks like): no
#     notification ever arrives, and the cached key is served forever;
#  4. p11mk_seq moved backwards (the database restored from a dump taken
#     earlier, or edited): the numbers of b's commits are below a's
#     commit_seq, ignored, and reused: the destroyed key is served.
. "${P11MK_TESTLIB:?run the integration tests through meson test}"
need pkcs11-tool
. "$(dirname "$P11MK_TESTLIB")/pg_lib.sh"
STOPPED=
pg_setup stale

host_conf a
host_conf b
on a expect_rc 0 "$ADMIN" init --generate-key "$T/a/mk.key"
cp -p "$T/a/mk.key" "$T/b/mk.key"
pg_token a stale
for k in k1 k2 k3 k4; do
    on a pkcs11-tool --module "$MOD" --token-label stale --login --pin $PIN --keypairgen --key-type EC:prime256v1 \
        --label $k >/dev/null || fail "keypair $k"
done
destroy_on_b() { # label
    on b pkcs11-tool --module "$MOD" --token-label stale --login --pin $PIN --delete-object --type privkey \
        --label "$1" >/dev/null || fail "cannot destroy $1 on b"
}

# The probe on host a, on a coprocess.
P11MK_CONF=$T/a/p11mk.conf probe_start stale
warm() { # label: find and sign twice (the second from the cache)
    case $(ask "find $1") in h*) ;; *) fail "probe cannot find $1" ;; esac
    [ "$(ask sign)" = "rv 0x0" ] && [ "$(ask sign)" = "rv 0x0" ] || fail "probe cannot sign with $1"
}
listener_pids() {
    sql "SELECT pid FROM pg_stat_activity WHERE datname = 'stale' AND application_name = 'p11mk' AND query IN ('SELECT seq FROM p11mk_seq', 'SELECT 1')"
}
bad=0

# 1. control
warm k1
destroy_on_b k1
r=$(ask "until_fail 5")
case $r in "rv 0x0 "*) echo "BUG: k1 destroyed on b still signs on a after 5 s ($r)"; bad=1 ;;
    *) ok "control: a key destroyed on b stops signing on a ($r)" ;; esac

# 2. listener terminated, then the destroy
warm k2
sql "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'stale' AND application_name = 'p11mk'" >/dev/null
destroy_on_b k2
r=$(ask "until_fail 5")
case $r in "rv 0x0 "*) echo "BUG: k2 destroyed while a's listener was down still signs on a ($r)"; bad=1 ;;
    *) ok "listener terminated: the destroyed key stops signing on a ($r)" ;; esac

# 3. listener hung: no notification, no error either
warm k3
sleep 1 # the listener is back (its backoff) after case 2
pids=$(listener_pids)
[ -n "$pids" ] || fail "cannot find host a's listener backend"
for p in $pids; do kill -STOP "$p"; STOPPED="$STOPPED $p"; done
destroy_on_b k3
r=$(ask "until_fail 15")
for p in $STOPPED; do kill -CONT "$p" 2>/dev/null || true; done
STOPPED=
case $r in "rv 0x0 "*) echo "BUG: k3 destroyed on b still signs on a 15 s later while a's notification backend hangs ($r)"; bad=1 ;;
    *) ok "listener hung: the destroyed key stops signing on a ($r)" ;; esac

# 4. p11mk_seq moved backwards
warm k4
sleep 1
sql "UPDATE p11mk_seq SET seq = seq - 20"
destroy_on_b k4
r=$(ask "until_fail 5")
case $r in "rv 0x0 "*) echo "BUG: k4 destroyed on b still signs on a after p11mk_seq went backwards ($r)"; bad=1 ;;
    *) ok "p11mk_seq moved backwards: the destroyed key stops signing on a ($r)" ;; esac
grep -qi "seq\|sequence\|backwards" "$T/a/p11mk.log" && grep -i "backwards\|went down\|lower" "$T/a/p11mk.log" ||
    echo "note: nothing in host a's log about p11mk_seq going backwards"

echo quit >&"${PR[1]}" 2>/dev/null || true
[ $bad -eq 0 ] || fail "stale key state served on host a (see BUG lines)"
