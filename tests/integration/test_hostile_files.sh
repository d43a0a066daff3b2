#!/usr/bin/env bash
# Hostile and odd files where p11mk expects regular files: a FIFO, a
# symbolic link, a directory, a device. Each is a clear error within a second
# from both p11mk-admin and the module (C_Initialize), never a hang, and a
# symlink planted where a lock or log file belongs is never followed (the
# file it points at stays untouched). A key set twice in p11mk.conf is an
# error naming both lines.
. "${P11MK_TESTLIB:?run the integration tests through meson test}"
need pkcs11-tool
CLIENT=${P11MK_ROT_CLIENT:?}
expect_rc 0 "$ADMIN" init --generate-key "$T/master.key"
cp "$CONF" "$T/good.conf"
printf 'master_key = %s/master.key\n' "$T" >> "$CONF"
expect_rc 0 "$ADMIN" status
cp "$CONF" "$T/good.conf"

# quick CMD...: the command must end within 2 seconds (timeout exits 124).
quick() {
    set +e; timeout 2 "$@" >"$T/out" 2>&1; local rc=$?; set -e
    [ $rc -ne 124 ] || fail "'$*' hung"
    echo $rc
}
# module_fails CONF: pkcs11-tool -L with this configuration fails quickly.
module_fails() {
    local rc
    rc=$(P11MK_CONF=$1 quick pkcs11-tool --module "$MOD" -L)
    [ "$rc" -ne 0 ] || fail "the module accepted $2"
}

# The configuration file.
mkfifo "$T/fifo.conf"
rc=$(P11MK_CONF=$T/fifo.conf quick "$ADMIN" status); [ "$rc" -eq 3 ] || fail "FIFO config: exit $rc"
expect_out "not a regular file"
module_fails "$T/fifo.conf" "a FIFO as configuration"
ln -s "$T/good.conf" "$T/link.conf"
rc=$(P11MK_CONF=$T/link.conf quick "$ADMIN" status); [ "$rc" -eq 3 ] || fail "symlinked config: exit $rc"
expect_out "symbolic link"
module_fails "$T/link.conf" "a symlink as configuration"
mkdir "$T/dir.conf"
rc=$(P11MK_CONF=$T/dir.conf quick "$ADMIN" status); [ "$rc" -eq 3 ] || fail "directory config: exit $rc"
rc=$(P11MK_CONF=/dev/null quick "$ADMIN" status); [ "$rc" -eq 3 ] || fail "device config: exit $rc"
expect_out "not a regular file"
{ cat "$T/good.conf"; echo "log_level = debug"; echo "log_level = info"; } > "$T/dup.conf"
rc=$(P11MK_CONF=$T/dup.conf quick "$ADMIN" status); [ "$rc" -eq 3 ] || fail "duplicate key: exit $rc"
expect_out "dup.conf:[0-9]+: key 'log_level' is set twice \(first on line [0-9]+\)"
module_fails "$T/dup.conf" "a key set twice"
cp "$T/good.conf" "$T/open.conf"; chmod 666 "$T/open.conf"
rc=$(P11MK_CONF=$T/open.conf quick "$ADMIN" status); [ "$rc" -eq 3 ] || fail "world-writable config: exit $rc"
expect_out "writable by other users"
module_fails "$T/open.conf" "a configuration others may write"
chmod 620 "$T/open.conf"
rc=$(P11MK_CONF=$T/open.conf quick "$ADMIN" status); [ "$rc" -eq 3 ] || fail "group-writable config: exit $rc"
ok "configuration: FIFO, symlink, directory, device a duplicate key and a configuration others may write are clear errors within a second"

