#!/usr/bin/env bash
# The interactive set-master-key through a pseudo-terminal: the key entered
# twice without echo, a mismatch, answering N, then answering Y.
. "${P11MK_TESTLIB:?run the integration tests through meson test}"
command -v python3 >/dev/null || skip "python3 is needed to drive a pseudo-terminal"
expect_rc 0 "$ADMIN" init
epoch() { "$ADMIN" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["epoch"])'; }
e0=$(epoch)

# drive "ANSWER1|ANSWER2|..." EXPECTED_RC [ARGS...]: run set-master-key on a pty, answering prompts in order.
drive() {
    python3 - "$ADMIN" "$@" <<'PY'
import os, pty, sys, time, select
admin, answers, want = sys.argv[1], sys.argv[2].split("|"), int(sys.argv[3])
extra = sys.argv[4:]
pid, fd = pty.fork()
if pid == 0:
    os.execv(admin, [admin, "set-master-key"] + extra)
out = b""
def read_until(pat, timeout=20):
    global out
    end = time.time() + timeout
    while pat not in out and time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                out += os.read(fd, 1024)
            except OSError:
                break
    return pat in out
seen = 0
for i, a in enumerate(answers):
    # wait for the next prompt: new output ending in ": " or "] "
    end = time.time() + 20
    while time.time() < end:
        tail = out[seen:]
        if tail.rstrip(b" ").endswith((b":", b"]")) and tail.endswith(b" "):
            break
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                out += os.read(fd, 1024)
            except OSError:
                break
    else:
        sys.exit("no prompt for answer %d; output: %r" % (i + 1, out))
    seen = len(out)
    os.write(fd, a.encode() + b"\n")
while True:
    try:
        chunk = os.read(fd, 1024)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
_, status = os.waitpid(pid, 0)
rc = os.waitstatus_to_exitcode(status)
text = out.decode(errors="replace")
for a in answers[:2]:
    if len(a) > 3 and a in text:
        sys.exit("the passphrase was echoed: %r" % text)
print(text)
sys.exit(0 if rc == want else "exit %d, expected %d" % (rc, want))
PY
}
drive "Str0ng-passphrase-1|Str0ng-passphrase-2" 1 > out1 || { cat out1; fail "mismatch"; }
grep -q "differ" out1 || fail "mismatch not reported"
[ "$(epoch)" = "$e0" ] || fail "a mismatch changed the key"
drive "Str0ng-passphrase-1|Str0ng-passphrase-1|n" 1 > out2 || { cat out2; fail "answering N"; }
grep -q "Nothing was changed" out2 || fail "N did not leave things unchanged"
[ "$(epoch)" = "$e0" ] || fail "answering N changed the key"
drive "Str0ng-passphrase-1|Str0ng-passphrase-1|y" 0 > out3 || { cat out3; fail "answering Y"; }
[ "$(epoch)" = "$((e0 + 1))" ] || fail "answering Y did not change the key"
# Split knowledge: two parts, each entered twice.
drive "Part-one-secret-A|Part-one-secret-A|Part-two-secret-B|Part-two-secret-B|y" 0 --parts 2 > out4 \
    || { cat out4; fail "key parts"; }
grep -q "Key part 2 of 2" out4 || fail "no prompt for the second key part"
[ "$(epoch)" = "$((e0 + 2))" ] || fail "the key parts did not change the key"
kcv_parts=$("$ADMIN" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["master_key"]["kcv"])')
# The same two parts from a file give the same key on another keystore.
printf 'Part-one-secret-A\nPart-two-secret-B\n' > parts.txt
printf 'keystore = %s/other\n' "$T" > other.conf
P11MK_CONF=$T/other.conf expect_rc 0 "$ADMIN" init
P11MK_CONF=$T/other.conf expect_rc 0 "$ADMIN" set-master-key --parts 2 --passphrase-file parts.txt --yes --key-file "$T/other.key"
kcv_file=$(P11MK_CONF=$T/other.conf "$ADMIN" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["master_key"]["kcv"])')
[ "$kcv_parts" = "$kcv_file" ] || fail "the same parts gave different keys"
# -q with --yes: nothing on standard output; --json: one JSON object per
# step there, nothing else (a hostile tester: the plan was printed always).
printf 'Quiet-passphrase-1\n' > quiet.txt
P11MK_CONF=$T/other.conf "$ADMIN" set-master-key -q --yes --passphrase-file quiet.txt > q.out 2> q.err ||
    { cat q.out q.err; fail "set-master-key -q"; }
