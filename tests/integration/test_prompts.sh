#!/usr/bin/env bash
# The interactive set-master-key through a pseudo-terminal: the key entered
# twice without echo, a mismatch, answering N, then answering Y.
. "$P11MK_TESTLIB"
command -v python3 >/dev/null || skip "python3 is needed to drive a pseudo-terminal"
expect_rc 0 "$ADMIN" init
epoch() { "$ADMIN" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["epoch"])'; }
e0=$(epoch)

# drive "ANSWER1|ANSWER2|..." EXPECTED_RC: run set-master-key on a pty, answering prompts in order.
drive() {
    python3 - "$ADMIN" "$1" "$2" <<'PY'
import os, pty, sys, time, select
admin, answers, want = sys.argv[1], sys.argv[2].split("|"), int(sys.argv[3])
pid, fd = pty.fork()
if pid == 0:
    os.execv(admin, [admin, "set-master-key"])
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
prompts = [b"passphrase: ", b"again: ", b"[y/N] "]
for i, a in enumerate(answers):
    if not read_until(prompts[i]):
        sys.exit("no prompt %r; output: %r" % (prompts[i], out))
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
expect_rc 0 "$ADMIN" verify
# Without a terminal and without --passphrase-file: a clear error.
expect_rc 2 setsid "$ADMIN" set-master-key </dev/null
expect_out "no terminal"
ok "prompts: entered twice without echo, mismatch refused, N declines, Y changes the key"
