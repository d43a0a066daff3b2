/* Session-object lifecycle, single thread (the claims of the move into token/):
 * private dropped at C_Logout, all dropped with their session, with the last
 * session, at C_InitToken; visible to all sessions of the application;
 * private hidden when not logged in; a handle of one token not usable on
 * another. Prints each check; exits 1 if any fails. */
#include "common.h"

static int fails;
#define EXPECT(cond, what) do { int ok_ = (cond); printf("%s: %s\n", ok_ ? "ok  " : "FAIL", what); if (!ok_) fails++; } while (0)

static CK_OBJECT_HANDLE mk(CK_SESSION_HANDLE s, bool priv, CK_RV *rvp)
{
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_BBOOL p = priv;
    CK_ATTRIBUTE a[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_PRIVATE, &p, 1}, {CKA_TOKEN, &no, 1}};
    CK_OBJECT_HANDLE o = 0;
    CK_RV rv = f->C_CreateObject(s, a, 3, &o);
    if (rvp) *rvp = rv;
    return o;
}
static bool exists(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o)
{
    CK_ULONG sz;
    return f->C_GetObjectSize(s, o, &sz) == CKR_OK;
}
static CK_ULONG count(CK_SESSION_HANDLE s)
{
    CK_OBJECT_HANDLE v[64];
    CK_ULONG n = 0;
    CK_ATTRIBUTE q[] = {{CKA_TOKEN, &no, 1}};
    f->C_FindObjectsInit(s, q, 1);
    f->C_FindObjects(s, v, 64, &n);
    f->C_FindObjectsFinal(s);
    return n;
}

int main(void)
{
    setup();
    CK_SESSION_HANDLE s2, ro;
    CK_RV rv;
    CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s2));
    CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &ro));
    CK_OBJECT_HANDLE pub = mk(s2, false, NULL), priv = mk(s2, true, NULL);
    CK_OBJECT_HANDLE ropriv = mk(ro, true, &rv);
    EXPECT(rv == CKR_OK, "R/O session may create a private session object when logged in");
    EXPECT(exists(h, pub) && exists(h, priv) && exists(ro, priv), "visible to the other sessions");
    EXPECT(count(h) == 3, "find sees 3");
    CHECK(f->C_Logout(h));
    EXPECT(exists(h, pub), "public survives logout");
    EXPECT(!exists(h, priv), "private hidden after logout");
    mk(h, true, &rv);
    EXPECT(rv == CKR_USER_NOT_LOGGED_IN, "private create refused when logged out");
    CHECK(f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)PIN, strlen(PIN)));
    EXPECT(!exists(h, priv) && !exists(h, ropriv), "private destroyed at logout");
    EXPECT(count(h) == 1, "find sees 1 after logout+login");
    CHECK(f->C_CloseSession(s2));
    EXPECT(!exists(h, pub), "destroyed with its session");
    CK_OBJECT_HANDLE mine = mk(h, false, NULL);
    CHECK(f->C_CloseSession(ro));
    EXPECT(exists(h, mine), "survives another session's close");
    /* a second token */
    CK_SLOT_ID slots[16];
    CK_ULONG ns = 16;
    CHECK(f->C_GetSlotList(CK_FALSE, slots, &ns));
    CK_UTF8CHAR label[32];
    memset(label, ' ', 32);
    memcpy(label, "second", 6);
    CK_SLOT_ID other = slots[ns - 1];
    if (other != slot && f->C_InitToken(other, (CK_UTF8CHAR_PTR)SO, strlen(SO), label) == CKR_OK) {
        CK_SESSION_HANDLE o2;
        CHECK(f->C_OpenSession(other, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &o2));
        EXPECT(!exists(o2, mine), "handle of token 1 invalid on token 2");
        CK_ATTRIBUTE lab = {CKA_LABEL, "x", 1};
        EXPECT(f->C_SetAttributeValue(o2, mine, &lab, 1) != CKR_OK, "no set across tokens");
        EXPECT(f->C_DestroyObject(o2, mine) != CKR_OK, "no destroy across tokens");
        EXPECT(count(o2) == 0, "find on token 2 sees none of token 1");
        CHECK(f->C_CloseSession(o2));
    } else printf("skip: no second token (slots %lu)\n", ns);
    EXPECT(exists(h, mine), "still there");
    CHECK(f->C_CloseAllSessions(slot));
    CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h));
    EXPECT(!exists(h, mine), "gone with the last session");
    CK_OBJECT_HANDLE again = mk(h, false, NULL);
    CHECK(f->C_CloseSession(h));
    CK_UTF8CHAR l2[32];
    memset(l2, ' ', 32);
    CHECK(f->C_InitToken(slot, (CK_UTF8CHAR_PTR)SO, strlen(SO), l2));
    CHECK(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h));
    EXPECT(!exists(h, again), "gone after C_InitToken");
    teardown();
    printf("%d failure(s)\n", fails);
    return fails ? 1 : 0;
}