[ ! -s q.out ] || { cat q.out; fail "set-master-key -q --yes printed on standard output"; }
printf 'Json-passphrase-1\n' > json.txt
P11MK_CONF=$T/other.conf "$ADMIN" set-master-key --json --yes --passphrase-file json.txt > j.out 2> j.err ||
    { cat j.out j.err; fail "set-master-key --json"; }
python3 -c 'import json, sys; [json.loads(l) for l in open(sys.argv[1])]' j.out || { cat j.out; fail "set-master-key --json printed more than JSON"; }
P11MK_CONF=$T/other.conf "$ADMIN" clear-history --keep 1 --json --yes > j.out 2> j.err || { cat j.out j.err; fail "clear-history --json"; }
python3 -c 'import json, sys; d = [json.loads(l) for l in open(sys.argv[1])]; assert len(d[-1]["destroyed"]) >= 1, d' j.out ||
    { cat j.out; fail "clear-history --json printed more than JSON"; }
P11MK_CONF=$T/other.conf "$ADMIN" clear-history -q --yes > q.out 2> q.err || { cat q.out q.err; fail "clear-history -q"; }
[ ! -s q.out ] || { cat q.out; fail "clear-history -q --yes printed on standard output"; }
for a in "--interval 30d" --disable run; do
    # shellcheck disable=SC2086
    P11MK_CONF=$T/other.conf "$ADMIN" auto-update $a -q > q.out 2> q.err || { cat q.out q.err; fail "auto-update $a -q"; }
    [ ! -s q.out ] || { cat q.out; fail "auto-update $a -q printed on standard output"; }
done
P11MK_CONF=$T/other.conf "$ADMIN" auto-update --interval 12h --json > j.out 2> j.err || { cat j.out j.err; fail "auto-update --json"; }
python3 -c 'import json, sys; assert json.loads(open(sys.argv[1]).read())["interval"] == 43200' j.out ||
    { cat j.out; fail "auto-update --json printed more than JSON"; }
# A command with no JSON form refuses --json rather than print text where JSON is expected.
P11MK_CONF=$T/other.conf expect_rc 2 "$ADMIN" verify --json
expect_out "has no JSON output"
# One part alone is a different key.
printf 'Part-one-secret-A\n' > one.txt
P11MK_CONF=$T/other.conf expect_rc 2 "$ADMIN" stage --parts 2 --passphrase-file one.txt
expect_out "too few lines"
# More parts in the file than asked for: refused (a key of two of three
# parts is not the key its three holders expect); a file others may read
# is named in a warning (it holds what makes the master key).
printf 'Part-one-secret-A\nPart-two-secret-B\nPart-three-secret-C\n\n' > three.txt
chmod 644 three.txt
P11MK_CONF=$T/other.conf expect_rc 2 "$ADMIN" stage --parts 2 --passphrase-file three.txt
expect_out "more lines than the 2 parts"
expect_out "warning: three.txt has mode 0644"
P11MK_CONF=$T/other.conf expect_rc 2 "$ADMIN" stage --passphrase-file parts.txt
expect_out "more lines than the 1 passphrase"
expect_rc 2 "$ADMIN" stage --parts 1
expect_rc 2 "$ADMIN" stage --parts 10
expect_rc 0 "$ADMIN" verify
# Without a terminal and without --passphrase-file: a clear error.
expect_rc 2 setsid "$ADMIN" set-master-key </dev/null
expect_out "no terminal"
ok "prompts: entered twice without echo, mismatch refused, N declines, Y changes the key; key parts"
