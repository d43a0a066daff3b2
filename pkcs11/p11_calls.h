/* Generated once from the definitions in the pkcs11/ sources (a script
 * read each `CK_RV C_xxx(params)`), kept by hand since: one line per PKCS#11
 * function that works inside the fork gate, as P11_GATED(name, (params),
 * (arguments)). The compiler checks every line: the wrapper p11_entry.c
 * makes of it calls the function with these arguments, and the function
 * lists take the wrapper in the function's place.
 *
 * Not here: C_Initialize and C_Finalize (they make the gate and take it
 * themselves, around their init_lock), C_WaitForSlotEvent (it may block for
 * ever, so it takes the gate only for each look, and never waits behind a
 * fork there), and the three exported functions (they touch no state). */

P11_GATED(C_GetInfo, (CK_INFO_PTR pInfo), (pInfo))
P11_GATED(C_GetSlotList, (CK_BBOOL tokenPresent, CK_SLOT_ID_PTR pSlotList, CK_ULONG_PTR pulCount),
          (tokenPresent, pSlotList, pulCount))
P11_GATED(C_GetSlotInfo, (CK_SLOT_ID slotID, CK_SLOT_INFO_PTR pInfo), (slotID, pInfo))
P11_GATED(C_GetTokenInfo, (CK_SLOT_ID slotID, CK_TOKEN_INFO_PTR pInfo), (slotID, pInfo))
P11_GATED(C_GetMechanismList, (CK_SLOT_ID slotID, CK_MECHANISM_TYPE_PTR pMechanismList, CK_ULONG_PTR pulCount),
          (slotID, pMechanismList, pulCount))
P11_GATED(C_GetMechanismInfo, (CK_SLOT_ID slotID, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR pInfo),
          (slotID, type, pInfo))
P11_GATED(C_InitToken, (CK_SLOT_ID slotID, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen, CK_UTF8CHAR_PTR pLabel),
          (slotID, pPin, ulPinLen, pLabel))
P11_GATED(C_InitPIN, (CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen), (hSession, pPin, ulPinLen))
P11_GATED(C_SetPIN,
          (CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pOldPin, CK_ULONG ulOldLen, CK_UTF8CHAR_PTR pNewPin,
           CK_ULONG ulNewLen),
          (hSession, pOldPin, ulOldLen, pNewPin, ulNewLen))
P11_GATED(C_OpenSession,
          (CK_SLOT_ID slotID, CK_FLAGS flags, CK_VOID_PTR pApplication, CK_NOTIFY Notify,
           CK_SESSION_HANDLE_PTR phSession),
          (slotID, flags, pApplication, Notify, phSession))
P11_GATED(C_CloseSession, (CK_SESSION_HANDLE hSession), (hSession))
P11_GATED(C_CloseAllSessions, (CK_SLOT_ID slotID), (slotID))
P11_GATED(C_GetSessionInfo, (CK_SESSION_HANDLE hSession, CK_SESSION_INFO_PTR pInfo), (hSession, pInfo))
P11_GATED(C_GetOperationState,
          (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pOperationState, CK_ULONG_PTR pulOperationStateLen),
          (hSession, pOperationState, pulOperationStateLen))
P11_GATED(C_SetOperationState,
          (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pOperationState, CK_ULONG ulOperationStateLen,
           CK_OBJECT_HANDLE hEncryptionKey, CK_OBJECT_HANDLE hAuthenticationKey),
          (hSession, pOperationState, ulOperationStateLen, hEncryptionKey, hAuthenticationKey))
P11_GATED(C_Login, (CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen),
          (hSession, userType, pPin, ulPinLen))
P11_GATED(C_Logout, (CK_SESSION_HANDLE hSession), (hSession))
P11_GATED(C_CreateObject,
          (CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phObject),
          (hSession, pTemplate, ulCount, phObject))
P11_GATED(C_CopyObject,
          (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount,
           CK_OBJECT_HANDLE_PTR phNewObject),
          (hSession, hObject, pTemplate, ulCount, phNewObject))
P11_GATED(C_DestroyObject, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject), (hSession, hObject))
P11_GATED(C_GetObjectSize, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ULONG_PTR pulSize),
          (hSession, hObject, pulSize))
P11_GATED(C_GetAttributeValue,
          (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount),
          (hSession, hObject, pTemplate, ulCount))
