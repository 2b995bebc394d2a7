/*
 * fake_sodium.c - a libsodium impostor for tests/license/test_build.sh: every
 * Ed25519 verification "succeeds". Preloaded (LD_PRELOAD) into a program
 * that links libliquidmemory, it must change nothing: the library carries
 * its own libsodium with hidden symbols, so a forged license stays refused.
 */
int crypto_sign_ed25519_verify_detached(const unsigned char *sig, const unsigned char *m,
                                        unsigned long long mlen, const unsigned char *pk)
{
    (void)sig, (void)m, (void)mlen, (void)pk;
    return 0;
}

int crypto_sign_verify_detached(const unsigned char *sig, const unsigned char *m,
                                unsigned long long mlen, const unsigned char *pk)
{
    (void)sig, (void)m, (void)mlen, (void)pk;
    return 0;
}
