"""Helpers shared by test_lifecycle_matrix.py and test_lifecycle_crash.py (python3, stdlib only).

Not a test itself: the two tests import it from their own directory. It holds the environment
they read (P11MK_ADMIN, P11MK_MODULE, P11MK_ROT_CLIENT, P11MK_STRESS, P11MK_SEED, P11MK_VERBOSE,
P11MK_KEEP), the ground truth (check values computed from the key file, the keys seen and
destroyed), the command result, a keystore of its own (directory, configuration, log) with the
commands run in it, and the start and end of a test run (skips, temporary HOME, cleanup).
"""
import hashlib
import hmac
import json
import os
import random
import re
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
rng = random.Random(SEED)
FAR_FUTURE = int(time.time()) + 5 * 365 * 86400  # P11MK_NOW for 'auto-update run': always due
KCV_RE = re.compile(r"check value ([0-9a-f]{16})(?![0-9a-f])")
HISTORY_MAX_BEFORE_CLEAR = 10   # the preparation empties the history (clear-history --yes) above this
NO_TOKEN = r"no token|no such token|not found|does not exist"   # delete-token of a token already gone: exit 1

VERBOSE = os.environ.get("P11MK_VERBOSE") == "1"
T0 = time.monotonic()
children = []   # every process this test started, to be reaped (by pid) at exit


def tail(text, n=1200):
    text = text or ""
    return text if len(text) <= n else "..." + text[-n:]


# ---- ground truth: key check values -------------------------------------------------

def kcv_of(key):
    """HKDF-SHA256(IKM=key, salt=none, info="p11mk key check value v1", L=8), lowercase hex."""
    prk = hmac.new(b"\x00" * 32, key, hashlib.sha256).digest()
    return hmac.new(prk, b"p11mk key check value v1" + b"\x01", hashlib.sha256).digest()[:8].hex()


class KeyFile:
    """The registers as the key file holds them: current, new, old (check values); hexkeys, the
    keys themselves (lowercase hex); problems, what is malformed in the file."""

    def __init__(self, path):
        self.path, self.raw, self.current, self.new, self.old, self.hexkeys = path, None, None, None, [], set()
        self.problems = []
        if not path:
            return
        try:
            with open(path, "rb") as f:
                self.raw = f.read()
        except FileNotFoundError:
            return
        if len(self.raw) == 32:       # the first format: 32 raw bytes, CURRENT only
            self.current = kcv_of(self.raw)
            self.hexkeys.add(self.raw.hex())
            return
        for line in self.raw.decode("utf-8", "replace").splitlines():
            parts = line.split()
            if len(parts) < 2 or parts[0] not in ("current", "new", "old"):
                continue
            if not re.fullmatch(r"[0-9a-fA-F]{64}", parts[1]):
                self.problems.append("malformed line %r" % line[:20])
                continue
            self.hexkeys.add(parts[1].lower())
            k = kcv_of(bytes.fromhex(parts[1]))
            if parts[0] == "current":
                if self.current:
                    self.problems.append("two current lines")
                self.current = k
            elif parts[0] == "new":
                if self.new:
                    self.problems.append("two new lines")
                self.new = k
            else:
                self.old.append(k)

    def all(self):
        return {k for k in [self.current, self.new] + self.old if k}

    def describe(self):
        if self.raw is None:
            return "key file %s: missing" % self.path
        return "key file: current %s, new %s, old [%s]" % (self.current, self.new, ", ".join(self.old))


