#!/usr/bin/env bash
# Restore of damaged copies: a backup truncated at many sizes, one with a
# flipped byte, one that is not a keystore at all, an empty file, a FIFO. Each
# is refused with a clear message and a non-zero exit (never a signal such as
# SIGBUS from mapping a short file), the keystore stays as it was, and no
# scratch directory is left behind.
. "${P11MK_TESTLIB:?run the integration tests through meson test}"
CLIENT=${P11MK_ROT_CLIENT:?}

init_token damage
"$CLIENT" "$MOD" damage $PIN fill 200 >/dev/null
expect_rc 0 "$ADMIN" rotate --quiet
expect_rc 0 "$ADMIN" backup "$T/good.bak"
size=$(stat -c %s "$T/good.bak")
before=$("$ADMIN" status --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["epoch"], d["objects"])')

check_refused() { # FILE WHAT
    set +e; timeout 20 "$ADMIN" restore "$1" --yes >"$T/out" 2>&1; local rc=$?; set -e
    [ $rc -ne 124 ] || fail "restore of $2 hung"
    [ $rc -ne 0 ] && [ $rc -lt 128 ] || { cat "$T/out"; fail "restore of $2 exited $rc (0 or a signal)"; }
    grep -q "error:" "$T/out" || { cat "$T/out"; fail "restore of $2 gave no error message"; }
    [ ! -e "$KS/restore.tmp" ] || fail "restore of $2 left $KS/restore.tmp behind"
}
n=0
for cut in 0 1 15 16 100 512 4095 4096 4097 8191 8192 8193 12288 $((size / 2)) $((size - 4096)) $((size - 1)); do
    [ "$cut" -lt "$size" ] || continue
    head -c "$cut" "$T/good.bak" > "$T/cut.bak"
    check_refused "$T/cut.bak" "a backup cut at $cut of $size bytes"
    n=$((n + 1))
done
grep -q "truncated\|not a p11mk backup" "$T/out" || { cat "$T/out"; fail "a truncated backup is not called truncated"; }
# A flipped byte in a record: found by the verification before the swap.
cp "$T/good.bak" "$T/flip.bak"
off=$((size - 3000))
printf '\xff' | dd of="$T/flip.bak" bs=1 seek=$off conv=notrunc 2>/dev/null
set +e; "$ADMIN" restore "$T/flip.bak" --yes >"$T/out" 2>&1; rc=$?; set -e
if [ $rc -eq 0 ]; then
    # The byte may have landed in free space: then the copy is intact, and verify must say so.
    expect_rc 0 "$ADMIN" verify
else
    [ $rc -lt 128 ] || fail "restore of a flipped byte died from a signal"
    [ ! -e "$KS/restore.tmp" ] || fail "a failed restore left restore.tmp"
fi
head -c 100000 /dev/urandom > "$T/noise.bak"
check_refused "$T/noise.bak" "random bytes"
: > "$T/empty.bak"
check_refused "$T/empty.bak" "an empty file"
mkfifo "$T/fifo.bak"
check_refused "$T/fifo.bak" "a FIFO"
check_refused "$T/missing.bak" "a file that does not exist"
after=$("$ADMIN" status --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["epoch"], d["objects"])')
[ "$rc" -eq 0 ] || [ "$before" = "$after" ] || fail "a refused restore changed the keystore ($before -> $after)"
expect_rc 0 "$ADMIN" verify
"$CLIENT" "$MOD" damage $PIN check 200 >/dev/null || fail "objects lost"
# And the good copy still restores.
expect_rc 0 "$ADMIN" restore "$T/good.bak" --yes
expect_rc 0 "$ADMIN" verify
ok "$n truncated backups, random bytes, an empty file, a FIFO, a missing file: refused cleanly, nothing changed, no scratch left"

# A copy with bytes changed in its records: the message names the copy as
# damaged and the keystore as unchanged (it pointed the admin at verify,
# which finds the keystore sound: a hostile tester).
named=0
for off in 8300 $((size / 3)) $((size / 2)) $((size - 5000)); do
    cp "$T/good.bak" "$T/dmg.bak"
    printf '\xff\x00\x5a' | dd of="$T/dmg.bak" bs=1 seek=$off conv=notrunc 2>/dev/null
    set +e; "$ADMIN" restore "$T/dmg.bak" --yes >"$T/out" 2>&1; rc=$?; set -e
    [ $rc -lt 128 ] || fail "restore of a copy changed at $off died from a signal"
    [ $rc -ne 0 ] || { expect_rc 0 "$ADMIN" verify; continue; } # in a page's free space
    grep -q "dmg.bak is damaged or altered" "$T/out" && grep -q "the keystore is unchanged" "$T/out" ||
        { cat "$T/out"; fail "a damaged copy (changed at $off) is not named as the damaged one"; }
    ! grep -q "check it with" "$T/out" || { cat "$T/out"; fail "a damaged copy's message sends the admin to verify"; }
    named=$((named + 1))
done
[ $named -gt 0 ] || fail "no change in the copy was found damaged"
expect_rc 0 "$ADMIN" verify