# The key file.
for kind in fifo link dir; do
    case $kind in
        fifo) mkfifo "$T/k.$kind" ;;
        link) ln -s "$T/master.key" "$T/k.$kind" ;;
        dir) mkdir "$T/k.$kind" ;;
    esac
    sed "s|^master_key = .*|master_key = $T/k.$kind|" "$T/good.conf" > "$T/k-$kind.conf"
    rc=$(P11MK_CONF=$T/k-$kind.conf quick "$ADMIN" status); [ "$rc" -eq 4 ] || { cat "$T/out"; fail "key file as $kind: exit $rc"; }
    grep -Eq "not a regular file|symbolic link" "$T/out" || { cat "$T/out"; fail "key file as $kind: unclear message"; }
    module_fails "$T/k-$kind.conf" "a key file that is a $kind"
done
ok "key file: FIFO, symlink and directory refused within a second (exit 4)"

# Lock files and the log: a planted symlink is refused, its target untouched.
echo "precious" > "$T/victim"
for f in rotation.lock users.lock; do
    rm -f "$KS/$f"
    ln -s "$T/victim" "$KS/$f"
done
rc=$(quick "$ADMIN" rotate --wait 0)
[ "$rc" -ne 0 ] || fail "rotate followed a symlinked lock file"
expect_out "users.lock is not a regular file"
module_fails "$CONF" "a symlinked users.lock (restore could no longer see the process)"
rm -f "$KS/users.lock"
rc=$(quick "$ADMIN" rotate --wait 0)
[ "$rc" -eq 5 ] || { cat "$T/out"; fail "rotate with a symlinked rotation.lock: exit $rc"; }
expect_out "rotation.lock: it is a symbolic link"
grep -q "^precious$" "$T/victim" || fail "a lock file symlink was followed: the victim changed"
rm -f "$KS/rotation.lock"
ln -s "$T/victim" "$T/planted.log"
sed "s|^log = .*|log = $T/planted.log|" "$T/good.conf" > "$T/log.conf"
P11MK_CONF=$T/log.conf quick pkcs11-tool --module "$MOD" -L >/dev/null
grep -q "^precious$" "$T/victim" && [ "$(wc -l < "$T/victim")" -eq 1 ] || fail "the log symlink was followed"
rm -f "$T/planted.log"
mkfifo "$T/planted.log"
rc=$(P11MK_CONF=$T/log.conf quick "$ADMIN" status); [ "$rc" -eq 3 ] || fail "a FIFO as log file: exit $rc"
expect_out "log file .* is not a regular file"
module_fails "$T/log.conf" "a FIFO as log file"
rm -f "$T/planted.log"
expect_rc 0 "$ADMIN" verify
ok "lock and log files: symlinks not followed (target untouched), a FIFO log is a clear error"

# LMDB's own files: a link planted as lock.mdb or data.mdb is refused before
# LMDB could follow it; a keystore directory every user may write is refused.
echo "precious" > "$T/victim2"
mv "$KS/lock.mdb" "$T/lock.mdb.keep"
ln -s "$T/victim2" "$KS/lock.mdb"
rc=$(quick "$ADMIN" status); [ "$rc" -eq 5 ] || { cat "$T/out"; fail "a symlinked lock.mdb: exit $rc"; }
expect_out "lock.mdb is not a regular file"
module_fails "$CONF" "a symlinked lock.mdb"
[ "$(cat "$T/victim2")" = precious ] || fail "LMDB followed the lock.mdb link and wrote over its target"
rm "$KS/lock.mdb"; mv "$T/lock.mdb.keep" "$KS/lock.mdb"
chmod 777 "$KS"
rc=$(quick "$ADMIN" status); [ "$rc" -ne 0 ] || fail "a world-writable keystore directory was accepted"
expect_out "writable by every user"
chmod 700 "$KS"
expect_rc 0 "$ADMIN" verify
ok "lock.mdb as a link and a world-writable keystore directory: refused, the link's target untouched"