class Keys:
    """Every check value ever seen, and those clear-history said it destroyed. phase: where the
    failures go (an object with fail(category, text))."""

    def __init__(self, phase):
        self.ph, self.seen, self.destroyed, self.reported = phase, {}, {}, set()
        self.last_old = set()   # the history in the key file when last looked at
        self.role = {}          # check value -> its register when last seen in the key file

    def saw(self, k, origin):
        self.seen.setdefault(k, origin)

    def from_output(self, name, res, tag):
        for k in KCV_RE.findall(res.out):
            if name == "clear-history":
                self.destroyed.setdefault(k, "clear-history (%s)" % tag)
            else:
                self.saw(k, "printed by %s (%s)" % (name, tag))

    def from_keyfile(self, kf, tag):
        for k in kf.all():
            self.saw(k, "seen in the key file (%s)" % tag)
        self.last_old = set(kf.old)
        self.role.update({k: "history" for k in kf.old})
        self.role.update({kf.new: "NEW", kf.current: "CURRENT"})

    def from_status(self, st, tag):
        mk = st.get("master_key", {})
        for k in (mk.get("kcv"), mk.get("new_kcv")):
            if k:
                self.saw(k, "seen in status --json (%s)" % tag)
        for h in st.get("rotation", {}).get("history_keys") or []:
            if isinstance(h, dict) and h.get("kcv"):
                self.saw(h["kcv"], "seen in status history_keys (%s)" % tag)

    def check(self, kf, tag, context, clear_history_ran=False, abort_ran=False):
        """No key lost: every check value seen is still in the key file unless destroyed."""
        have = kf.all()
        for k in [k for k in self.destroyed if k in have]:
            del self.destroyed[k]   # printed by clear-history but kept (e.g. the current key): watch it again
        lost = [k for k in self.seen if k not in have and k not in self.destroyed and k not in self.reported]
        for k in lost:
            self.reported.add(k)
            if clear_history_ran and k in self.last_old:
                self.ph.fail("retired key destroyed by clear-history without printing it",
                             "%s: retired key %s (%s) left the key file; clear-history ran and did not print it "
                             "as destroyed (contract: one line per destroyed key containing 'check value "
                             "XXXXXXXXXXXXXXXX')\n  %s\n%s" % (tag, k, self.seen[k], kf.describe(), context))
                continue
            if abort_ran and self.role.get(k) == "NEW":
                self.ph.fail("aborted NEW key destroyed", "%s: check value %s (%s), NEW before an abort, is no "
                             "longer in the key file (contract: an aborted NEW key is not destroyed, it moves to the "
                             "history with aborted: true)\n  %s\n%s" % (tag, k, self.seen[k], kf.describe(), context))
                continue
            self.ph.fail("key lost", "%s: check value %s (%s; last seen in the key file as %s) is no longer in the "
                         "key file\n  %s\n%s" % (tag, k, self.seen[k], self.role.get(k, "-"), kf.describe(), context))
        return not lost


# ---- processes --------------------------------------------------------------------

class Res:
    """A finished command. digits: how many decimals describe() gives its run time."""

    def __init__(self, argv, rc, out, err, secs, digits=2):
        self.argv, self.rc, self.out, self.err, self.secs = argv, rc, out or "", err or "", secs
        self.digits = digits

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
        s = "$ %s\n    -> %s after %.*f s" % (cmd, self.rc_text(), self.digits, self.secs)
        if self.out.strip():
            s += "\n    stdout: " + tail(self.out.strip()).replace("\n", "\n            ")
        if self.err.strip():
            s += "\n    stderr: " + tail(self.err.strip()).replace("\n", "\n            ")
        return s


class Fatal(Exception):
    """Stops the phase (or the test): the keystore is no longer usable for further rounds."""


class Env:
    """A keystore of its own: directory (with the subdirectories dirs), configuration, log; and the
    commands run in it."""

    secs_digits = 2          # the decimals of the run times in Res.describe()
    slot_list_checked = True  # init_token: a failed 'pkcs11-tool -L' (or no slot) is fatal by itself

    def __init__(self, root, name, dirs=("pass", "backups")):
        self.dir = os.path.join(root, name)
        for d in dirs:
            os.makedirs(os.path.join(self.dir, d))
        self.conf = os.path.join(self.dir, "p11mk.conf")
        self.ks = os.path.join(self.dir, "keystore")
        self.log = os.path.join(self.dir, "p11mk.log")
        with open(self.conf, "w") as f:
            f.write("keystore = %s\nlog = %s\nlog_level = info\n" % (self.ks, self.log))
        self.env = dict(os.environ, P11MK_CONF=self.conf)
        self.env.pop("P11MK_NOW", None)
        self.n = 0

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
            return Res(argv, p.returncode, p.stdout, p.stderr, time.monotonic() - t, self.secs_digits)
        except subprocess.TimeoutExpired as e:
            return Res(argv, None, e.stdout if isinstance(e.stdout, str) else "",
                       e.stderr if isinstance(e.stderr, str) else "", time.monotonic() - t, self.secs_digits)

    def admin(self, *args, extra_env=None, timeout=120, conf=None):
        return self.run([ADMIN] + list(args), extra_env, timeout, conf)

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
        return KeyFile(self.keyfile_path())

    def status(self, why=""):
        r = self.admin("status", "--json")
        if r.rc != 0:
            raise Fatal("the keystore does not open%s: 'status --json' failed\n%s" % (why, r.describe()))
        try:
            return json.loads(r.out)
        except ValueError as e:
            raise Fatal("status --json printed no JSON (%s)\n%s" % (e, r.describe()))

    def state(self):
        return self.status()["rotation"]["state"]

    def log_tail(self, n=25):
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-n:]).rstrip() or "(empty)"
        except OSError:
            return "(no log)"

    def init_token(self, label, user_pin=True):
        r = self.p11("-L")
        nslots = len(re.findall(r"(?m)^Slot ", r.out))
        if self.slot_list_checked and (r.rc != 0 or nslots < 1):
            raise Fatal("pkcs11-tool -L failed\n" + r.describe())
        r = self.p11("--init-token", "--slot-index", str(nslots - 1), "--label", label, "--so-pin", SO_PIN)
        if r.rc != 0:
            raise Fatal("pkcs11-tool --init-token failed\n" + r.describe())
        if user_pin:
            r = self.p11("--token-label", label, "--login", "--login-type", "so", "--so-pin", SO_PIN,
                         "--init-pin", "--new-pin", PIN)
            if r.rc != 0:
                raise Fatal("pkcs11-tool --init-pin failed\n" + r.describe())
        for t in self.status()["tokens"]:
            if t["label"] == label:
                return t["slot"]
        raise Fatal("token %s is not listed by status --json" % label)


