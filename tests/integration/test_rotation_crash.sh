#!/usr/bin/env bash
# Crash safety: kill -9 'rewrap', 'commit' and 'abort' at random moments, many times,
# then run the step again. The module always opens the keystore, no object is
# lost or unreadable, 'status' and 'verify' pass after every kill. P11MK_STRESS=N
# (or P11MK_ROTATION_CRASH_ROUNDS=N, which only this test reads) sets the
# number of rounds (default 30: the test command's);
# P11MK_VERBOSE=1 prints every round.
#
# A killed command must have died by the SIGKILL (exit 137) or, when the kill
# came too late, have finished (exit 0): anything else (another exit status, a
# crash, a sanitizer report) fails the test with its output.
#
# rewrap and abort run with a small --batch, so that a pass is hundreds of
# write transactions (one per batch). The kill waits for a random number of
# them (the keystore's last transaction ID, read with mdb_stat; PostgreSQL:
# its commit sequence, read with psql), up to an eighth more than the pass
# has left, so that the kill falls at a random point
# of the pass however fast the machine is at that moment, and some passes
# finish (and a commit follows). A kill "landed mid-write" when the command
# died by it after it had moved records and before it had moved them all:
# 'status --json' shows fewer records than before under the epoch it moves
# them from, and still some. At least half of the rounds must land so.
. "${P11MK_TESTLIB:?run the integration tests through meson test}"
CLIENT=${P11MK_ROT_CLIENT:?}
rounds=${P11MK_ROTATION_CRASH_ROUNDS:-${P11MK_STRESS:-30}}
objects=1500
batch=5
if [ -n "$PG_DB" ]; then need psql; else need mdb_stat; fi

init_token crash
"$CLIENT" "$MOD" crash $PIN fill $objects >/dev/null

