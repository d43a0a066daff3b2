#!/usr/bin/env bash
# Crash safety: kill -9 'rewrap', 'commit' and 'abort' at random moments, many times,
# then run the step again. The module always opens the keystore, no object is
# lost or unreadable, 'verify' passes. P11MK_STRESS=N raises the number of
# kills (the default keeps the test command fast).
. "${P11MK_TESTLIB:?run the integration tests through meson test}"
CLIENT=${P11MK_ROT_CLIENT:?}
rounds=${P11MK_STRESS:-30}

init_token crash
"$CLIENT" "$MOD" crash $PIN fill 1500 >/dev/null
state() { "$ADMIN" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["rotation"]["state"])'; }
kills=0
for i in $(seq 1 "$rounds"); do
    case $(state) in
        idle) expect_rc 0 "$ADMIN" stage ;;
        "ready to commit")
            # kill -9 the commit too: either it happened or it did not; the
            # next commit completes it or repairs the key file.
            "$ADMIN" commit >/dev/null 2>&1 &
            cpid=$!
            sleep "0.00$((RANDOM % 10))"
            kill -9 $cpid 2>/dev/null && kills=$((kills + 1))
            wait $cpid 2>/dev/null || true
            set +e; "$ADMIN" commit >"$T/out" 2>&1; rc=$?; set -e
            [ $rc -eq 0 ] || { [ $rc -eq 6 ] && grep -q "nothing to commit" "$T/out"; } || { cat "$T/out"; fail "commit did not complete"; }
            "$CLIENT" "$MOD" crash $PIN check 1500 >/dev/null || fail "objects unreadable after killing commit"
            expect_rc 0 "$ADMIN" stage ;;
    esac
    if [ $((i % 5)) -eq 0 ]; then step=abort; else step=rewrap; fi
    "$ADMIN" "$step" --quiet --batch 20 >/dev/null 2>&1 &
    pid=$!
    sleep "0.0$((RANDOM % 9))$((RANDOM % 10))"
    kill -9 $pid 2>/dev/null && kills=$((kills + 1))
    wait $pid 2>/dev/null || true
    # The module opens the keystore at every point, and sees every object.
    "$CLIENT" "$MOD" crash $PIN check 1500 >/dev/null || fail "objects unreadable after killing $step (round $i)"
    if [ "$step" = abort ]; then
        # Finish the abort (exit 6 if the killed run had already finished it).
        set +e; "$ADMIN" abort --quiet >"$T/out" 2>&1; rc=$?; set -e
        [ $rc -eq 0 ] || { [ $rc -eq 6 ] && grep -q "nothing to abort" "$T/out"; } || { cat "$T/out"; fail "abort did not resume"; }
    fi
done
[ "$(state)" = idle ] && expect_rc 0 "$ADMIN" stage
expect_rc 0 "$ADMIN" rewrap --quiet
expect_rc 0 "$ADMIN" commit
expect_rc 0 "$ADMIN" verify
"$CLIENT" "$MOD" crash $PIN check 1500 || fail "objects lost"
# A commit killed between the keystore and the key file update is repaired.
expect_rc 0 "$ADMIN" stage
expect_rc 0 "$ADMIN" rewrap --quiet
keyfile=$(sed -n 's/^master_key = //p' "$CONF")
cp "$keyfile" "$T/before-commit.key"
expect_rc 0 "$ADMIN" commit
cp "$T/before-commit.key" "$keyfile"     # as if the key file update never happened
"$CLIENT" "$MOD" crash $PIN check 1500 >/dev/null || fail "keystore unusable with lagging registers"
expect_rc 0 "$ADMIN" commit
expect_out "Repaired the key file"
expect_rc 0 "$ADMIN" verify
ok "$rounds rounds ($kills kill -9 landed during rewrap/abort/commit): nothing lost, verify passes"
