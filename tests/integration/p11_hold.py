"""p11_hold.py MODULE: an application that keeps the module initialized.
It calls C_Initialize and C_GetSlotList, says "ready", waits for a line on
stdin, calls C_Finalize and says how long that took ("finalize 0.0 s")."""
import os
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p11_ctypes  # noqa: E402

m = p11_ctypes.load(sys.argv[1])
m.initialize()
m.slot_count()
print("ready", flush=True)
sys.stdin.readline()
t = time.time()
m.finalize()
print("finalize %.1f s" % (time.time() - t), flush=True)
