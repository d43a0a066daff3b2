#!/usr/bin/env bash
# PINs that protect: ten wrong PINs lock a PIN however the attempts come
# (40 processes or 40 threads at once, user or SO PIN), an SO who re-sets a
# locked user PIN keeps the private objects usable, a login killed at the
# keystore's first write tells nothing about the PIN and does not escape the
# count, and bad PIN arguments are refused without using a try.
#
# Each part runs in its own temporary keystore: with no argument every part
# runs and the test fails if any part failed; `test_pin_lockout.sh PART` runs
# one (procs, threads, so, killwatch, badargs, initrace, samelogin). A part
# reports every check that fails, not only the first.
parts=(procs threads so killwatch badargs initrace samelogin)
# P11MK_PIN_LOCKOUT_PARTS="a b ...": only these parts (run-tests' postgresql and
# ThreadSanitizer phases).
[ -z "${P11MK_PIN_LOCKOUT_PARTS:-}" ] || read -r -a parts <<<"$P11MK_PIN_LOCKOUT_PARTS"
if [ $# -eq 0 ]; then
    : "${P11MK_TESTLIB:?run the integration tests through meson test}"
    failed=() skipped=0
    for part in "${parts[@]}"; do
        echo "=== $part"
        bash "$0" "$part"
        rc=$?
        case $rc in
        0) ;;
        77) skipped=$((skipped + 1)) ;;
        *) failed+=("$part") ;;
        esac
    done
    [ ${#failed[@]} -eq 0 ] || { echo "FAIL: parts that failed: ${failed[*]}" >&2; exit 1; }
    [ "$skipped" -lt ${#parts[@]} ] || exit 77
    exit 0
fi

. "${P11MK_TESTLIB:?run the integration tests through meson test}"
need pkcs11-tool
need openssl
RACE=${P11MK_PIN_RACE:?P11MK_PIN_RACE must name the built pin_race}
TRIES=10            # wrong PINs before a PIN locks
NEWPIN=user-pin-new # the user PIN the SO sets after the lock-out

race() { "$RACE" "$MOD" "$@"; }
bad=0
# check_fail MSG: report a failed check and go on with the part.
check_fail() { echo "FAIL: $*" >&2; bad=1; }
finish() { [ "$bad" -eq 0 ] || exit 1; }
# count NAME TALLY: how many answers NAME a pin_race tally line has.
count() { local v; v=$(tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p"); echo "${v:-0}"; }
# flags LABEL: the token's PIN flags ("none" or names like USER_PIN_LOCKED).
flags() { race "$1" tokinfo | sed -n 's/^flags: //p'; }

# make_private_objects LABEL: with the user PIN, a private extractable AES
# key of known value (id 10) and a private EC key (id 11), and what they must
# give later: the AES encryption of a known block, the EC public key.
make_private_objects() {
    local U=(--token-label "$1" --login --pin "$PIN")
    head -c 32 /dev/urandom > aes.key
    head -c 64 /dev/zero | tr '\0' 'B' > block
    openssl enc -aes-256-ecb -K "$(od -An -tx1 -v aes.key | tr -d ' \n')" -nopad -in block -out block.want
    p11 "${U[@]}" --write-object aes.key --type secrkey --key-type AES:32 --label aesk --id 10 \
        --private --extractable --usage-decrypt >/dev/null 2>&1 || fail "cannot store the private AES key"
    p11 "${U[@]}" --keypairgen --key-type EC:prime256v1 --label eck --id 11 --usage-sign >/dev/null 2>&1 ||
        fail "cannot generate the private EC key"
    "$ADMIN" list > list.txt
    grep -E 'label=aesk .*private' list.txt >/dev/null || fail "the AES key is not private: $(cat list.txt)"
    grep -E '^ *private .*label=eck .*private' list.txt >/dev/null || fail "the EC key is not private: $(cat list.txt)"
    pubkey_der "$1" 11 ec.der
    openssl pkey -pubin -inform DER -in ec.der -out ec.pem || fail "no EC public key"
    check_private_objects "$1" "$PIN" || fail "the private objects do not work before the lock-out"
}

# check_private_objects LABEL PIN: the AES key reads back its value and
# encrypts as before, the EC key signs for its public key. Status 1 (after
# reporting) if not.
check_private_objects() {
    local U=(--token-label "$1" --login --pin "$2") rc=0
    rm -f aes.got block.got sig
    p11 "${U[@]}" --read-object --type secrkey --id 10 -o aes.got >/dev/null 2>&1
    cmp -s aes.got aes.key || { check_fail "the private AES key does not read back its value with PIN $2"; rc=1; }
    p11 "${U[@]}" --encrypt -m AES-ECB --id 10 -i block -o block.got >/dev/null 2>&1
    cmp -s block.got block.want || { check_fail "the private AES key does not encrypt as before with PIN $2"; rc=1; }
    echo "a message for eck" > msg
    if ! p11 "${U[@]}" --sign -m ECDSA-SHA256 --id 11 --signature-format openssl -i msg -o sig >/dev/null 2>&1 ||
        ! openssl dgst -sha256 -verify ec.pem -signature sig msg >/dev/null 2>&1; then
        check_fail "the private EC key does not sign (verifiably) with PIN $2"
        rc=1
    fi
    return $rc
}

# lockout_race LABEL WHO MODE: 40 processes or threads with distinct wrong
# PINs at once: at most TRIES of them hear CKR_PIN_INCORRECT, every other
# CKR_PIN_LOCKED; the PIN is flagged locked and the right PIN is refused.
lockout_race() {
    local label=$1 who=$2 mode=$3 right out inc locked flag
    if [ "$who" = so ]; then right=$SO flag=SO_PIN_LOCKED; else right=$PIN flag=USER_PIN_LOCKED; fi
    out=$(race "$label" "$mode" 40 "$who" "wrong-$who-pin-{i}") || fail "pin_race $mode failed"
    echo "40 $mode, wrong $who PINs at once: $out"
    inc=$(count CKR_PIN_INCORRECT "$out")
    locked=$(count CKR_PIN_LOCKED "$out")
    [ "$inc" -le "$TRIES" ] ||
        check_fail "$inc wrong $who PINs were answered CKR_PIN_INCORRECT: the lock-out allows $TRIES"
    [ $((inc + locked)) -eq 40 ] || check_fail "answers other than CKR_PIN_INCORRECT / CKR_PIN_LOCKED: $out"
    local f
    f=$(flags "$label")
    echo "token flags after the race: $f"
    grep -qw "$flag" <<<"$f" || check_fail "the token does not show $flag"
    out=$(race "$label" login "$who" "$right")
    echo "then the right $who PIN: $out"
    [ "$out" = CKR_PIN_LOCKED ] || check_fail "the right $who PIN after the lock-out gave $out, not CKR_PIN_LOCKED"
}

# so_reset LABEL: the SO re-sets the locked user PIN to NEWPIN; the private
# objects made before the lock-out work with it.
so_reset() {
    p11 --token-label "$1" --login --login-type so --so-pin "$SO" --init-pin --new-pin "$NEWPIN" >/dev/null 2>&1 ||
        { check_fail "the SO cannot re-set the user PIN"; return; }
    local f
    f=$(flags "$1")
    echo "token flags after the SO re-set the user PIN: $f"
    if grep -q USER_PIN <<<"$f"; then check_fail "user PIN flags remain after the SO re-set it: $f"; fi
    if check_private_objects "$1" "$NEWPIN"; then
        ok "the SO re-set the user PIN: the private AES and EC keys work with the new PIN"
    fi
}

# 8 processes initialize the free slot at once, each with its own SO PIN:
# exactly one succeeds and its SO PIN is the token's (the others were told
# no: another process was first, or their PIN is not the new token's).
part_initrace() {
    local out okc
    out=$(race raced initrace 8 "so-pin-race-{i}") || fail "pin_race initrace failed"
    echo "8 processes, C_InitToken on the free slot at once: $out"
    okc=$(count CKR_OK "$out")
    [ "$okc" -eq 1 ] || check_fail "$okc processes were told their C_InitToken succeeded, not 1"
    local good=0
    for i in $(seq 0 7); do
        [ "$(race raced login so "so-pin-race-$i")" = CKR_OK ] && good=$((good + 1))
    done
    [ "$good" -eq 1 ] || check_fail "$good of the 8 SO PINs open the token, not 1"
    finish
    ok "concurrent C_InitToken: one winner, whose SO PIN is the token's"
}

# 8 threads of one process log in as user with the right PIN at once: one
# CKR_OK, the others CKR_USER_ALREADY_LOGGED_IN (not ANOTHER_...).
part_samelogin() {
    init_token same
    local out
    out=$(race same threads 8 user "$PIN") || fail "pin_race threads failed"
    echo "8 threads, the right user PIN at once: $out"
    [ "$(count CKR_OK "$out")" -eq 1 ] && [ "$(count CKR_USER_ALREADY_LOGGED_IN "$out")" -eq 7 ] ||
        check_fail "expected CKR_OK=1 CKR_USER_ALREADY_LOGGED_IN=7, got $out"
    finish
    ok "concurrent logins of one user: one CKR_OK, CKR_USER_ALREADY_LOGGED_IN for the rest"
}

part_procs() {
    init_token lockp
    make_private_objects lockp
    lockout_race lockp user procs
    so_reset lockp
}

part_threads() {
    init_token lockt
    make_private_objects lockt
    lockout_race lockt user threads
    so_reset lockt
}

part_so() {
    init_token locks
    lockout_race locks so procs
    local out
    out=$(race locks login user "$PIN")
    [ "$out" = CKR_OK ] || check_fail "the user PIN after the SO PIN locked gave $out, not CKR_OK"
}

# kill-at-first-write: a login whose process is killed when the keystore is
# first written. Whether a write starts before the answer must not depend on
# whether the PIN is right (it did: only a wrong PIN was written, after the
# check, so killing there told the PIN wrong and kept the try uncounted).
part_killwatch() {
    # It watches data.mdb with inotify for the keystore's first write.
    [ -z "$PG_DB" ] || skip "killwatch: it watches LMDB's data.mdb for the first write; the keystore is in PostgreSQL"
    init_token kw
    local data=$KS/data.mdb rounds=20 block=5 out yes_right=0 yes_wrong=0 seen=() inc=0 i
    [ -f "$data" ] || fail "no keystore file $data"
    # A killed login may have used a try: a right login (which clears the
    # count) every $block rounds keeps the PIN from locking during the rounds.
    reset_count() {
        local r
        r=$(race kw login user "$PIN")
        [ "$r" = CKR_OK ] || check_fail "the right user PIN between killed logins gave $r, not CKR_OK"
    }
    for i in $(seq 1 $rounds); do
        out=$(race kw killwatch user "$PIN" "$data") || fail "pin_race killwatch failed"
        seen+=("right: $out")
        if [[ $out == write_before_answer=yes* ]]; then yes_right=$((yes_right + 1)); fi
        if [ $((i % block)) -eq 0 ]; then reset_count; fi
    done
    for i in $(seq 1 $rounds); do
        out=$(race kw killwatch user "wrong-kw-$i" "$data") || fail "pin_race killwatch failed"
        seen+=("wrong: $out")
        if [[ $out == write_before_answer=yes* ]]; then yes_wrong=$((yes_wrong + 1)); fi
        # The last block is not followed by a reset: its answers count below.
        if [ "$i" -gt $((rounds - block)) ]; then
            if [[ $out == *answer=CKR_PIN_INCORRECT* ]]; then inc=$((inc + 1)); fi
        elif [ $((i % block)) -eq 0 ]; then
            reset_count
        fi
    done
    printf '%s\n' "${seen[@]}" | sort | uniq -c | sed 's/^ */  /'
    echo "right PIN: a keystore write started before the answer in $yes_right of $rounds logins;" \
        "wrong PIN: in $yes_wrong of $rounds"
    if [ "$yes_right" -ne "$yes_wrong" ] || { [ "$yes_right" -ne 0 ] && [ "$yes_right" -ne $rounds ]; }; then
        check_fail "whether the keystore is written before the answer depends on the PIN"
    else
        ok "a keystore write before the answer does not depend on the PIN ($yes_right of $rounds either way)"
    fi

    # The count is never bypassed: since the last right login, the wrong PINs
    # answered CKR_PIN_INCORRECT (killed logins included) are at most TRIES
    # before the right PIN meets CKR_PIN_LOCKED.
    echo "token flags after the last $block killed wrong logins: $(flags kw)"
    local n=0
    while [ "$n" -lt $((TRIES + 2)) ] && [ "$inc" -le "$TRIES" ]; do
        n=$((n + 1))
        out=$(race kw login user "wrong-after-$n")
        case $out in
        CKR_PIN_INCORRECT) inc=$((inc + 1)) ;;
        CKR_PIN_LOCKED) break ;;
        *) check_fail "a wrong user PIN gave $out"; break ;;
        esac
    done
    out=$(race kw login user "$PIN")
    echo "since the last right login: $block killed wrong logins and $n more wrong logins;" \
        "$inc wrong PINs answered CKR_PIN_INCORRECT, then the right PIN: $out"
    [ "$inc" -le "$TRIES" ] || check_fail "$inc wrong PINs answered CKR_PIN_INCORRECT before the lock: more than $TRIES"
    [ "$out" = CKR_PIN_LOCKED ] || check_fail "the right user PIN gave $out, not CKR_PIN_LOCKED"
    if [ "$bad" -eq 0 ]; then ok "killed logins: at most $TRIES wrong PINs answered before the lock"; fi
}

part_badargs() {
    init_token ba
    local out rc=0
    local watched=$KS/data.mdb
    if [ -n "$PG_DB" ]; then   # no file to watch: the answers, the flags and the tries are still checked
        echo "SKIP: badargs: 'no keystore write' watches LMDB's data.mdb; the keystore is in PostgreSQL"
        watched=$T/not-written; : > "$watched"
    fi
    out=$(race ba badargs "$watched") || rc=$?
    echo "$out"
    [ "$rc" -le 1 ] || fail "pin_race badargs failed"
    [ "$rc" -eq 0 ] || check_fail "a NULL PIN or a PIN of a bad length: not the right answer, or a try used"
    out=$(flags ba)
    [ "$out" = none ] || check_fail "PIN flags after the bad arguments: $out"
    out=$(race ba login user "$PIN")
    [ "$out" = CKR_OK ] || check_fail "the right user PIN after the bad arguments gave $out"
    out=$(race ba login so "$SO")
    [ "$out" = CKR_OK ] || check_fail "the right SO PIN after the bad arguments gave $out"
    if [ "$bad" -eq 0 ]; then
        ok "NULL and bad-length PINs: CKR_ARGUMENTS_BAD / CKR_PIN_LEN_RANGE, no keystore write, no try used"
    fi
}

case $1 in
procs | threads | so | killwatch | badargs | initrace | samelogin) "part_$1" ;;
*) fail "unknown part $1 (one of: ${parts[*]})" ;;
esac
finish
ok "$1"