# ks_state: read 'status --json' (which must succeed) into st (idle, staged,
# rewrapping, ready_to_commit, aborting), epoch, staged (0: none) and n_cur,
# n_new, n_all: records under the current epoch, the staged one, all epochs.
ks_state() {
    local rc=0 json per re
    "$ADMIN" status --json >"$T/status.json" 2>"$T/status.err" || rc=$?
    [ $rc -eq 0 ] || { cat "$T/status.err" >&2; fail "'p11mk-admin status --json' exited $rc"; }
    json=$(<"$T/status.json")
    re='"epoch": ([0-9]+),.*"rotation": \{"state": "([a-z ]+)", "staged_epoch": ([0-9]+),.*"records_per_epoch": \{([^}]*)\}'
    [[ $json =~ $re ]] || { echo "$json" >&2; fail "unexpected 'p11mk-admin status --json' output"; }
    epoch=${BASH_REMATCH[1]} st=${BASH_REMATCH[2]// /_} staged=${BASH_REMATCH[3]} per=${BASH_REMATCH[4]}
    n_cur=0 n_new=0 n_all=0
    [[ $per =~ \"$epoch\":\ ([0-9]+) ]] && n_cur=${BASH_REMATCH[1]}
    [ "$staged" -ne 0 ] && [[ $per =~ \"$staged\":\ ([0-9]+) ]] && n_new=${BASH_REMATCH[1]}
    while [[ $per =~ ^[^:]*:\ ([0-9]+)(.*)$ ]]; do n_all=$((n_all + BASH_REMATCH[1])) per=${BASH_REMATCH[2]}; done
}

# After every kill: status (ks_state) and verify pass, the module reads every object.
# A step killed in the middle of a pass (rewrapping, aborting): status says
# that none is running and what to run (LMDB: this host's lock; it looked
# the same as a rewrap at work: a hostile tester).
after_kill() {
    ks_state
    if [ -z "$PG_DB" ] && { [ "$st" = rewrapping ] || [ "$st" = aborting ]; }; then
        grep -q '"step_running": false' "$T/status.json" ||
            { cat "$T/status.json" >&2; fail "status --json after killing $1 mid-way: step_running is not false"; }
        "$ADMIN" status >"$T/status.txt" 2>&1
        grep -q "no step is running (the last one stopped before it ended); .*p11mk-admin" "$T/status.txt" ||
            { cat "$T/status.txt" >&2; fail "status after killing $1 mid-way does not say that no step is running"; }
        stopped_told=$((stopped_told + 1))
    fi
    "$CLIENT" "$MOD" crash $PIN check $objects >/dev/null || fail "objects unreadable after killing $1"
    expect_rc 0 "$ADMIN" verify
}

# txn_id: the keystore's last write transaction ID into $txn (PostgreSQL:
# the commit sequence, one more per write transaction, asked of one psql
# kept open: a psql started per look took 54 ms, a tenth of a pass).
if [ -n "$PG_DB" ]; then
    coproc SEQ { exec psql -X -q -At -d "$PG_CONNINFO" 2>&1; }
fi
txn_id() {
    local out=
    if [ -n "$PG_DB" ]; then
        echo 'SELECT seq FROM p11mk_seq;' >&"${SEQ[1]}"
        IFS= read -r -t 20 out <&"${SEQ[0]}" && [[ $out =~ ^[0-9]+$ ]] ||
            { echo "$out" >&2; fail "cannot read the commit sequence from $PG_CONNINFO"; }
        txn=$out
        return
    fi
    out=$(mdb_stat -e "$KS" 2>&1) || { echo "$out" >&2; fail "mdb_stat -e $KS failed"; }
    [[ $out =~ Last\ transaction\ ID:\ ([0-9]+) ]] || { echo "$out" >&2; fail "no transaction ID from mdb_stat"; }
    txn=${BASH_REMATCH[1]}
}

# run_killed ARGS...: run 'p11mk-admin ARGS' in the background; the caller
# kills it. reap: wait for it; sets how=killed, or how=finished when the kill
# came too late; any other ending fails the test with the command's output.
run_killed() {
    "$ADMIN" "$@" >"$T/killed.out" 2>&1 &
    pid=$! killed_cmd="p11mk-admin $*"
}
reap() {
    local rc=0
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" || rc=$?
    case $rc in
        137) how=killed ;;
        0) how=finished ;;
        *) cat "$T/killed.out" >&2; fail "'$killed_cmd' exited $rc: neither killed by SIGKILL nor finished" ;;
    esac
}
random_upto() { echo $(( (RANDOM * 32768 + RANDOM) % ($1 + 1) )); }

# A whole pass and a commit, uncontested (for the record, and the commit's
# kill window).
now_us() { local t=$EPOCHREALTIME; echo $(( 10#${t//[.,]/} )); }
expect_rc 0 "$ADMIN" stage
txn_id; t0=$(now_us) txn0=$txn
expect_rc 0 "$ADMIN" rewrap --quiet --batch $batch
t_rewrap=$(( $(now_us) - t0 )); txn_id
t0=$(now_us)
expect_rc 0 "$ADMIN" commit
t_commit=$(( $(now_us) - t0 ))
pass_txns=$((txn - txn0))
ks_state
# What one look at the transaction ID costs, in transactions of a pass: the
# kill comes that much after the look that saw $want, so the wait is cut by
# it (with a psql started per look, a tenth of a pass on PostgreSQL, 13 of
# 24 kills came after the pass had ended: fewer than half landed mid-write).
t0=$(now_us)
for _ in 1 2 3 4; do txn_id; done
t_look=$(( ($(now_us) - t0) / 4 ))
lag=$(( pass_txns > 0 && t_rewrap > 0 ? t_look * pass_txns / t_rewrap : 0 ))
echo "uncontested: rewrap of $n_all records with --batch $batch: $pass_txns transactions in" \
     "$((t_rewrap / 1000)) ms; commit $((t_commit / 1000)) ms; a look at the transaction ID $((t_look / 1000)) ms" \
     "($lag transactions)"

landed=0 early=0 late=0 abort_due=0 aborts=0 commits=0 commit_kills=0 repairs=0 stopped_told=0
for i in $(seq 1 "$rounds"); do
    ks_state
    case $st in
        idle) expect_rc 0 "$ADMIN" stage ;;
        ready_to_commit)
            # kill -9 the commit too: either it happened or it did not; the
            # next commit completes it or repairs the key file.
            d=$(random_upto $((t_commit * 3 / 2)))
            run_killed commit
            sleep "$(printf '%d.%06d' $((d / 1000000)) $((d % 1000000)))"
            reap
            commits=$((commits + 1))
            [ $how = killed ] && commit_kills=$((commit_kills + 1))
            after_kill commit
            set +e; "$ADMIN" commit >"$T/out" 2>&1; rc=$?; set -e
            [ $rc -eq 0 ] || { [ $rc -eq 6 ] && grep -q "nothing to commit" "$T/out"; } ||
                { cat "$T/out" >&2; fail "commit did not complete (exit $rc)"; }
            grep -q "Repaired the key file" "$T/out" && repairs=$((repairs + 1))
            "$CLIENT" "$MOD" crash $PIN check $objects >/dev/null || fail "objects unreadable after the commit"
            expect_rc 0 "$ADMIN" stage ;;
        staged | rewrapping) ;;
        *) fail "round $i starts in rotation state '$st'" ;;
    esac
    ks_state
    # The records the step moves: from the current epoch to the staged one, or
    # back. Every fifth round is an abort, once some records have moved.
    [ $((i % 5)) -eq 0 ] && abort_due=1
    if [ $abort_due = 1 ] && [ "$n_new" -gt 0 ]; then
        step=abort before=$n_new abort_due=0 aborts=$((aborts + 1))
    else
        step=rewrap before=$n_cur
    fi
    # Kill it after a random number of its transactions (the abort has one
    # more, that marks it under way).
    txns=$(( (before + batch - 1) / batch ))
    [ $step = abort ] && txns=$((txns + 1))
    want=$(( 1 + $(random_upto $((txns + txns / 8))) ))
    want=$(( want > lag + 1 ? want - lag : 1 ))
    txn_id; txn0=$txn
    run_killed "$step" --quiet --batch $batch
    while kill -0 "$pid" 2>/dev/null; do
        txn_id
        [ $((txn - txn0)) -ge $want ] && break
    done
    reap
    after_kill "$step (round $i)"
    if [ $step = abort ]; then left=$n_new; else left=$n_cur; fi
    if [ $how = finished ] || [ "$left" -eq 0 ]; then
        late=$((late + 1))
    elif [ "$left" -lt "$before" ]; then
        landed=$((landed + 1))
    else
        early=$((early + 1))
    fi
    [ -n "${P11MK_VERBOSE:-}" ] && echo "round $i: $step of $before records ($txns transactions)," \
        "kill after $want, seen $((txn - txn0)): $how, $left left"
    if [ $step = abort ]; then
        # Finish the abort: resumed if it was under way, refused or a repair if done.
        if [ "$st" != idle ]; then
            expect_rc 0 "$ADMIN" abort --quiet
        else
            set +e; "$ADMIN" abort --quiet >"$T/out" 2>&1; rc=$?; set -e
            [ $rc -eq 0 ] || { [ $rc -eq 6 ] && grep -q "nothing to abort" "$T/out"; } ||
                { cat "$T/out" >&2; fail "abort after a finished abort exited $rc"; }
        fi
        ks_state
        [ "$st" = idle ] && [ "$n_new" -eq 0 ] || fail "abort did not finish (state $st, $n_new records under the staged key)"
    fi
done
echo "rewrap/abort: $landed of $rounds kills landed mid-write ($early before the first record moved," \
     "$late after the last; $aborts aborts); commit: $commit_kills of $commits killed," \
     "$repairs key file repairs"
[ $((landed * 2)) -ge "$rounds" ] || fail "only $landed of $rounds kills landed mid-write: the test does not show what it claims"
[ -n "$PG_DB" ] || [ $stopped_told -gt 0 ] || fail "no kill left a pass stopped mid-way for status to report"

ks_state
[ "$st" = idle ] && expect_rc 0 "$ADMIN" stage
expect_rc 0 "$ADMIN" rewrap --quiet
expect_rc 0 "$ADMIN" commit
expect_rc 0 "$ADMIN" verify
"$CLIENT" "$MOD" crash $PIN check $objects || fail "objects lost"
# A commit killed between the keystore and the key file update is repaired.
expect_rc 0 "$ADMIN" stage
expect_rc 0 "$ADMIN" rewrap --quiet
keyfile=$(sed -n 's/^master_key = //p' "$CONF")
cp "$keyfile" "$T/before-commit.key"
expect_rc 0 "$ADMIN" commit
cp "$T/before-commit.key" "$keyfile"     # as if the key file update never happened
"$CLIENT" "$MOD" crash $PIN check $objects >/dev/null || fail "keystore unusable with lagging registers"
expect_rc 0 "$ADMIN" commit
expect_out "Repaired the key file"
expect_rc 0 "$ADMIN" verify
told=
[ -n "$PG_DB" ] || told=", status said $stopped_told times that no step was running"
ok "$rounds rounds, $landed kill -9 landed mid-write during rewrap/abort, $commit_kills during commit: nothing lost, status and verify pass$told"