# A page's header changed in the copy (its page number): the message says
# which page and what, not that a record failed its authentication (it said
# so, after a log line naming the scratch directory, when the copy's pages
# or LMDB itself found the damage).
pages=0 named_page=0
for p in 2 3 $((size / 8192)) $((size / 4096 - 2)); do
    cp "$T/good.bak" "$T/pg.bak"
    printf '\x77\x77\x77' | dd of="$T/pg.bak" bs=1 seek=$((p * 4096)) conv=notrunc 2>/dev/null
    set +e; "$ADMIN" restore "$T/pg.bak" --yes >"$T/out" 2>&1; rc=$?; set -e
    [ $rc -lt 128 ] || fail "restore of a copy with page $p's header changed died from a signal"
    [ $rc -ne 0 ] || { expect_rc 0 "$ADMIN" verify; continue; } # a free page
    # Found by the pages' checks (most) or by verify's walk of the records.
    grep -Eq "pg.bak is damaged or altered \((its page $p holds a page whose header names another page|[0-9]+ of its [0-9]+ records)" "$T/out" ||
        { cat "$T/out"; fail "a copy with page $p's header changed: the message does not say what"; }
    grep -q "its page $p holds" "$T/out" && named_page=1
    [ "$(grep -c error: "$T/out")" -eq 1 ] || { cat "$T/out"; fail "a damaged copy: more than one error line"; }
    ! grep -q "restore.tmp" "$T/out" || { cat "$T/out"; fail "a damaged copy's messages name the scratch directory"; }
    pages=$((pages + 1))
done
[ $named_page -eq 1 ] || fail "no page header change in the copy was named by its page"
# A page's flags changed (the kind of page): every page of the copy is
# checked before anything is done with it, so the message names the page
# (it said "input/output error" or "a record failed authentication", after
# info lines about resealing the scratch copy: a hostile tester).
for p in 3 $((size / 8192)); do
    for fl in '\xff\xff' '\x01\x00' '\x00\x00'; do
        cp "$T/good.bak" "$T/fl.bak"
        printf "$fl" | dd of="$T/fl.bak" bs=1 seek=$((p * 4096 + 10)) conv=notrunc 2>/dev/null
        set +e; "$ADMIN" restore "$T/fl.bak" --yes >"$T/out" 2>&1; rc=$?; set -e
        [ $rc -ne 0 ] || { expect_rc 0 "$ADMIN" verify; continue; } # a free page
        [ $rc -eq 1 ] || { cat "$T/out"; fail "a copy with page $p's flags changed: exit $rc, not 1"; }
        grep -q "fl.bak is damaged or altered (its page $p holds .*); nothing was restored" "$T/out" &&
            [ "$(grep -c p11mk-admin: "$T/out")" -eq 1 ] ||
            { cat "$T/out"; fail "a copy with page $p's flags changed: not one line naming the page"; }
    done
done
# Not an LMDB file of this format (its version field changed): not a usable
# copy, and no advice about the directory's permissions.
cp "$T/good.bak" "$T/ver.bak"
printf '\x09' | dd of="$T/ver.bak" bs=1 seek=20 conv=notrunc 2>/dev/null
check_refused "$T/ver.bak" "a copy of another LMDB version"
grep -q "ver.bak is not a usable keystore copy" "$T/out" && ! grep -q "may read and write" "$T/out" ||
    { cat "$T/out"; fail "a copy of another LMDB version: wrong message"; }
expect_rc 0 "$ADMIN" verify
ok "a copy with a page's header changed names the page ($pages pages); one of another LMDB version is not usable"

# A restore where no keystore is yet (a new host, a new place): the
# directory is made (0700), the copy goes in.
key=$(sed -n 's/^master_key *= *//p' "$CONF")
[ -n "$key" ] || fail "no key file in $CONF after a rotation"
mkdir -p "$T/newhost"
cp "$key" "$T/newhost/master.key"
printf 'keystore = %s/newhost/ks\nmaster_key = %s/newhost/master.key\nlog = %s/p11mk.log\n' "$T" "$T" "$T" > "$T/newhost/p11mk.conf"
P11MK_CONF=$T/newhost/p11mk.conf expect_rc 0 "$ADMIN" restore "$T/good.bak" --yes
[ "$(stat -c %a "$T/newhost/ks")" = 700 ] || fail "the new keystore directory is not 0700"
P11MK_CONF=$T/newhost/p11mk.conf expect_rc 0 "$ADMIN" verify
# A failed restore there leaves no directory behind; a dangling link or a
# file where the directory belongs is refused before anything is made.
sed -i "s|^keystore = .*|keystore = $T/newhost/ks2|" "$T/newhost/p11mk.conf"
P11MK_CONF=$T/newhost/p11mk.conf expect_rc 1 "$ADMIN" restore "$T/noise.bak" --yes
[ ! -e "$T/newhost/ks2" ] || fail "a failed restore left the directory it made: $(ls -A "$T/newhost/ks2")"
ln -s "$T/newhost/nowhere" "$T/newhost/ks2"
P11MK_CONF=$T/newhost/p11mk.conf expect_rc 1 "$ADMIN" restore "$T/good.bak" --yes
expect_out "symbolic link to nothing"
[ ! -e "$T/newhost/nowhere" ] || fail "a restore followed a dangling link"
rm "$T/newhost/ks2"
: > "$T/newhost/ks2"
P11MK_CONF=$T/newhost/p11mk.conf expect_rc 1 "$ADMIN" restore "$T/good.bak" --yes
expect_out "not a directory"
ok "a damaged copy is named ($named of 4 changes found), the keystore said unchanged; a restore into a new directory makes it"
