#!/usr/bin/env bash
# Hostile: the PostgreSQL server stopped under a long-lived client (pg_probe),
# then started again 10 s later.
#  1. C_FindObjectsInit found the candidates, then the server stops:
#     C_FindObjects must answer CKR_DEVICE_ERROR, not CKR_OK with no object
#     (FAILS: p11_object.c's C_FindObjects skips a candidate whose read failed
#     with any error but CKR_HOST_MEMORY, as if it had been deleted);
#  2. while the server is down a cached key is not used (the listener is down:
#     commit_seq 0) and operations answer CKR_DEVICE_ERROR;
#  3. once it is back, the client works again within a few seconds.
. "${P11MK_TESTLIB:?run the integration tests through meson test}"
need pkcs11-tool
. "$(dirname "$P11MK_TESTLIB")/pg_lib.sh"
as_srv() { if [ "$(stat -c %U "$PG_DIR/data")" != "$(id -un)" ]; then (cd "$PG_DIR" && runuser -u "$(stat -c %U "$PG_DIR/data")" -- "$@"); else "$@"; fi; }
pg_down() { as_srv "$BIN/pg_ctl" stop -D "$PG_DIR/data" -m fast -w -s; }
pg_up() { as_srv "$BIN/pg_ctl" start -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -s; }
pg_at_exit() {
    as_srv "$BIN/pg_ctl" status -D "$PG_DIR/data" >/dev/null 2>&1
    [ $? = 3 ] && pg_up >/dev/null 2>&1
}
pg_setup outage
host_conf a
export P11MK_CONF=$T/a/p11mk.conf
expect_rc 0 "$ADMIN" init --generate-key "$T/a/mk.key"
pkcs11-tool --module "$MOD" --init-token --slot 1 --label out --so-pin $SO >/dev/null
pkcs11-tool --module "$MOD" --token-label out --login --login-type so --so-pin $SO --init-pin --pin $PIN >/dev/null
pkcs11-tool --module "$MOD" --token-label out --login --pin $PIN --keypairgen --key-type EC:prime256v1 --label k1 >/dev/null
echo hello > data.txt
pkcs11-tool --module "$MOD" --token-label out --login --pin $PIN --write-object data.txt --type data --label d1 --private >/dev/null ||
    fail "cannot write a data object"

probe_start out
bad=0
[ "$(ask "findinit d1")" = "rv 0x0" ] && [ "$(ask findnext)" = "n 1 rv 0x0" ] || fail "cannot find d1"
case $(ask "find k1") in h*) ;; *) fail "cannot find k1" ;; esac
[ "$(ask sign)" = "rv 0x0" ] && [ "$(ask sign)" = "rv 0x0" ] || fail "cannot sign"

# 1.
[ "$(ask "findinit d1")" = "rv 0x0" ] || fail "findinit"
pg_down || fail "cannot stop the server"
t0=$SECONDS
r=$(ask findnext)
case $r in "n 0 rv 0x0") echo "BUG: C_FindObjects with the server down answers CKR_OK and no object ($r)"; bad=1 ;;
    "n 1 rv 0x0"|*"rv 0x30") ok "C_FindObjects with the server down: $r" ;;
    *) echo "BUG: C_FindObjects with the server down: $r"; bad=1 ;; esac
# 2.
sleep 1
r=$(ask sign)
[ "$r" = "rv 0x30" ] && ok "server down: a cached key is not used ($r)" ||
    { echo "BUG: server down: sign with a cached key answers $r, not CKR_DEVICE_ERROR"; bad=1; }
r=$(ask state)
echo "server down: session state: $r"
# C_GetSlotList's list of return values (PKCS#11 3.0, 5.5) has no
# CKR_DEVICE_ERROR: the storage's failure is CKR_FUNCTION_FAILED there.
r=$(ask slots)
case $r in "n "*" rv 0x0"|"n 0 rv 0x6") ok "server down: C_GetSlotList: $r" ;;
    *) echo "BUG: server down: C_GetSlotList answers $r (not in its list of return values)"; bad=1 ;; esac
while [ $((SECONDS - t0)) -lt 10 ]; do sleep 1; done
pg_up || fail "cannot start the server"
# 3.
ok_again=
for i in $(seq 1 50); do
    [ "$(ask sign)" = "rv 0x0" ] && { ok_again=$i; break; }
    sleep 0.2
done
[ -n "$ok_again" ] && ok "server back after 10 s: signing again after $ok_again tries" ||
    { echo "BUG: not signing again 10 s after the server came back"; bad=1; }
[ "$(ask "findinit d1")" = "rv 0x0" ] && [ "$(ask findnext)" = "n 1 rv 0x0" ] ||
    { echo "BUG: d1 not found after the server came back"; bad=1; }
echo quit >&"${PR[1]}" 2>/dev/null || true
[ $bad -eq 0 ] || fail "see the BUG lines"
