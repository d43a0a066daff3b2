/* pg_probe: a long-lived PKCS#11 client driven line by line on stdin, for the
 * hostile tests of the postgresql backend (test_pg_hostile.sh). It keeps one
 * session and one user login for its whole life, as a server would, so its
 * key cache and login state live across the other hosts' changes.
 *
 *   pg_probe MODULE LABEL PIN
 *
 * Commands (one per line; each answers one line on stdout, flushed):
 *   find LABEL        find a private key by CKA_LABEL; keep its handle
 *                     -> "h N" or "none"
 *   sign              sign 32 bytes with the kept key (CKM_ECDSA)
 *                     -> "rv 0x..."
 *   label             C_GetAttributeValue(CKA_LABEL) of the kept key
 *                     -> "label TEXT" or "rv 0x..."
 *   state             C_GetSessionInfo -> "state N" or "rv 0x..."
 *   until_fail SECS   sign every 20 ms until a signature fails or SECS pass
 *                     -> "rv 0x... after S" (rv 0x0 after SECS: never failed)
 *   findinit LABEL    C_FindObjectsInit by CKA_LABEL (any class) -> "rv 0x..."
 *   findnext          C_FindObjects for up to 8 -> "n N rv 0x..."
 *   quit
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#include "client_util.h"

static CK_FUNCTION_LIST *f;
static CK_SESSION_HANDLE s;
static CK_OBJECT_HANDLE key;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static CK_RV sign_once(void)
{
    CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
    CK_BYTE data[32] = {1, 2, 3}, sig[256];
    CK_ULONG sl = sizeof(sig);
    CK_RV rv = f->C_SignInit(s, &m, key);
    if (rv != CKR_OK)
        return rv;
    return f->C_Sign(s, data, sizeof(data), sig, &sl);
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: pg_probe MODULE LABEL PIN\n");
        return 2;
    }
    void *h = dlopen(argv[1], RTLD_NOW);
    CK_C_GetFunctionList gfl = h ? (CK_C_GetFunctionList)dlsym(h, "C_GetFunctionList") : NULL;
    if (!gfl || gfl(&f) != CKR_OK) {
        fprintf(stderr, "pg_probe: cannot load %s\n", argv[1]);
        return 2;
    }
    CK_C_INITIALIZE_ARGS ia = {.flags = CKF_OS_LOCKING_OK};
    CK_RV rv = f->C_Initialize(&ia);
    if (rv != CKR_OK) {
        fprintf(stderr, "pg_probe: C_Initialize 0x%lx\n", (unsigned long)rv);
        return 2;
    }
    CK_SLOT_ID slot = client_find_slot(f, "pg_probe", argv[2]);
    if (!slot)
        return 2;
    if ((rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s)) != CKR_OK ||
        (rv = f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)argv[3], strlen(argv[3]))) != CKR_OK) {
        fprintf(stderr, "pg_probe: session/login 0x%lx\n", (unsigned long)rv);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    char line[512];
    while (fgets(line, sizeof(line), stdin)) {
        line[strcspn(line, "\n")] = 0;
        if (strncmp(line, "find ", 5) == 0) {
            CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
            CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_LABEL, line + 5, strlen(line + 5)}};
            CK_ULONG n = 0;
            key = 0;
            if (f->C_FindObjectsInit(s, t, 2) == CKR_OK) {
                f->C_FindObjects(s, &key, 1, &n);
                f->C_FindObjectsFinal(s);
            }
            if (n == 1)
                printf("h %lu\n", (unsigned long)key);
            else
                printf("none\n");
        } else if (strcmp(line, "sign") == 0) {
            printf("rv 0x%lx\n", (unsigned long)sign_once());
        } else if (strcmp(line, "label") == 0) {
            char buf[256];
            CK_ATTRIBUTE a = {CKA_LABEL, buf, sizeof(buf) - 1};
            rv = f->C_GetAttributeValue(s, key, &a, 1);
            if (rv == CKR_OK)
                printf("label %.*s\n", (int)a.ulValueLen, buf);
            else
                printf("rv 0x%lx\n", (unsigned long)rv);
        } else if (strcmp(line, "state") == 0) {
            CK_SESSION_INFO si;
            rv = f->C_GetSessionInfo(s, &si);
            if (rv == CKR_OK)
                printf("state %lu\n", (unsigned long)si.state);
            else
                printf("rv 0x%lx\n", (unsigned long)rv);
        } else if (strncmp(line, "until_fail ", 11) == 0) {
            double secs = atof(line + 11), t0 = now();
            rv = CKR_OK;
            while (now() - t0 < secs && (rv = sign_once()) == CKR_OK)
                usleep(20000);
            printf("rv 0x%lx after %.2f\n", (unsigned long)rv, now() - t0);
        } else if (strncmp(line, "findinit ", 9) == 0) {
            CK_ATTRIBUTE t[] = {{CKA_LABEL, line + 9, strlen(line + 9)}};
            printf("rv 0x%lx\n", (unsigned long)f->C_FindObjectsInit(s, t, 1));
        } else if (strcmp(line, "findnext") == 0) {
            CK_OBJECT_HANDLE hs[8];
            CK_ULONG n = 0;
            rv = f->C_FindObjects(s, hs, 8, &n);
            f->C_FindObjectsFinal(s);
            printf("n %lu rv 0x%lx\n", (unsigned long)n, (unsigned long)rv);
        } else if (strcmp(line, "slots") == 0) {
            CK_SLOT_ID ids[16];
            CK_ULONG n = 16;
            rv = f->C_GetSlotList(CK_FALSE, ids, &n);
            printf("n %lu rv 0x%lx\n", rv == CKR_OK ? (unsigned long)n : 0UL, (unsigned long)rv);
        } else if (strcmp(line, "quit") == 0) {
            break;
        } else {
            printf("?\n");
        }
    }
    f->C_Finalize(NULL);
    return 0;
}
