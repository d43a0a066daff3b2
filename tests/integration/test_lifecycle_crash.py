#!/usr/bin/env python3
"""kill -9 at random moments of every mutating p11mk-admin command (issue 9 contract).

Commands: set-master-key (--passphrase-file --yes), stage, rewrap, commit, abort, rotate,
clear-history --yes, auto-update run (due), auto-update --interval, backup, restore,
delete-token --yes. The keystore holds 1500 objects and rewrap/abort run with --batch 20,
so that a kill lands mid-way. Each command is first timed once uncontested; the kills
then come at uniformly random delays over that run time.

After each kill:
  - the module opens the keystore: rot_client check 1500 passes;
  - the same command run again (or 'auto-update run') finishes (0) or refuses cleanly
    (6 with a sentence); never 4/5;
  - back to idle (rewrap+commit, or abort when aborting), then: verify passes, no key lost
    (check values computed from the key file: every key ever seen or printed is still there
    unless clear-history destroyed it), no file holding key material next to the key file
    (master.key.tmp* and the like), a killed backup leaves no partial file under its name.

P11MK_STRESS=N multiplies the rounds; P11MK_CRASH_ROUNDS=N sets the rounds per command (default 7;
fewer in the sanitizer lane, where each costs three times as much); P11MK_SEED=S replays a run; P11MK_KEEP=1 keeps the
temporary directory; P11MK_VERBOSE=1 prints every failure in full.
"""
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time

sys.dont_write_bytecode = True   # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
from lifecycle_common import (ADMIN, FAR_FUTURE, HISTORY_MAX_BEFORE_CLEAR, KCV_RE, NO_TOKEN,  # noqa: E402
                              SEED, STRESS, VERBOSE, Env, Fatal, Keys, back_to_idle, children,
                              finish, print_failures, reap_children, remove_root, rng, start)

FILL = 1500
ROUNDS_PER_COMMAND = max(1, int(os.environ.get("P11MK_CRASH_ROUNDS") or 7))
COMMANDS = ["set-master-key", "stage", "rewrap", "commit", "abort", "rotate", "clear-history",
            "auto-update run", "auto-update --interval", "backup", "restore", "delete-token"]


