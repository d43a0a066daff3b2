#!/usr/bin/env bash
# Restore against applications that are starting: in every round a client
# starts (C_Initialize, login, one C_CreateObject) while 'restore' runs. A
# restore may only swap data.mdb while no process has the keystore open, and
# an opener takes its share of that lock before it opens the file: so no
# client may ever be told CKR_OK for a write into a keystore file that has
# already been replaced (rot_client 'once' looks at the file it wrote to).
. "${P11MK_TESTLIB:?run the integration tests through meson test}"
CLIENT=${P11MK_ROT_CLIENT:?}
rounds=${P11MK_RESTORE_ROUNDS:-150}

init_token race
"$CLIENT" "$MOD" race $PIN fill 20 >/dev/null
expect_rc 0 "$ADMIN" rotate --quiet
expect_rc 0 "$ADMIN" backup "$T/race.bak"
restored=0 refused=0 created=0
for i in $(seq 1 "$rounds"); do
    # Who goes first, and by how much (0-200 ms), changes every round: the
    # client starting while restore works, restore starting while the client
    # opens or writes, or the client already gone.
    delay="0.$(printf '%03d' $((RANDOM % 200)))"
    if [ $((i % 2)) -eq 0 ]; then
        "$CLIENT" "$MOD" race $PIN once "round-$i" > "$T/client.out" 2>&1 &
        cpid=$!
        sleep "$delay"
        set +e; "$ADMIN" restore "$T/race.bak" --yes --wait 0 >"$T/out" 2>&1; rc=$?; set -e
    else
        "$ADMIN" restore "$T/race.bak" --yes --wait 0 >"$T/out" 2>&1 &
        rpid=$!
        sleep "$delay"
        "$CLIENT" "$MOD" race $PIN once "round-$i" > "$T/client.out" 2>&1 &
        cpid=$!
        set +e; wait $rpid; rc=$?; set -e
    fi
    set +e; wait $cpid; crc=$?; set -e
    [ $crc -ne 3 ] || { cat "$T/client.out"; fail "round $i: a write was acknowledged into a keystore file restore had replaced"; }
    case $rc in
        0) restored=$((restored + 1)) ;;
        6) refused=$((refused + 1)) ;;
        *) cat "$T/out"; fail "round $i: restore exited $rc" ;;
    esac
    [ $crc -eq 0 ] && created=$((created + 1))
done
expect_rc 0 "$ADMIN" verify
[ "$restored" -gt 0 ] || fail "no restore ever ran between the clients: the test proved nothing"
[ "$created" -gt 0 ] || fail "no client ever wrote: the test proved nothing"
ok "$rounds rounds: $restored restores swapped in, $refused refused while in use, $created acknowledged writes, none into a replaced file"
