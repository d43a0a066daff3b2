#!/usr/bin/env bash
# Hostile: a notification still on its way is not a database restored from an
# older copy. Host a's listener is held back (its backend stopped for a moment,
# what a busy machine or a slow network does for a few milliseconds) while two
# commits happen elsewhere; a read on host a meanwhile sees the second. When the
# notifications arrive, the first is below what host a has already read: that
# must not be taken for p11mk_seq going back (an ERROR naming a restore, every
# cached key and login dropped). The numbers really going back (test_pg_stale,
# 4) must still be found.
. "${P11MK_TESTLIB:?run the integration tests through meson test}"
need pkcs11-tool
. "$(dirname "$P11MK_TESTLIB")/pg_lib.sh"
STOPPED=
pg_setup notifyorder
host_conf a
on a expect_rc 0 "$ADMIN" init --generate-key "$T/a/mk.key"
pg_token a order
on a pkcs11-tool --module "$MOD" --token-label order --login --pin $PIN --keypairgen --key-type EC:prime256v1 \
    --label k1 >/dev/null || fail "keypair k1"

P11MK_CONF=$T/a/p11mk.conf probe_start order
case $(ask "find k1") in h*) ;; *) fail "probe cannot find k1" ;; esac
[ "$(ask sign)" = "rv 0x0" ] || fail "probe cannot sign"
sleep 1.5 # the listener has read the number and pinged at least once
: > "$T/a/p11mk.log"

# A commit elsewhere, as p11mk writes one: the number up, notified, committed.
commit_elsewhere() {
    sql "UPDATE p11mk_seq SET seq = seq + 1; SELECT pg_notify('p11mk', (SELECT seq FROM p11mk_seq)::text)" >/dev/null
}
bad=0
for round in 1 2 3; do
    pids=$(sql "SELECT pid FROM pg_stat_activity WHERE datname = 'notifyorder' AND application_name = 'p11mk' AND query IN ('SELECT seq FROM p11mk_seq', 'SELECT 1')")
    [ -n "$pids" ] || fail "cannot find host a's listener backend"
    for p in $pids; do kill -STOP "$p"; STOPPED="$STOPPED $p"; done
    commit_elsewhere
    commit_elsewhere
    case $(ask "find k1") in h*) ;; *) fail "probe cannot find k1 (round $round)" ;; esac # a read: sees both commits
    for p in $STOPPED; do kill -CONT "$p" 2>/dev/null || true; done
    STOPPED=
    sleep 1.5
done
if grep -i "went back" "$T/a/p11mk.log"; then
    echo "BUG: host a took notifications that were merely late for p11mk_seq going back"
    bad=1
else
    ok "late notifications are not taken for a restored database"
fi

# Control: the number really going back is still found.
sql "UPDATE p11mk_seq SET seq = seq / 2" # (above 0: a number, as ks_pg reads it, is unsigned)
commit_elsewhere
sleep 1.5
ask "find k1" >/dev/null
grep -qi "went back" "$T/a/p11mk.log" && ok "p11mk_seq going back is still found" ||
    { echo "BUG: p11mk_seq went back and host a did not notice"; tail -5 "$T/a/p11mk.log"; bad=1; }

echo quit >&"${PR[1]}" 2>/dev/null || true
[ $bad -eq 0 ] || fail "see BUG lines"
