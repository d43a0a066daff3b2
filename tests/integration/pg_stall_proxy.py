# A stalling proxy for the PostgreSQL tests (pg_lib.sh: stall_proxy_start):
#   python3 pg_stall_proxy.py LISTEN_SOCKET CLUSTER_SOCKET SILENT_FILE
# Each connection to LISTEN_SOCKET is relayed to the cluster's socket until
# the client sends LISTEN: from then on nothing more is relayed either way
# and the connection stays open. Once SILENT_FILE exists, the connections
# it relays are cut and new ones are accepted and never answered.
import os, socket, sys, threading, time
srv = socket.socket(socket.AF_UNIX); srv.bind(sys.argv[1]); srv.listen(64)
held, lock = [], threading.Lock()
def relay(a, b, cut):
    try:
        while not cut.is_set():
            d = a.recv(65536)
            if not d:
                break
            if b"LISTEN " in d:
                cut.set()
                break
            b.sendall(d)
    except OSError:
        pass
    if not cut.is_set():
        for s in (a, b):
            try: s.shutdown(socket.SHUT_RDWR)
            except OSError: pass
def serve(c):
    u = socket.socket(socket.AF_UNIX); u.connect(sys.argv[2])
    cut = threading.Event()
    with lock: held.append((c, u))
    threading.Thread(target=relay, args=(c, u, cut), daemon=True).start()
    threading.Thread(target=relay, args=(u, c, cut), daemon=True).start()
def watch():
    while not os.path.exists(sys.argv[3]):
        time.sleep(0.05)
    with lock:
        for pair in held:
            for s in pair:
                try: s.shutdown(socket.SHUT_RDWR)
                except OSError: pass
threading.Thread(target=watch, daemon=True).start()
silent = []
while True:
    c, _ = srv.accept()
    if os.path.exists(sys.argv[3]):
        silent.append(c)  # accepted, never answered
    else:
        serve(c)
