"""The few PKCS#11 calls the shell tests make from Python (ctypes, no
PyKCS11 needed): load(MODULE) -> an object with initialize(), finalize()
and slot_count(), each raising on a return value other than CKR_OK."""
import ctypes

# CK_FUNCTION_LIST: the version (two bytes, padded), then the functions in
# the order of the specification: C_Initialize, C_Finalize, C_GetInfo,
# C_GetFunctionList, C_GetSlotList, ...
_INITIALIZE, _FINALIZE, _GETSLOTLIST = 1, 2, 5
_CK = ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_void_p)
_GSL = ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_ubyte, ctypes.c_void_p, ctypes.POINTER(ctypes.c_ulong))


class Module:
    def __init__(self, path):
        lib = ctypes.CDLL(path)
        fl = ctypes.POINTER(ctypes.c_void_p)()
        rv = lib.C_GetFunctionList(ctypes.byref(fl))
        if rv != 0:
            raise RuntimeError("C_GetFunctionList: 0x%x" % rv)
        self._f = ctypes.cast(fl, ctypes.POINTER(ctypes.c_void_p * 6)).contents

    @staticmethod
    def _check(name, rv):
        if rv != 0:
            raise RuntimeError("%s: 0x%x" % (name, rv))

    def initialize(self):
        self._check("C_Initialize", _CK(self._f[_INITIALIZE])(None))

    def finalize(self):
        self._check("C_Finalize", _CK(self._f[_FINALIZE])(None))

    def slot_count(self):
        n = ctypes.c_ulong(0)
        self._check("C_GetSlotList", _GSL(self._f[_GETSLOTLIST])(1, None, ctypes.byref(n)))
        return n.value


def load(path):
    return Module(path)
