#!/usr/bin/env bash
# A full file system: the keystore lives on a small tmpfs that a filler file
# almost fills. C_CreateObject then fails with CKR_DEVICE_MEMORY and a log
# line naming the full file system; a rotation and a backup fail with a
# sentence saying so; nothing stored is lost, verify passes; and once space is
# freed, everything works again. Needs root (mount); skipped otherwise.
. "${P11MK_TESTLIB:?run the integration tests through meson test}"
CLIENT=${P11MK_ROT_CLIENT:?}
[ "$(id -u)" -eq 0 ] || skip "mounting a small file system needs root"
SMALL=$T/small
mkdir -p "$SMALL"
mount -t tmpfs -o size=6m,mode=0700 tmpfs "$SMALL" 2>/dev/null || skip "cannot mount a tmpfs here"
trap 'rc=$?; umount -l "$SMALL" 2>/dev/null; (exit $rc); cleanup' EXIT
head -c 32 /dev/urandom > "$T/master.key"; chmod 600 "$T/master.key"
cat > "$CONF" <<C
keystore = $SMALL/ks
master_key = $T/master.key
log = $T/p11mk.log
log_level = info
C
init_token full
"$CLIENT" "$MOD" full $PIN fill 100 >/dev/null
# Leave about 200 KiB.
avail=$(df --output=avail -B1 "$SMALL" | tail -1)
head -c $((avail - 200 * 1024)) /dev/zero > "$SMALL/filler"
set +e; "$CLIENT" "$MOD" full $PIN fill 100000 > "$T/fill.out" 2>&1; rc=$?; set -e
[ $rc -ne 0 ] || fail "200 KiB held 100,000 objects?"
grep -q "C_CreateObject failed: 0x31" "$T/fill.out" || { cat "$T/fill.out"; fail "a full file system is not CKR_DEVICE_MEMORY (0x31)"; }
grep -q "the file system is full" "$T/p11mk.log" || fail "the module did not log a full file system"
n=$("$ADMIN" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["objects"])')
[ "$n" -gt 100 ] || fail "no object was created before the disk filled ($n)"
expect_rc 0 "$ADMIN" verify
"$CLIENT" "$MOD" full $PIN check "$n" >/dev/null || fail "objects unreadable after the disk filled"
ok "C_CreateObject on a full file system: CKR_DEVICE_MEMORY, a log line, $n objects intact"

# A rotation: refused or stopped with a sentence, the keystore usable throughout.
set +e; "$ADMIN" rotate --quiet >"$T/out" 2>&1; rc=$?; set -e
if [ $rc -ne 0 ]; then
    grep -q "file system is full\|No space left" "$T/out" || { cat "$T/out"; fail "rotate on a full disk: no sentence naming it"; }
    [ $rc -eq 1 ] || { cat "$T/out"; fail "rotate on a full disk exited $rc, expected 1 (failed, nothing changed)"; }
fi
"$CLIENT" "$MOD" full $PIN check "$n" >/dev/null || fail "objects unreadable after a rotation on a full disk"
# A backup onto the full file system: a sentence, no partial file.
set +e; "$ADMIN" backup "$SMALL/ks.bak" >"$T/out" 2>&1; rc=$?; set -e
[ $rc -ne 0 ] || fail "a backup fitted in the little space left?"
grep -q "full" "$T/out" || { cat "$T/out"; fail "backup on a full disk: no sentence naming it"; }
[ ! -e "$SMALL/ks.bak" ] || fail "a failed backup left a partial file under its name"
ls -a "$SMALL" | grep >/dev/null "p11mk-backup" && fail "a failed backup left a temporary file"
ok "rotate and backup on a full file system: a sentence naming it, no partial backup, objects intact"

# Space again: everything works, and a rotation left half-done finishes.
rm -f "$SMALL/filler"
state=$("$ADMIN" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["rotation"]["state"])')
if [ "$state" != idle ]; then
    expect_rc 0 "$ADMIN" auto-update run
fi
expect_rc 0 "$ADMIN" rotate --quiet
"$CLIENT" "$MOD" full $PIN fill 10 >/dev/null || fail "writes do not work again after space was freed"
expect_rc 0 "$ADMIN" verify
expect_rc 0 "$ADMIN" backup "$SMALL/ks.bak"
ok "after space is freed: writes, rotation and backup work again; verify passes"