class Crash(Env):
    secs_digits = 3             # kills land within milliseconds
    slot_list_checked = False   # a failed 'pkcs11-tool -L' is fatal through the --init-token that follows

    def __init__(self, root):
        super().__init__(root, "crash", ("pass", "backups", "scratch"))
        self.root = root
        self.failures = []
        self.keys = Keys(self)
        self.hexkeys = set()
        self.reported_files = set()
        self.calib, self.est = {}, {}
        self.kills = {c: [0, 0] for c in COMMANDS}   # landed, finished before the kill
        self.log_lines = []

    # ---- plumbing ----
    def keyfile(self):
        kf = super().keyfile()
        self.hexkeys |= kf.hexkeys
        return kf

    def status(self, why=""):
        r = self.admin("status", "--json")
        if r.rc != 0:
            raise Fatal("the keystore does not open%s\n%s\n  %s" % (why, r.describe(), self.keyfile().describe()))
        return json.loads(r.out)

    def fail(self, category, text):
        self.failures.append((category, text))

    # ---- ground truth ----
    def step(self, tag, *args, extra_env=None, ok_rcs=(0,)):
        r = self.admin(*args, extra_env=extra_env)
        self.log_lines.append(r)
        self.keys.from_output(args[0] if args[0] != "auto-update" else "auto-update run", r, tag)
        if r.rc not in ok_rcs:
            raise Fatal("%s: step '%s' failed (%s)\n%s\n  %s" % (tag, " ".join(args[:2]), r.rc_text(), r.describe(),
                                                               self.keyfile().describe()))
        return r

    def to_idle(self, tag):
        back_to_idle(self.state, self.step, tag)

    def cleared(self, kf0, kf1, r, tag):
        """What a finished clear-history took out of the key file must be what it printed."""
        gone = set(kf0.old) - kf1.all()
        silent = gone - set(KCV_RE.findall(r.out))
        if silent and not getattr(self, "silent_reported", False):
            self.silent_reported = True
            self.fail("clear-history destroyed keys without printing them",
                      "%s: retired keys %s left the key file, not printed as destroyed (contract: one line per "
                      "destroyed key containing 'check value XXXXXXXXXXXXXXXX'; not implemented in this build?)\n  %s"
                      % (tag, sorted(silent), r.describe()))
        for k in gone:
            self.keys.destroyed.setdefault(k, "clear-history (%s)" % tag)

    def clear_history(self, tag):
        before = self.keyfile()
        r = self.step(tag, "clear-history", "--yes")
        self.cleared(before, self.keyfile(), r, tag)
        return r

    def partial_rewrap(self, tag):
        for attempt in range(4):
            p = subprocess.Popen([ADMIN, "rewrap", "--batch", "20", "--quiet"], env=self.env,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
            children.append(p)
            time.sleep(rng.uniform(0.003, 0.012) * (attempt + 1))
            p.kill()
            p.wait()
            if self.state() in ("rewrapping", "ready to commit"):
                return

    # ---- the command under test ----
    def prepare(self, cmd, tag, full=False):
        """The state in which cmd does real work (full: all of it, for timing). Returns the
        context it needs."""
        self.log_lines = []
        ctx = {}
        self.to_idle(tag)
        kf = self.keyfile()
        if len(kf.old) >= HISTORY_MAX_BEFORE_CLEAR:
            self.clear_history(tag)
        if cmd == "auto-update run":
            self.step(tag, "auto-update", "--interval", "1h")
        if cmd in ("rewrap", "commit", "abort") or (cmd == "auto-update run" and not full and rng.random() < 0.5):
            self.step(tag, "stage")
            if cmd == "commit" or (cmd == "abort" and (full or rng.random() < 0.5)):
                self.step(tag, "rewrap", "--quiet")
            elif not full and rng.random() < 0.5:
                self.partial_rewrap(tag)
        elif cmd == "clear-history" and not kf.old:
            self.step(tag, "rotate")
        elif cmd == "restore":
            ctx["backup"] = self.fresh("backups")
            self.step(tag, "backup", ctx["backup"])
            self.step(tag, "rotate")        # the backup is now under a retired key: restore reseals it
        elif cmd == "delete-token":
            ctx["label"] = "scr%d" % self.n
            ctx["slot"] = self.init_token(ctx["label"])
            if self.client(ctx["label"], "fill", 100).rc != 0:
                raise Fatal("%s: rot_client fill on the scratch token failed" % tag)
        kf = self.keyfile()
        self.keys.check(kf, "preparing " + tag, "  preparation steps:\n  " + "\n  ".join(
            x.describe() for x in self.log_lines), abort_ran=any("abort" in x.argv for x in self.log_lines))
        self.keys.from_keyfile(kf, tag)
        return ctx

    def argv(self, cmd, ctx):
        extra = None
        if cmd == "set-master-key":
            pf = ctx.get("passfile") or self.fresh("pass")
            if "passfile" not in ctx:
                with open(pf, "w") as f:
                    f.write("Kc-%s-Q%d\n" % (secrets.token_hex(10), secrets.randbelow(10 ** 6)))
                ctx["passfile"] = pf
            a = ["set-master-key", "--passphrase-file", pf, "--yes"]
        elif cmd in ("rewrap", "abort"):
            a = [cmd, "--batch", "20"]
        elif cmd == "clear-history":
            a = ["clear-history", "--yes"]
        elif cmd == "auto-update run":
            # always due, whichever clock the last rotation was recorded with
            self.n += 1
            a, extra = ["auto-update", "run"], {"P11MK_NOW": str(FAR_FUTURE + self.n * 86400)}
        elif cmd == "auto-update --interval":
            a = ["auto-update", "--interval", rng.choice(["1h", "12h", "30d", "90m"])]
        elif cmd == "backup":
            ctx.setdefault("file", self.fresh("backups"))
            a = ["backup", ctx["file"]]
        elif cmd == "restore":
            a = ["restore", ctx["backup"], "--yes"]
        elif cmd == "delete-token":
            a = ["delete-token", "--slot", str(ctx["slot"]), "--yes"]
        else:
            a = [cmd]
        return [ADMIN] + a, extra

    def calibrate(self):
        """Time each command once, uncontested: the kills come at random moments within that."""
        for cmd in COMMANDS:
            tag = "calibrating %s" % cmd
            ctx = self.prepare(cmd, tag, full=True)
            argv, extra = self.argv(cmd, ctx)
            kf0 = self.keyfile()
            r = self.run(argv, extra)
            self.keys.from_output(cmd, r, tag)
            kf1 = self.keyfile()
            if cmd == "clear-history":
                self.cleared(kf0, kf1, r, tag)
            self.keys.check(kf1, tag, "  " + r.describe(), abort_ran=cmd == "abort")
            self.keys.from_keyfile(kf1, tag)
            if r.rc != 0:
                self.fail("calibration", "%s: %s uncontested: %s\n%s" % (tag, cmd, r.rc_text(), r.describe()))
            self.calib[cmd] = max(r.secs, 0.005)
            self.est[cmd] = self.calib[cmd] * 1.05
        self.to_idle("after calibration")

    def validate_backup(self, path, tag):
        """A file under a backup's final name must be a whole backup: restore it into a scratch
        keystore (with a copy of the key file) and read every object."""
        d = self.fresh("scratch")
        os.makedirs(d)
        ks = os.path.join(d, "keystore")
        os.makedirs(ks, mode=0o700)
        key = os.path.join(d, "master.key")
        shutil.copyfile(self.keyfile_path(), key)
        os.chmod(key, 0o600)
        conf = os.path.join(d, "p11mk.conf")
        with open(conf, "w") as f:
            f.write("keystore = %s\nmaster_key = %s\nlog = %s\n" % (ks, key, os.path.join(d, "log")))
        # Restored straight into the empty directory: no keystore is made on a
        # key file that serves one (the copy names the tested keystore), and a
        # backup of that keystore may come back under it.
        r = self.run([ADMIN, "restore", path, "--yes"], conf=conf)
        c = self.client("cr", "check", FILL, conf=conf) if r.rc == 0 else None
        if r.rc != 0 or c.rc != 0:
            self.fail("partial backup under the final name", "%s: the killed backup left %s (%d bytes), which is "
                      "not a whole backup\n  %s%s" % (tag, os.path.basename(path), os.path.getsize(path),
                                                      r.describe(), "\n  " + c.describe() if c else ""))

    def leftovers(self, tag):
        """No file next to the key file may hold key material but the key file itself: the
        registers' magic line, or half or more of any master key ever seen, in hex or raw."""
        kpath = self.keyfile_path()
        kdir = os.path.dirname(kpath)
        for name in sorted(os.listdir(kdir)):
            p = os.path.join(kdir, name)
            if p == kpath or not os.path.isfile(p) or p in self.reported_files:
                continue
            with open(p, "rb") as f:
                raw = f.read(4 << 20)
            data = raw.decode("latin-1").lower()
            why = None
            if "p11mk-registers" in data:
                why = "holds master-key registers"
            elif any(k[:32] in data or bytes.fromhex(k)[:16] in raw for k in self.hexkeys):
                why = "holds a master key"
            if why:
                self.reported_files.add(p)
                self.fail("leftover key material", "%s: %s next to the key file: %s (%d bytes)" % (
                    tag, name, why, os.path.getsize(p)))

    def round(self, cmd, i):
        tag = "round %d (kill -9 %s)" % (i, cmd)
        ctx = self.prepare(cmd, tag)
        state0, kf0 = self.state(), self.keyfile()
        argv, extra = self.argv(cmd, ctx)
        delay = rng.uniform(0, self.est[cmd])
        p = subprocess.Popen(argv, env=dict(self.env, **(extra or {})), stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        children.append(p)
        time.sleep(delay)
        landed = p.poll() is None
        p.kill()
        p.wait()
        self.kills[cmd][0 if landed else 1] += 1
        # Follow the command's run time as the machine's load changes: a kill that came after
        # the end shrinks the window, one that landed widens it (about 4 of 5 land, spread over
        # the whole run).
        self.est[cmd] = (min(self.est[cmd] * 1.1, self.calib[cmd] * 3) if landed
                         else max(self.est[cmd] * 0.7, 0.002))
        kf1 = self.keyfile()
        context = "  state before: %s; %s\n  killed %s after %.4f s (%s)\n  right after the kill: %s" % (
            state0, kf0.describe(), " ".join(os.path.basename(a) for a in argv), delay,
            "it was running" if landed else "it had already exited", kf1.describe())
        if cmd == "clear-history":
            # A killed clear-history cannot print what it destroyed: retired keys may go.
            for k in set(kf0.old) - kf1.all():
                self.keys.destroyed.setdefault(k, "the killed clear-history (%s)" % tag)
        self.keys.check(kf1, tag + ", right after the kill", context, abort_ran=cmd == "abort")
        self.keys.from_keyfile(kf1, tag + ", after the kill")
        # The module opens the keystore and reads every object.
        c = self.client("cr", "check", FILL)
        if c.rc != 0:
            self.fail("keystore unusable after the kill", "%s: rot_client check %d failed\n  %s\n%s" % (
                tag, FILL, c.describe(), context))
        if cmd == "backup" and os.path.exists(ctx["file"]):
            self.validate_backup(ctx["file"], tag)
            ctx["file"] = self.fresh("backups")
        # The same command again (or the timer's 'auto-update run'): finishes or refuses cleanly.
        again = cmd
        if cmd in ("stage", "rewrap", "commit", "rotate", "set-master-key") and rng.random() < 0.3:
            again = "auto-update run"
            self.step(tag, "auto-update", "--interval", "1h", ok_rcs=(0, 6))   # may be refused mid-rotation
        argv2, extra2 = self.argv(again, ctx)
        kf2 = self.keyfile()
        r = self.run(argv2, extra2)
        self.keys.from_output(again, r, tag + ", run again")
        if again == "clear-history":
            self.cleared(kf2, self.keyfile(), r, tag + ", run again")
        context += "\n  run again: " + r.describe()
        ok = r.rc == 0 or (r.rc == 6 and re.search(r"[A-Za-z]+ [A-Za-z]+ [A-Za-z]+", r.err))
        if again == "delete-token" and r.rc == 1 and re.search(NO_TOKEN, r.text, re.I):
            ok = True    # the killed run had deleted it
        if not ok:
            cat = ("exit %d on the re-run (master key / keystore refused)" % r.rc if r.rc in (4, 5)
                   else "re-run did not finish or refuse cleanly")
            self.fail(cat, "%s: %s after the kill: %s\n%s" % (tag, again, r.rc_text(), context))
        # Back to idle, then the invariants.
        self.log_lines = []
        try:
            self.to_idle(tag + ", recovery")
        except Fatal as e:
            raise Fatal("%s\n%s" % (e, context))
        kf = self.keyfile()
        self.keys.check(kf, tag + ", after recovery", context + "\n  recovery:\n  " + "\n  ".join(
            x.describe() for x in self.log_lines),
            abort_ran="abort" in (cmd, again) or any("abort" in x.argv for x in self.log_lines))
        self.keys.from_keyfile(kf, tag + ", after recovery")
        st = self.status(" after recovery from " + tag)
        for k in (st["master_key"].get("kcv"), st["master_key"].get("new_kcv")):
            if k:
                self.keys.seen.setdefault(k, "seen in status (%s)" % tag)
        v = self.admin("verify")
        if v.rc != 0:
            raise Fatal("%s: verify failed after recovery\n  %s\n%s" % (tag, v.describe(), context))
        c = self.client("cr", "check", FILL)
        if c.rc != 0:
            raise Fatal("%s: objects lost or unreadable after recovery\n  %s\n%s" % (tag, c.describe(), context))
        if cmd == "delete-token" and any(t["slot"] == ctx["slot"] for t in st["tokens"]) and r.rc == 0:
            self.fail("delete-token", "%s: delete-token exited 0 on the re-run but slot %d still holds a token" % (
                tag, ctx["slot"]))
        self.leftovers(tag)
        return landed, delay

    def report(self, rounds):
        landed = sum(v[0] for v in self.kills.values())
        per = ", ".join("%s %d/%d" % (c, v[0], v[0] + v[1]) for c, v in self.kills.items())
        summary = "%d rounds, %d kill -9 landed while the command ran (%s); uncontested run times %s" % (
            rounds, landed, per, ", ".join("%s %.0fms" % (c, t * 1000) for c, t in self.calib.items()))
        if not self.failures:
            print("ok - kill -9 of every mutating command: " + summary, flush=True)
            return True
        print("FAIL - kill -9 of every mutating command: %d failure(s) (%s)" % (len(self.failures), summary))
        cats = print_failures(self.failures)
        print("  -- module log, last lines:\n     " + self.log_tail().replace("\n", "\n     "))
        print("  (seed %d: P11MK_SEED=%d replays this run)" % (SEED, SEED))
        print("# summary (details above): FAIL - %s" % "; ".join("%s (%d)" % (c, len(t)) for c, t in cats.items()),
              flush=True)
        return False


def main():
    root = start("p11mk-lc-")
    C = Crash(root)
    rounds = 0
    try:
        C.init_token("cr")
        r = C.client("cr", "fill", FILL)
        if r.rc != 0:
            raise Fatal("rot_client fill failed\n" + r.describe())
        C.step("setup", "rotate")
        C.keys.from_keyfile(C.keyfile(), "setup")
        C.calibrate()
        only = os.environ.get("P11MK_CRASH_CMDS")     # e.g. "backup,restore" (for debugging)
        plan = [c for c in COMMANDS if not only or c in only.split(",")] * (ROUNDS_PER_COMMAND * STRESS)
        rng.shuffle(plan)
        for i, cmd in enumerate(plan):
            landed, delay = C.round(cmd, i + 1)
            rounds += 1
            if VERBOSE:
                print("# round %d: kill -9 %s after %.4f s (%s)" % (i + 1, cmd, delay,
                                                                  "landed" if landed else "had exited"), flush=True)
    except Fatal as e:
        C.fail("fatal (test stopped)", str(e))
    finally:
        reap_children()
    ok = C.report(rounds)
    remove_root(root)
    return finish(ok)


if __name__ == "__main__":
    sys.exit(main())
