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

P11MK_STRESS=N multiplies the rounds; P11MK_SEED=S replays a run; P11MK_KEEP=1 keeps the
temporary directory; P11MK_VERBOSE=1 prints every failure in full.
"""
import hashlib
import hmac
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ADMIN = os.environ.get("P11MK_ADMIN")
MODULE = os.environ.get("P11MK_MODULE")
CLIENT = os.environ.get("P11MK_ROT_CLIENT")
SO_PIN, PIN = "so-pin-123", "user-pin-1"
STRESS = max(1, int(os.environ.get("P11MK_STRESS") or 1))
SEED = int(os.environ.get("P11MK_SEED") or random.SystemRandom().randrange(1 << 32))
VERBOSE = os.environ.get("P11MK_VERBOSE") == "1"
rng = random.Random(SEED)
FAR_FUTURE = int(time.time()) + 5 * 365 * 86400
KCV_RE = re.compile(r"check value ([0-9a-f]{16})(?![0-9a-f])")
FILL = 1500
ROUNDS_PER_COMMAND = 7
HISTORY_MAX_BEFORE_CLEAR = 10
COMMANDS = ["set-master-key", "stage", "rewrap", "commit", "abort", "rotate", "clear-history",
            "auto-update run", "auto-update --interval", "backup", "restore", "delete-token"]
NO_TOKEN = r"no token|no such token|not found|does not exist"
T0 = time.monotonic()
children = []


def tail(text, n=1200):
    text = text or ""
    return text if len(text) <= n else "..." + text[-n:]


def kcv_of(key):
    """HKDF-SHA256(IKM=key, salt=none, info="p11mk key check value v1", L=8), lowercase hex."""
    prk = hmac.new(b"\x00" * 32, key, hashlib.sha256).digest()
    return hmac.new(prk, b"p11mk key check value v1" + b"\x01", hashlib.sha256).digest()[:8].hex()


class KeyFile:
    def __init__(self, path):
        self.path, self.raw, self.current, self.new, self.old, self.hexkeys = path, None, None, None, [], set()
        if not path:
            return
        try:
            with open(path, "rb") as f:
                self.raw = f.read()
        except FileNotFoundError:
            return
        if len(self.raw) == 32:
            self.current = kcv_of(self.raw)
            self.hexkeys.add(self.raw.hex())
            return
        for line in self.raw.decode("utf-8", "replace").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] in ("current", "new", "old") and re.fullmatch(r"[0-9a-fA-F]{64}", parts[1]):
                self.hexkeys.add(parts[1].lower())
                k = kcv_of(bytes.fromhex(parts[1]))
                if parts[0] == "current":
                    self.current = k
                elif parts[0] == "new":
                    self.new = k
                else:
                    self.old.append(k)

    def all(self):
        return {k for k in [self.current, self.new] + self.old if k}

    def describe(self):
        if self.raw is None:
            return "key file %s: missing" % self.path
        return "key file: current %s, new %s, old [%s]" % (self.current, self.new, ", ".join(self.old))


class Res:
    def __init__(self, argv, rc, out, err, secs):
        self.argv, self.rc, self.out, self.err, self.secs = argv, rc, out or "", err or "", secs

    @property
    def text(self):
        return self.out + self.err

    def rc_text(self):
        if self.rc is None:
            return "did not finish (killed by the test after its timeout)"
        if self.rc < 0:
            try:
                return "killed by signal %s" % signal.Signals(-self.rc).name
            except ValueError:
                return "killed by signal %d" % -self.rc
        return "exit %d" % self.rc

    def describe(self):
        cmd = " ".join(os.path.basename(a) if a in (ADMIN, CLIENT) else a for a in self.argv)
        s = "$ %s\n    -> %s after %.3f s" % (cmd, self.rc_text(), self.secs)
        if self.out.strip():
            s += "\n    stdout: " + tail(self.out.strip()).replace("\n", "\n            ")
        if self.err.strip():
            s += "\n    stderr: " + tail(self.err.strip()).replace("\n", "\n            ")
        return s


class Fatal(Exception):
    pass


class Crash:
    def __init__(self, root):
        self.root = root
        self.dir = os.path.join(root, "crash")
        for d in ("pass", "backups", "scratch"):
            os.makedirs(os.path.join(self.dir, d))
        self.conf = os.path.join(self.dir, "p11mk.conf")
        self.ks = os.path.join(self.dir, "keystore")
        self.log = os.path.join(self.dir, "p11mk.log")
        with open(self.conf, "w") as f:
            f.write("keystore = %s\nlog = %s\nlog_level = info\n" % (self.ks, self.log))
        self.env = dict(os.environ, P11MK_CONF=self.conf)
        self.env.pop("P11MK_NOW", None)
        self.n = 0
        self.failures = []
        self.seen, self.destroyed, self.reported = {}, {}, set()
        self.role = {}
        self.hexkeys = set()
        self.reported_files = set()
        self.calib, self.est = {}, {}
        self.kills = {c: [0, 0] for c in COMMANDS}   # landed, finished before the kill
        self.log_lines = []

    # ---- plumbing ----
    def fresh(self, what):
        self.n += 1
        return os.path.join(self.dir, what, "%s-%d" % (what, self.n))

    def run(self, argv, extra_env=None, timeout=120, conf=None):
        env = dict(self.env, **(extra_env or {}))
        if conf:
            env["P11MK_CONF"] = conf
        t = time.monotonic()
        try:
            p = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               errors="replace", timeout=timeout, start_new_session=True)
            return Res(argv, p.returncode, p.stdout, p.stderr, time.monotonic() - t)
        except subprocess.TimeoutExpired:
            return Res(argv, None, "", "", time.monotonic() - t)

    def admin(self, *args, **kw):
        return self.run([ADMIN] + list(args), **kw)

    def p11(self, *args):
        return self.run(["pkcs11-tool", "--module", MODULE] + list(args))

    def client(self, label, mode, arg, conf=None):
        return self.run([CLIENT, MODULE, label, PIN, mode, str(arg)], timeout=300, conf=conf)

    def keyfile_path(self):
        with open(self.conf) as f:
            for line in f:
                m = re.match(r"\s*master_key\s*=\s*(.*?)\s*$", line)
                if m and m.group(1) != "default":
                    return m.group(1)
        return None

    def keyfile(self):
        kf = KeyFile(self.keyfile_path())
        self.hexkeys |= kf.hexkeys
        return kf

    def status(self, why=""):
        r = self.admin("status", "--json")
        if r.rc != 0:
            raise Fatal("the keystore does not open%s\n%s\n  %s" % (why, r.describe(), self.keyfile().describe()))
        return json.loads(r.out)

    def state(self):
        return self.status()["rotation"]["state"]

    def fail(self, category, text):
        self.failures.append((category, text))

    def log_tail(self, n=25):
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-n:]).rstrip() or "(empty)"
        except OSError:
            return "(no log)"

    def init_token(self, label):
        r = self.p11("-L")
        nslots = len(re.findall(r"(?m)^Slot ", r.out))
        r = self.p11("--init-token", "--slot-index", str(nslots - 1), "--label", label, "--so-pin", SO_PIN)
        if r.rc != 0:
            raise Fatal("pkcs11-tool --init-token failed\n" + r.describe())
        r = self.p11("--token-label", label, "--login", "--login-type", "so", "--so-pin", SO_PIN,
                     "--init-pin", "--new-pin", PIN)
        if r.rc != 0:
            raise Fatal("pkcs11-tool --init-pin failed\n" + r.describe())
        for t in self.status()["tokens"]:
            if t["label"] == label:
                return t["slot"]
        raise Fatal("token %s is not listed by status --json" % label)

    # ---- ground truth ----
    def note_output(self, name, res, tag):
        for k in KCV_RE.findall(res.out):
            if name == "clear-history":
                self.destroyed.setdefault(k, "clear-history (%s)" % tag)
            else:
                self.seen.setdefault(k, "printed by %s (%s)" % (name, tag))

    def note_keyfile(self, kf, tag):
        for k in kf.all():
            self.seen.setdefault(k, "seen in the key file (%s)" % tag)
        self.role.update({k: "history" for k in kf.old})
        self.role.update({kf.new: "NEW", kf.current: "CURRENT"})

    def check_keys(self, kf, tag, context, abort_ran=False):
        have = kf.all()
        for k in [k for k in self.destroyed if k in have]:
            del self.destroyed[k]   # printed by clear-history but kept (e.g. the current key): watch it again
        for k in [k for k in self.seen if k not in have and k not in self.destroyed and k not in self.reported]:
            self.reported.add(k)
            if abort_ran and self.role.get(k) == "NEW":
                self.fail("aborted NEW key destroyed", "%s: check value %s (%s), NEW before an abort, is no longer "
                          "in the key file (contract: an aborted NEW key is not destroyed, it moves to the history "
                          "with aborted: true)\n  %s\n%s" % (tag, k, self.seen[k], kf.describe(), context))
                continue
            self.fail("key lost", "%s: check value %s (%s; last seen in the key file as %s) is no longer in the key "
                      "file\n  %s\n%s" % (tag, k, self.seen[k], self.role.get(k, "-"), kf.describe(), context))

    def step(self, tag, *args, extra_env=None, ok_rcs=(0,)):
        r = self.admin(*args, extra_env=extra_env)
        self.log_lines.append(r)
        self.note_output(args[0] if args[0] != "auto-update" else "auto-update run", r, tag)
        if r.rc not in ok_rcs:
            raise Fatal("%s: step '%s' failed (%s)\n%s\n  %s" % (tag, " ".join(args[:2]), r.rc_text(), r.describe(),
                                                               self.keyfile().describe()))
        return r

    def to_idle(self, tag):
        for _ in range(4):
            state = self.state()
            if state == "idle":
                return
            if state == "aborting":
                self.step(tag, "abort")
            else:
                if state != "ready to commit":
                    self.step(tag, "rewrap")
                self.step(tag, "commit")
        raise Fatal("%s: could not bring the keystore back to idle (state %s)" % (tag, self.state()))

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
            self.destroyed.setdefault(k, "clear-history (%s)" % tag)

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
        self.check_keys(kf, "preparing " + tag, "  preparation steps:\n  " + "\n  ".join(
            x.describe() for x in self.log_lines), abort_ran=any("abort" in x.argv for x in self.log_lines))
        self.note_keyfile(kf, tag)
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
            self.note_output(cmd, r, tag)
            kf1 = self.keyfile()
            if cmd == "clear-history":
                self.cleared(kf0, kf1, r, tag)
            self.check_keys(kf1, tag, "  " + r.describe(), abort_ran=cmd == "abort")
            self.note_keyfile(kf1, tag)
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
        i = self.run([ADMIN, "init"], conf=conf)
        if i.rc != 0:
            raise Fatal("%s: cannot create a scratch keystore to check the backup\n  %s" % (tag, i.describe()))
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
                self.destroyed.setdefault(k, "the killed clear-history (%s)" % tag)
        self.check_keys(kf1, tag + ", right after the kill", context, abort_ran=cmd == "abort")
        self.note_keyfile(kf1, tag + ", after the kill")
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
        self.note_output(again, r, tag + ", run again")
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
        self.check_keys(kf, tag + ", after recovery", context + "\n  recovery:\n  " + "\n  ".join(
            x.describe() for x in self.log_lines),
            abort_ran="abort" in (cmd, again) or any("abort" in x.argv for x in self.log_lines))
        self.note_keyfile(kf, tag + ", after recovery")
        st = self.status(" after recovery from " + tag)
        for k in (st["master_key"].get("kcv"), st["master_key"].get("new_kcv")):
            if k:
                self.seen.setdefault(k, "seen in status (%s)" % tag)
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
        cats = {}
        for c, t in self.failures:
            cats.setdefault(c, []).append(t)
        for c, texts in cats.items():
            shown = len(texts) if VERBOSE else 3
            print("  == %s (%d)" % (c, len(texts)))
            for t in texts[:shown]:
                print("     " + t.replace("\n", "\n     "))
            if len(texts) > shown:
                print("     ... and %d more of this kind (P11MK_VERBOSE=1 shows all)" % (len(texts) - shown))
        print("  -- module log, last lines:\n     " + self.log_tail().replace("\n", "\n     "))
        print("  (seed %d: P11MK_SEED=%d replays this run)" % (SEED, SEED))
        print("# summary (details above): FAIL - %s" % "; ".join("%s (%d)" % (c, len(t)) for c, t in cats.items()),
              flush=True)
        return False


def main():
    for name, v in (("P11MK_ADMIN", ADMIN), ("P11MK_MODULE", MODULE), ("P11MK_ROT_CLIENT", CLIENT)):
        if not v or not os.path.exists(v):
            print("SKIP: %s must name the built binary" % name)
            return 77
    if not shutil.which("pkcs11-tool"):
        print("SKIP: pkcs11-tool is not installed")
        return 77
    root = tempfile.mkdtemp(prefix="p11mk-lc-")
    home = os.path.join(root, "home")
    os.environ.update(HOME=home, XDG_CONFIG_HOME=os.path.join(home, ".config"),
                      XDG_DATA_HOME=os.path.join(home, ".local", "share"))
    for d in (os.environ["XDG_CONFIG_HOME"], os.environ["XDG_DATA_HOME"]):
        os.makedirs(d)
    os.environ.pop("P11MK_NOW", None)
    print("# seed %d, stress %d, temp %s" % (SEED, STRESS, root), flush=True)
    C = Crash(root)
    rounds = 0
    try:
        C.init_token("cr")
        r = C.client("cr", "fill", FILL)
        if r.rc != 0:
            raise Fatal("rot_client fill failed\n" + r.describe())
        C.step("setup", "rotate")
        C.note_keyfile(C.keyfile(), "setup")
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
        for c in children:
            if c.poll() is None:
                c.kill()
                c.wait()
    ok = C.report(rounds)
    if os.environ.get("P11MK_KEEP") == "1":
        print("# kept %s" % root)
    else:
        shutil.rmtree(root, ignore_errors=True)
    print("# total %.1f s" % (time.monotonic() - T0))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
