#!/usr/bin/env bash
# Damage is reported, never acted on (a hostile review, 2026-12-02): on a
# keystore whose data.mdb has a damaged page, rotate refused nothing and
# staged a key that neither rewrap nor abort could then finish; backup of a
# keystore with a record that fails authentication wrote a copy that restore
# refuses, and called it written. Now both refuse with exit 5 (a damaged
# keystore), stage nothing and write nothing, and the keystore restores from
# a good backup. The damage is found by trying bytes until verify reports
# the kind wanted.
. "${P11MK_TESTLIB:?run the integration tests through meson test}"
CLIENT=${P11MK_ROT_CLIENT:?}

init_token dmg
"$CLIENT" "$MOD" dmg $PIN fill 3 >/dev/null
expect_rc 0 "$ADMIN" backup "$T/good.bak"
cp "$KS/data.mdb" "$T/orig.mdb"
size=$(stat -c %s "$KS/data.mdb")

# damage KIND MASK OFFSETS...: flip MASK at the first offset that makes
# verify exit 5 with a message matching KIND; the offset is printed.
damage() {
    local kind=$1 mask=$2 off; shift 2
    for off in "$@"; do
        cp "$T/orig.mdb" "$KS/data.mdb"
        python3 - "$KS/data.mdb" "$off" "$mask" <<'PY'
import sys
f, o, m = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(f, "r+b") as fh:
    fh.seek(o); b = fh.read(1); fh.seek(o); fh.write(bytes([b[0] ^ m]))
PY
        set +e; "$ADMIN" verify >"$T/v" 2>&1; local rc=$?; set -e
        if [ $rc -eq 5 ] && grep -Eq -- "$kind" "$T/v"; then echo "$off"; return 0; fi
    done
    return 1
}
pages=$((size / 4096))
record_offs=$(for p in $(seq 2 $((pages - 1))); do for k in 4000 3500 3073 2500; do echo $((p * 4096 + k)); done; done)
header_offs=$(for p in $(seq 2 $((pages - 1))); do for k in 12 14 16 18 20 22 24; do echo $((p * 4096 + k)); done; done)

# A record that fails authentication: backup refuses, writes nothing.
# shellcheck disable=SC2086
off=$(damage 'altered or damaged' 4 $record_offs) || fail "no byte makes a record fail authentication"
grep -q 'page' "$T/v" && fail "the record damage at $off is also page damage (the test wants records only)"
expect_rc 5 "$ADMIN" backup "$T/bad.bak"
expect_out 'is damaged .*no backup was written'
[ ! -e "$T/bad.bak" ] || fail "a refused backup left $T/bad.bak"
ok "backup of a keystore with a damaged record (byte $off): exit 5, no file"

# A damaged page: rotate and stage refuse before anything is staged; backup
# says the keystore is damaged (exit 5), not that the copy could not be written.
# shellcheck disable=SC2086
off=$(damage 'data.mdb is damaged' 64 $header_offs) || fail "no byte damages a page header"
expect_rc 5 "$ADMIN" rotate
expect_out 'is damaged .*nothing was staged'
"$ADMIN" status > "$T/st" 2>&1 || true
grep -Eq '^Rotation: +idle' "$T/st" || { cat "$T/st"; fail "a refused rotate left a rotation under way"; }
expect_rc 5 "$ADMIN" backup "$T/bad2.bak"
expect_out 'damaged'
[ ! -e "$T/bad2.bak" ] || fail "a refused backup left $T/bad2.bak"
ok "rotate and backup on a damaged page (byte $off): exit 5, nothing staged or written"

expect_rc 0 "$ADMIN" restore "$T/good.bak" --yes
expect_rc 0 "$ADMIN" verify
"$CLIENT" "$MOD" dmg $PIN check 3 >/dev/null || fail "objects lost"
expect_rc 0 "$ADMIN" rotate --quiet
ok "restored from the good backup, verified, rotated"

# The key file put back from a copy taken before a stage: every record
# opens, but writes are sealed under the staged key it lacks, so no login
# succeeds. verify said "Verified" and exited 0; now it names the missing
# key and exits 4 (a key problem), and abort withdraws the stage.
keyfile=$T/master.key
[ -f "$keyfile" ] || fail "no key file at $keyfile after a rotation"
cp -p "$keyfile" "$T/key.copy"
expect_rc 0 "$ADMIN" stage --generate
cp -p "$T/key.copy" "$keyfile"
expect_rc 4 "$ADMIN" verify
expect_out 'staged master key of epoch [0-9]+ .*is not in the key file'
expect_rc 0 "$ADMIN" backup "$T/k.bak" # the keystore is intact: its copy is a backup
expect_rc 0 "$ADMIN" abort --yes
expect_rc 0 "$ADMIN" verify
"$CLIENT" "$MOD" dmg $PIN check 3 >/dev/null || fail "objects lost after the abort"
ok "a key file without the staged key: verify exits 4 and names it, backup still writes the intact keystore, abort withdraws the stage"
