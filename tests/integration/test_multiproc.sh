#!/usr/bin/env bash
# Several processes on one keystore: concurrent writers, a reader seeing the
# others' objects, a child that re-initializes the module after fork, and
# threads (pkcs11-tool --test-fork / --test-threads).
. "${P11MK_TESTLIB:?run the integration tests through meson test}"
need pkcs11-tool

init_token shared
P=(--token-label shared --login --pin $PIN)

# Four writer processes at once, five keys each.
pids=()
for w in 1 2 3 4; do
    ( for i in 1 2 3 4 5; do
          p11 "${P[@]}" --keygen --key-type AES:16 --label "w$w-k$i" --id "$(printf '%02x%02x' $w $i)" >/dev/null
      done ) &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || fail "a writer process failed"; done
p11 "${P[@]}" -O > objs.txt
n=$(grep -c '^Secret Key Object' objs.txt)
[ "$n" -eq 20 ] || fail "expected 20 keys from 4 concurrent writers, a reader sees $n"
ok "4 concurrent writer processes, 20 objects visible to a reader"

# Concurrent readers and a writer: signing keeps working while keys are added.
p11 "${P[@]}" --keypairgen --key-type EC:prime256v1 --label signer --id 99 >/dev/null
echo data > msg
( for i in $(seq 1 5); do p11 "${P[@]}" --keygen --key-type AES:16 --label "late$i" >/dev/null; done ) &
wpid=$!
for i in $(seq 1 10); do
    p11 "${P[@]}" --sign -m ECDSA-SHA256 --id 99 -i msg -o sig >/dev/null || fail "sign during concurrent writes"
done
wait $wpid || fail "writer failed"
ok "signing during concurrent writes"

# Fork: a child that calls C_Initialize again works (OpenSC's own test).
expect_rc 0 p11 --token-label shared --test-fork
ok "pkcs11-tool --test-fork"

# Threads: OpenSC starts threads calling C_GetInfo / C_GetSlotList / sessions concurrently.
expect_rc 0 p11 --token-label shared --login --pin $PIN --test-threads IN --test-threads GI --test-threads SL \
    --test-threads IN --test-threads GI --test-threads SL
ok "pkcs11-tool --test-threads"

# One process relabels objects while another destroys them: each update
# removes the index entries of the object as it is in its own transaction,
# not as it was read before (a relabel committed in between left its entry
# naming a destroyed object: verify exit 5; a hostile tester, 3 of 3 runs).
RC=${P11MK_ROT_CLIENT:?}
init_token race
expect_rc 0 "$RC" "$MOD" race "$PIN" fill 100
"$RC" "$MOD" race "$PIN" relabel 8 > relabel.out 2>&1 & rpid=$!
expect_rc 0 "$RC" "$MOD" race "$PIN" destroy -
wait $rpid || { cat relabel.out; fail "relabel beside destroy failed"; }
expect_rc 0 "$ADMIN" verify
ok "relabel and destroy of the same objects by two processes: the index agrees (verify)"
