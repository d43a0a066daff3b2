#!/usr/bin/env bash
# PIN attempts across a fleet: 12 hosts (configurations of their own, each
# with its own keystore directory and so its own attempt file lock) on one
# PostgreSQL database, a process on each calling C_Login at the same moment
# (pin_race procs, PIN_RACE_CONF). An attempt reserves a try by a committed
# write before scrypt looks at the PIN; the storage's attempt lock
# (ks_pg.c pg_lock_attempts, an advisory lock) keeps one attempt per token
# in flight across the hosts, as the file lock does on one host:
#  1. 12 hosts logging in with the right PIN at once, three times: every
#     login succeeds and the PIN is not left counting down (FAILS without
#     the storage's lock: as many reservations as hosts were in flight, the
#     11th and 12th found the PIN locked, and a right PIN whose record another
#     host's reservation had changed was refused; the token ended locked);
#  2. 12 hosts guessing at once: exactly 10 CKR_PIN_INCORRECT and 2
#     CKR_PIN_LOCKED (the limit holds for the fleet), then the right PIN is
#     locked out too.
. "${P11MK_TESTLIB:?run the integration tests through meson test}"
need pkcs11-tool
RACE=${P11MK_PIN_RACE:?P11MK_PIN_RACE must name the built pin_race}
. "$(dirname "$P11MK_TESTLIB")/pg_lib.sh"
pg_setup pinfleet
N=12
for i in $(seq 0 $((N - 1))); do host_conf h$i; done
on h0 expect_rc 0 "$ADMIN" init --generate-key "$T/h0/mk.key"
for i in $(seq 1 $((N - 1))); do cp -p "$T/h0/mk.key" "$T/h$i/mk.key"; done
on h0 pkcs11-tool --module "$MOD" --init-token --slot 1 --label fleet --so-pin $SO >/dev/null || fail "init token"
on h0 pkcs11-tool --module "$MOD" --token-label fleet --login --login-type so --so-pin $SO --init-pin --pin $PIN \
    >/dev/null || fail "init pin"
bad=0
race() { PIN_RACE_CONF="$T/h{i}/p11mk.conf" timeout 180 "$RACE" "$MOD" fleet procs $N user "$1"; }

# 1.
for round in 1 2 3; do
    out=$(race "$PIN") || fail "pin_race failed: $out"
    if [ "$out" = "CKR_OK=$N" ]; then
        ok "round $round: $N hosts logged in at once: $out"
    else
        echo "BUG: round $round, $N hosts with the right PIN at once: $out"; bad=1
    fi
done
flags=$(on h3 "$RACE" "$MOD" fleet tokinfo) || fail "tokinfo failed"
case $flags in
    *COUNT_LOW*|*FINAL_TRY*|*LOCKED*) echo "BUG: after right PINs only, the token says: $flags"; bad=1 ;;
    *) ok "no failed try counted: '$flags'" ;;
esac

# 2.
out=$(race "wrong-pin-{i}") || fail "pin_race failed: $out"
[ "$out" = "CKR_PIN_INCORRECT=10 CKR_PIN_LOCKED=2" ] && ok "$N guessing hosts: $out" ||
    { echo "BUG: $N hosts guessing at once: $out (want 10 incorrect, 2 locked)"; bad=1; }
out=$(on h7 "$RACE" "$MOD" fleet login user "$PIN") || true
case $out in *CKR_PIN_LOCKED*) ok "then the right PIN is locked out: $out" ;;
    *) echo "BUG: after 10 wrong tries across the fleet, the right PIN gives: $out"; bad=1 ;; esac
[ $bad -eq 0 ] || fail "see the BUG lines"