P11_GATED(C_SetAttributeValue,
          (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount),
          (hSession, hObject, pTemplate, ulCount))
P11_GATED(C_FindObjectsInit, (CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount),
          (hSession, pTemplate, ulCount))
P11_GATED(C_FindObjects,
          (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE_PTR phObject, CK_ULONG ulMaxObjectCount,
           CK_ULONG_PTR pulObjectCount),
          (hSession, phObject, ulMaxObjectCount, pulObjectCount))
P11_GATED(C_FindObjectsFinal, (CK_SESSION_HANDLE hSession), (hSession))
P11_GATED(C_EncryptInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey),
          (hSession, pMechanism, hKey))
P11_GATED(C_Encrypt,
          (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pEncryptedData,
           CK_ULONG_PTR pulEncryptedDataLen),
          (hSession, pData, ulDataLen, pEncryptedData, pulEncryptedDataLen))
P11_GATED(C_EncryptUpdate,
          (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen, CK_BYTE_PTR pEncryptedPart,
           CK_ULONG_PTR pulEncryptedPartLen),
          (hSession, pPart, ulPartLen, pEncryptedPart, pulEncryptedPartLen))
P11_GATED(C_EncryptFinal,
          (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pLastEncryptedPart, CK_ULONG_PTR pulLastEncryptedPartLen),
          (hSession, pLastEncryptedPart, pulLastEncryptedPartLen))
P11_GATED(C_DecryptInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey),
          (hSession, pMechanism, hKey))
P11_GATED(C_Decrypt,
          (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedData, CK_ULONG ulEncryptedDataLen, CK_BYTE_PTR pData,
           CK_ULONG_PTR pulDataLen),
          (hSession, pEncryptedData, ulEncryptedDataLen, pData, pulDataLen))
P11_GATED(C_DecryptUpdate,
          (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedPart, CK_ULONG ulEncryptedPartLen, CK_BYTE_PTR pPart,
           CK_ULONG_PTR pulPartLen),
          (hSession, pEncryptedPart, ulEncryptedPartLen, pPart, pulPartLen))
P11_GATED(C_DecryptFinal, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pLastPart, CK_ULONG_PTR pulLastPartLen),
          (hSession, pLastPart, pulLastPartLen))
P11_GATED(C_DigestInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism), (hSession, pMechanism))
P11_GATED(C_Digest,
          (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pDigest,
           CK_ULONG_PTR pulDigestLen),
          (hSession, pData, ulDataLen, pDigest, pulDigestLen))
P11_GATED(C_DigestUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen),
          (hSession, pPart, ulPartLen))
P11_GATED(C_DigestKey, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hKey), (hSession, hKey))
P11_GATED(C_DigestFinal, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pDigest, CK_ULONG_PTR pulDigestLen),
          (hSession, pDigest, pulDigestLen))
P11_GATED(C_SignInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey),
          (hSession, pMechanism, hKey))
P11_GATED(C_Sign,
          (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature,
           CK_ULONG_PTR pulSignatureLen),
          (hSession, pData, ulDataLen, pSignature, pulSignatureLen))
P11_GATED(C_SignUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen),
          (hSession, pPart, ulPartLen))
P11_GATED(C_SignFinal, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen),
          (hSession, pSignature, pulSignatureLen))
P11_GATED(C_SignRecoverInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey),
          (hSession, pMechanism, hKey))
P11_GATED(C_SignRecover,
          (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature,
           CK_ULONG_PTR pulSignatureLen),
          (hSession, pData, ulDataLen, pSignature, pulSignatureLen))
P11_GATED(C_VerifyInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey),
          (hSession, pMechanism, hKey))
P11_GATED(C_Verify,
          (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature,
           CK_ULONG ulSignatureLen),
          (hSession, pData, ulDataLen, pSignature, ulSignatureLen))
P11_GATED(C_VerifyUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen),
          (hSession, pPart, ulPartLen))
P11_GATED(C_VerifyFinal, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen),
          (hSession, pSignature, ulSignatureLen))
P11_GATED(C_VerifyRecoverInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey),
          (hSession, pMechanism, hKey))
P11_GATED(C_VerifyRecover,
          (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen, CK_BYTE_PTR pData,
           CK_ULONG_PTR pulDataLen),
          (hSession, pSignature, ulSignatureLen, pData, pulDataLen))
