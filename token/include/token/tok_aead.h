/* p11mk token layer: AEAD (AES-GCM, AES-CCM, ChaCha20-Poly1305), tok_aead.c. */
#ifndef P11MK_TOK_AEAD_H
#define P11MK_TOK_AEAD_H

#include "token/tok_mech.h"

/* PKCS#11 3.0 values that p11-kit 0.24's header lacks. */
#ifndef CKK_CHACHA20
#define CKK_CHACHA20 0x33UL
#endif
#ifndef CKM_CHACHA20_KEY_GEN
#define CKM_CHACHA20_KEY_GEN 0x1225UL
#endif
#ifndef CKM_CHACHA20_POLY1305
#define CKM_CHACHA20_POLY1305 0x4021UL
#endif

#endif