def back_to_idle(state, step, tag, abort_share=0.0):
    """Bring the keystore back to idle: rewrap and commit, or abort when aborting (and, with
    abort_share, that share of the other times). state(): the rotation state; step(tag, *args):
    runs one admin command."""
    for _ in range(4):
        current = state()
        if current == "idle":
            return
        if current == "aborting" or (abort_share and rng.random() < abort_share):
            step(tag, "abort")
        else:
            if current != "ready to commit":
                step(tag, "rewrap")
            step(tag, "commit")
    raise Fatal("%s: could not bring the keystore back to idle (state %s)" % (tag, state()))


# ---- the start and the end of a test run ------------------------------------------

def start(prefix):
    """Skip (exit 77) without the built binaries or pkcs11-tool; else a temporary directory
    (named prefix...) with a HOME of its own, whose path and the seed are printed."""
    for name, v in (("P11MK_ADMIN", ADMIN), ("P11MK_MODULE", MODULE), ("P11MK_ROT_CLIENT", CLIENT)):
        if not v or not os.path.exists(v):
            skip("%s must name the built binary" % name)
    if not shutil.which("pkcs11-tool"):
        skip("pkcs11-tool is not installed")
    root = tempfile.mkdtemp(prefix=prefix)
    home = os.path.join(root, "home")
    os.environ.update(HOME=home, XDG_CONFIG_HOME=os.path.join(home, ".config"),
                      XDG_DATA_HOME=os.path.join(home, ".local", "share"))
    for d in (os.environ["XDG_CONFIG_HOME"], os.environ["XDG_DATA_HOME"]):
        os.makedirs(d)
    os.environ.pop("P11MK_NOW", None)
    print("# seed %d, stress %d, temp %s" % (SEED, STRESS, root), flush=True)
    return root


def skip(why):
    print("SKIP: " + why)
    sys.exit(77)


def print_failures(failures):
    """failures: (category, text). Per category a heading and its first three texts (all of them
    with P11MK_VERBOSE=1). Returns {category: [text]}."""
    cats = {}
    for c, t in failures:
        cats.setdefault(c, []).append(t)
    for c, texts in cats.items():
        print("  == %s (%d)" % (c, len(texts)))
        shown = len(texts) if VERBOSE else 3
        for t in texts[:shown]:
            print("     " + t.replace("\n", "\n     "))
        if len(texts) > shown:
            print("     ... and %d more of this kind (P11MK_VERBOSE=1 shows all)" % (len(texts) - shown))
    return cats


def reap_children():
    """Kill and reap what is still running of the processes this test started (Popen objects,
    or pids of pty.fork)."""
    for c in children:
        if isinstance(c, int):
            try:
                os.kill(c, signal.SIGKILL)
                os.waitpid(c, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        elif c.poll() is None:
            c.kill()
            c.wait()


def remove_root(root):
    """The temporary directory goes, unless P11MK_KEEP=1."""
    if os.environ.get("P11MK_KEEP") == "1":
        print("# kept %s" % root)
    else:
        shutil.rmtree(root, ignore_errors=True)


def finish(ok):
    """The closing line; the exit code."""
    print("# total %.1f s" % (time.monotonic() - T0))
    return 0 if ok else 1