P11_GATED(C_DigestEncryptUpdate,
          (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen, CK_BYTE_PTR pEncryptedPart,
           CK_ULONG_PTR pulEncryptedPartLen),
          (hSession, pPart, ulPartLen, pEncryptedPart, pulEncryptedPartLen))
P11_GATED(C_DecryptDigestUpdate,
          (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedPart, CK_ULONG ulEncryptedPartLen, CK_BYTE_PTR pPart,
           CK_ULONG_PTR pulPartLen),
          (hSession, pEncryptedPart, ulEncryptedPartLen, pPart, pulPartLen))
P11_GATED(C_SignEncryptUpdate,
          (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen, CK_BYTE_PTR pEncryptedPart,
           CK_ULONG_PTR pulEncryptedPartLen),
          (hSession, pPart, ulPartLen, pEncryptedPart, pulEncryptedPartLen))
P11_GATED(C_DecryptVerifyUpdate,
          (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedPart, CK_ULONG ulEncryptedPartLen, CK_BYTE_PTR pPart,
           CK_ULONG_PTR pulPartLen),
          (hSession, pEncryptedPart, ulEncryptedPartLen, pPart, pulPartLen))
P11_GATED(C_GenerateKey,
          (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount,
           CK_OBJECT_HANDLE_PTR phKey),
          (hSession, pMechanism, pTemplate, ulCount, phKey))
P11_GATED(C_GenerateKeyPair,
          (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_ATTRIBUTE_PTR pPublicKeyTemplate,
           CK_ULONG ulPublicKeyAttributeCount, CK_ATTRIBUTE_PTR pPrivateKeyTemplate,
           CK_ULONG ulPrivateKeyAttributeCount, CK_OBJECT_HANDLE_PTR phPublicKey, CK_OBJECT_HANDLE_PTR phPrivateKey),
          (hSession, pMechanism, pPublicKeyTemplate, ulPublicKeyAttributeCount, pPrivateKeyTemplate,
           ulPrivateKeyAttributeCount, phPublicKey, phPrivateKey))
P11_GATED(C_WrapKey,
          (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hWrappingKey,
           CK_OBJECT_HANDLE hKey, CK_BYTE_PTR pWrappedKey, CK_ULONG_PTR pulWrappedKeyLen),
          (hSession, pMechanism, hWrappingKey, hKey, pWrappedKey, pulWrappedKeyLen))
P11_GATED(C_UnwrapKey,
          (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hUnwrappingKey,
           CK_BYTE_PTR pWrappedKey, CK_ULONG ulWrappedKeyLen, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulAttributeCount,
           CK_OBJECT_HANDLE_PTR phKey),
          (hSession, pMechanism, hUnwrappingKey, pWrappedKey, ulWrappedKeyLen, pTemplate, ulAttributeCount, phKey))
P11_GATED(C_DeriveKey,
          (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hBaseKey,
           CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulAttributeCount, CK_OBJECT_HANDLE_PTR phKey),
          (hSession, pMechanism, hBaseKey, pTemplate, ulAttributeCount, phKey))
P11_GATED(C_SeedRandom, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSeed, CK_ULONG ulSeedLen),
          (hSession, pSeed, ulSeedLen))
P11_GATED(C_GenerateRandom, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pRandomData, CK_ULONG ulRandomLen),
          (hSession, pRandomData, ulRandomLen))
P11_GATED(C_GetFunctionStatus, (CK_SESSION_HANDLE hSession), (hSession))
P11_GATED(C_CancelFunction, (CK_SESSION_HANDLE hSession), (hSession))
P11_GATED(C_LoginUser,
          (CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen,
           CK_UTF8CHAR_PTR pUsername, CK_ULONG ulUsernameLen),
          (hSession, userType, pPin, ulPinLen, pUsername, ulUsernameLen))
P11_GATED(C_SessionCancel, (CK_SESSION_HANDLE hSession, CK_FLAGS flags), (hSession, flags))
P11_GATED(C_MessageEncryptInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey),
          (hSession, pMechanism, hKey))