# Restore while an application runs, even after users.lock was deleted or
# replaced: LMDB's own lock still says the keystore is in use.
expect_rc 0 "$ADMIN" backup "$T/hf.bak"
p11 --token-label x --login --pin $PIN -O >/dev/null 2>&1 || true
idx=$(( $(p11 -L 2>/dev/null | grep -c '^Slot ') - 1 ))
p11 --init-token --slot-index "$idx" --label hf --so-pin $SO >/dev/null
p11 --token-label hf --login --login-type so --so-pin $SO --init-pin --new-pin $PIN >/dev/null
rm -f "$T/stop"
"$CLIENT" "$MOD" hf $PIN run "$T/stop" > "$T/client.out" 2>&1 &
cpid=$!
sleep 0.5
rm -f "$KS/users.lock"
expect_rc 6 "$ADMIN" restore "$T/hf.bak" --yes
expect_out "in use"
rm -f "$KS/users.lock"; mkfifo "$KS/users.lock"
set +e; "$ADMIN" restore "$T/hf.bak" --yes >"$T/out" 2>&1; rc=$?; set -e
[ $rc -ne 0 ] || fail "restore went ahead with a FIFO as users.lock while a client ran"
touch "$T/stop"; wait $cpid || { cat "$T/client.out"; fail "the client failed"; }
rm -f "$KS/users.lock"
expect_rc 0 "$ADMIN" verify
ok "restore refused while an application runs, with users.lock deleted or a FIFO"

# A damaged data.mdb (cut short, page headers changed on disk): p11mk-admin
# verify reports it (exit 5), status and the module's reads and writes fail
# with an error (or work, where the damage is in a page they do not use);
# none of them dies of a signal or hangs (keystore/ks_fault.h, ks_lmdb_pages.h).
cp "$KS/data.mdb" "$T/good.mdb"
size=$(stat -c %s "$T/good.mdb")
no_crash() { # what CMD...: ends within 10 s, by itself, not by a signal
    local what=$1; shift
    set +e; timeout 10 "$@" >"$T/out" 2>&1; local rc=$?; set -e
    [ $rc -lt 124 ] || { cat "$T/out" >&2; fail "$what: exit $rc (a signal or a hang)"; }
    echo $rc
}
truncate -s $((size / 2)) "$KS/data.mdb"
rc=$(no_crash "verify of a file cut short" "$ADMIN" verify); [ "$rc" -eq 5 ] || fail "verify of a file cut short: exit $rc"
expect_out "damaged"
no_crash "status of a file cut short" "$ADMIN" status >/dev/null
no_crash "the module on a file cut short" pkcs11-tool --module "$MOD" -O >/dev/null
pages=$((size / 4096)); flips=0
for seed in $(seq 1 20); do
    cp "$T/good.mdb" "$KS/data.mdb"
    for k in 1 2 3; do
        at=$(( (2 + (seed * 7919 + k * 104729) % (pages - 2)) * 4096 + (seed * 31 + k * 17) % 64 ))
        printf "\\x$(printf %02x $(( (seed * 53 + k * 97) % 256 )))" |
            dd of="$KS/data.mdb" bs=1 seek=$at conv=notrunc status=none
        flips=$((flips + 1))
    done
    no_crash "verify of damaged copy $seed" "$ADMIN" verify >/dev/null
    no_crash "status of damaged copy $seed" "$ADMIN" status >/dev/null
    no_crash "the module on damaged copy $seed" pkcs11-tool --module "$MOD" -O >/dev/null
    # A login writes (its failure counter), a new key more: LMDB's copy of a
    # damaged page ran past its heap block before the page checks
    # (keystore/ks_lmdb_pages.h; this login on copy 20 aborted under ASan).
    no_crash "a login and a new key on damaged copy $seed" pkcs11-tool --module "$MOD" --token-label hf \
        --login --pin $PIN --keygen --key-type AES:32 --label "dmg$seed" >/dev/null
done
cp "$T/good.mdb" "$KS/data.mdb"
expect_rc 0 "$ADMIN" verify
ok "a damaged data.mdb: cut short, verify exit 5; 20 copies with $flips bytes changed in page headers: verify, status, the module's reads and its writes (a login, a new key) end with an error or work, never a signal or a hang"