P11_GATED(C_EncryptMessage,
          (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen, CK_BYTE_PTR pAssociatedData,
           CK_ULONG ulAssociatedDataLen, CK_BYTE_PTR pPlaintext, CK_ULONG ulPlaintextLen, CK_BYTE_PTR pCiphertext,
           CK_ULONG_PTR pulCiphertextLen),
          (hSession, pParameter, ulParameterLen, pAssociatedData, ulAssociatedDataLen, pPlaintext, ulPlaintextLen,
           pCiphertext, pulCiphertextLen))
P11_GATED(C_EncryptMessageBegin,
          (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen, CK_BYTE_PTR pAssociatedData,
           CK_ULONG ulAssociatedDataLen),
          (hSession, pParameter, ulParameterLen, pAssociatedData, ulAssociatedDataLen))
P11_GATED(C_EncryptMessageNext,
          (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen, CK_BYTE_PTR pPlaintextPart,
           CK_ULONG ulPlaintextPartLen, CK_BYTE_PTR pCiphertextPart, CK_ULONG_PTR pulCiphertextPartLen, CK_FLAGS flags),
          (hSession, pParameter, ulParameterLen, pPlaintextPart, ulPlaintextPartLen, pCiphertextPart,
           pulCiphertextPartLen, flags))
P11_GATED(C_MessageEncryptFinal, (CK_SESSION_HANDLE hSession), (hSession))
P11_GATED(C_MessageDecryptInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey),
          (hSession, pMechanism, hKey))
P11_GATED(C_DecryptMessage,
          (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen, CK_BYTE_PTR pAssociatedData,
           CK_ULONG ulAssociatedDataLen, CK_BYTE_PTR pCiphertext, CK_ULONG ulCiphertextLen, CK_BYTE_PTR pPlaintext,
           CK_ULONG_PTR pulPlaintextLen),
          (hSession, pParameter, ulParameterLen, pAssociatedData, ulAssociatedDataLen, pCiphertext, ulCiphertextLen,
           pPlaintext, pulPlaintextLen))
P11_GATED(C_DecryptMessageBegin,
          (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen, CK_BYTE_PTR pAssociatedData,
           CK_ULONG ulAssociatedDataLen),
          (hSession, pParameter, ulParameterLen, pAssociatedData, ulAssociatedDataLen))
P11_GATED(C_DecryptMessageNext,
          (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen, CK_BYTE_PTR pCiphertextPart,
           CK_ULONG ulCiphertextPartLen, CK_BYTE_PTR pPlaintextPart, CK_ULONG_PTR pulPlaintextPartLen, CK_FLAGS flags),
          (hSession, pParameter, ulParameterLen, pCiphertextPart, ulCiphertextPartLen, pPlaintextPart,
           pulPlaintextPartLen, flags))
P11_GATED(C_MessageDecryptFinal, (CK_SESSION_HANDLE hSession), (hSession))
P11_GATED(C_MessageSignInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey),
          (hSession, pMechanism, hKey))
P11_GATED(C_SignMessage,
          (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen, CK_BYTE_PTR pData,
           CK_ULONG ulDataLen, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen),
          (hSession, pParameter, ulParameterLen, pData, ulDataLen, pSignature, pulSignatureLen))
P11_GATED(C_SignMessageBegin, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen),
          (hSession, pParameter, ulParameterLen))
P11_GATED(C_SignMessageNext,
          (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen, CK_BYTE_PTR pDataPart,
           CK_ULONG ulDataPartLen, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen),
          (hSession, pParameter, ulParameterLen, pDataPart, ulDataPartLen, pSignature, pulSignatureLen))
P11_GATED(C_MessageSignFinal, (CK_SESSION_HANDLE hSession), (hSession))
P11_GATED(C_MessageVerifyInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey),
          (hSession, pMechanism, hKey))
P11_GATED(C_VerifyMessage,
          (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen, CK_BYTE_PTR pData,
           CK_ULONG ulDataLen, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen),
          (hSession, pParameter, ulParameterLen, pData, ulDataLen, pSignature, ulSignatureLen))
P11_GATED(C_VerifyMessageBegin, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen),
          (hSession, pParameter, ulParameterLen))
P11_GATED(C_VerifyMessageNext,
          (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen, CK_BYTE_PTR pDataPart,
           CK_ULONG ulDataPartLen, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen),
          (hSession, pParameter, ulParameterLen, pDataPart, ulDataPartLen, pSignature, ulSignatureLen))
P11_GATED(C_MessageVerifyFinal, (CK_SESSION_HANDLE hSession), (hSession))
