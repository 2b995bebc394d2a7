/*
 * test_sign.c - Ed25519 through our wrappers (license/verify.c, and the
 * vendor side license/vendor/sign.c) against the known answers of RFC 8032,
 * section 7.1 (TEST 1, 2, 3, 1024, SHA(abc)): key from seed, signature byte
 * for byte, verification; then the negative cases a verifier must refuse
 * (any changed bit, a non-canonical S = S + L, a small-order public key).
 */
#include "lt.h"

#include <stdlib.h>
#include <string.h>

typedef struct vector {
    const char *name, *seed, *pk, *msg, *sig; /* hex */
} vector;

static const vector rfc8032[] = {
    { "TEST 1",
      "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
      "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
      "",
      "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
      "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b" },
    { "TEST 2",
      "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
      "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
      "72",
      "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
      "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00" },
    { "TEST 3",
      "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
      "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
      "af82",
      "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
      "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a" },
    { "TEST 1024",
      "f5e5767cf153319517630f226876b86c8160cc583bc013744c6bf255f5cc0ee5",
      "278117fc144c72340f67d0f2316e8386ceffbf2b2428c9c51fef7c597f1d426e",
      "08b8b2b733424243760fe426a4b54908632110a66c2f6591eabd3345e3e4eb98"
      "fa6e264bf09efe12ee50f8f54e9f77b1e355f6c50544e23fb1433ddf73be84d8"
      "79de7c0046dc4996d9e773f4bc9efe5738829adb26c81b37c93a1b270b20329d"
      "658675fc6ea534e0810a4432826bf58c941efb65d57a338bbd2e26640f89ffbc"
      "1a858efcb8550ee3a5e1998bd177e93a7363c344fe6b199ee5d02e82d522c4fe"
      "ba15452f80288a821a579116ec6dad2b3b310da903401aa62100ab5d1a36553e"
      "06203b33890cc9b832f79ef80560ccb9a39ce767967ed628c6ad573cb116dbef"
      "efd75499da96bd68a8a97b928a8bbc103b6621fcde2beca1231d206be6cd9ec7"
      "aff6f6c94fcd7204ed3455c68c83f4a41da4af2b74ef5c53f1d8ac70bdcb7ed1"
      "85ce81bd84359d44254d95629e9855a94a7c1958d1f8ada5d0532ed8a5aa3fb2"
      "d17ba70eb6248e594e1a2297acbbb39d502f1a8c6eb6f1ce22b3de1a1f40cc24"
      "554119a831a9aad6079cad88425de6bde1a9187ebb6092cf67bf2b13fd65f270"
      "88d78b7e883c8759d2c4f5c65adb7553878ad575f9fad878e80a0c9ba63bcbcc"
      "2732e69485bbc9c90bfbd62481d9089beccf80cfe2df16a2cf65bd92dd597b07"
      "07e0917af48bbb75fed413d238f5555a7a569d80c3414a8d0859dc65a46128ba"
      "b27af87a71314f318c782b23ebfe808b82b0ce26401d2e22f04d83d1255dc51a"
      "ddd3b75a2b1ae0784504df543af8969be3ea7082ff7fc9888c144da2af58429e"
      "c96031dbcad3dad9af0dcbaaaf268cb8fcffead94f3c7ca495e056a9b47acdb7"
      "51fb73e666c6c655ade8297297d07ad1ba5e43f1bca32301651339e22904cc8c"
      "42f58c30c04aafdb038dda0847dd988dcda6f3bfd15c4b4c4525004aa06eeff8"
      "ca61783aacec57fb3d1f92b0fe2fd1a85f6724517b65e614ad6808d6f6ee34df"
      "f7310fdc82aebfd904b01e1dc54b2927094b2db68d6f903b68401adebf5a7e08"
      "d78ff4ef5d63653a65040cf9bfd4aca7984a74d37145986780fc0b16ac451649"
      "de6188a7dbdf191f64b5fc5e2ab47b57f7f7276cd419c17a3ca8e1b939ae49e4"
      "88acba6b965610b5480109c8b17b80e1b7b750dfc7598d5d5011fd2dcc5600a3"
      "2ef5b52a1ecc820e308aa342721aac0943bf6686b64b2579376504ccc493d97e"
      "6aed3fb0f9cd71a43dd497f01f17c0e2cb3797aa2a2f256656168e6c496afc5f"
      "b93246f6b1116398a346f1a641f3b041e989f7914f90cc2c7fff357876e506b5"
      "0d334ba77c225bc307ba537152f3f1610e4eafe595f6d9d90d11faa933a15ef1"
      "369546868a7f3a45a96768d40fd9d03412c091c6315cf4fde7cb68606937380d"
      "b2eaaa707b4c4185c32eddcdd306705e4dc1ffc872eeee475a64dfac86aba41c"
      "0618983f8741c5ef68d3a101e8a3b8cac60c905c15fc910840b94c00a0b9d0",
      "0aab4c900501b3e24d7cdf4663326a3a87df5e4843b2cbdb67cbf6e460fec350"
      "aa5371b1508f9f4528ecea23c436d94b5e8fcd4f681e30a6ac00a9704a188a03" },
    { "TEST SHA(abc)",
      "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
      "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
      "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
      "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
      "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b589"
      "09351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704" },
};
#define N_VECTORS (sizeof rfc8032 / sizeof *rfc8032)

/* Decodes hex into a fresh buffer; *n gets its length. */
static uint8_t *unhex(const char *hex, size_t *n)
{
    size_t len = strlen(hex);
    uint8_t *out = malloc(len / 2 + 1);
    ck_assert(out != NULL);
    ck_assert(sodium_hex2bin(out, len / 2 + 1, hex, len, NULL, n, NULL) == 0 && *n == len / 2);
    return out;
}

START_TEST(rfc8032_known_answers)
{
    const vector *v = &rfc8032[_i];
    size_t n_seed, n_pk, n_msg, n_sig;
    uint8_t *seed = unhex(v->seed, &n_seed), *want_pk = unhex(v->pk, &n_pk);
    uint8_t *msg = unhex(v->msg, &n_msg), *want_sig = unhex(v->sig, &n_sig);
    ck_assert(n_seed == LML_SEED_BYTES && n_pk == LML_PUBLIC_KEY_BYTES &&
              n_sig == LML_SIGNATURE_BYTES);
    uint8_t pk[LML_PUBLIC_KEY_BYTES], sk[LML_SECRET_KEY_BYTES], sig[LML_SIGNATURE_BYTES];
    ck_assert(lml_keypair_from_seed(pk, sk, seed) == 0);
    ck_assert_msg(memcmp(pk, want_pk, sizeof pk) == 0, "%s: public key differs", v->name);
    ck_assert(lml_sign(sig, msg, n_msg, sk) == 0);
    ck_assert_msg(memcmp(sig, want_sig, sizeof sig) == 0, "%s: signature differs", v->name);
    ck_assert_msg(lml_verify(want_sig, msg, n_msg, want_pk) == 0, "%s: does not verify", v->name);
    free(seed), free(want_pk), free(msg), free(want_sig);
}
END_TEST

/* Every single-bit change of signature, message or key is refused. */
START_TEST(rfc8032_any_bit_flipped_is_refused)
{
    const vector *v = &rfc8032[_i];
    size_t n_pk, n_msg, n_sig;
    uint8_t *pk = unhex(v->pk, &n_pk), *msg = unhex(v->msg, &n_msg), *sig = unhex(v->sig, &n_sig);
    for (size_t b = 0; b < 8 * n_sig; b++) {
        sig[b / 8] ^= (uint8_t)(1u << (b % 8));
        ck_assert_msg(lml_verify(sig, msg, n_msg, pk) != 0, "%s: signature bit %zu", v->name, b);
        sig[b / 8] ^= (uint8_t)(1u << (b % 8));
    }
    for (size_t b = 0; b < 8 * n_msg && b < 8 * 64; b++) {
        msg[b / 8] ^= (uint8_t)(1u << (b % 8));
        ck_assert_msg(lml_verify(sig, msg, n_msg, pk) != 0, "%s: message bit %zu", v->name, b);
        msg[b / 8] ^= (uint8_t)(1u << (b % 8));
    }
    for (size_t b = 0; b < 8 * n_pk; b++) {
        pk[b / 8] ^= (uint8_t)(1u << (b % 8));
        ck_assert_msg(lml_verify(sig, msg, n_msg, pk) != 0, "%s: key bit %zu", v->name, b);
        pk[b / 8] ^= (uint8_t)(1u << (b % 8));
    }
    ck_assert(lml_verify(sig, msg, n_msg, pk) == 0);
    free(pk), free(msg), free(sig);
}
END_TEST

/* S + L verifies under a lax verifier (the same point); libsodium must refuse it. */
START_TEST(non_canonical_s_is_refused)
{
    /* L = 2^252 + 27742317777372353535851937790883648493, little-endian */
    static const uint8_t L[32] = { 0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58,
                                   0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
                                   0,    0,    0,    0,    0,    0,    0,    0,
                                   0,    0,    0,    0,    0,    0,    0,    0x10 };
    const vector *v = &rfc8032[0];
    size_t n_pk, n_msg, n_sig;
    uint8_t *pk = unhex(v->pk, &n_pk), *msg = unhex(v->msg, &n_msg), *sig = unhex(v->sig, &n_sig);
    unsigned carry = 0;
    for (int i = 0; i < 32; i++) {
        unsigned s = sig[32 + i] + L[i] + carry;
        sig[32 + i] = (uint8_t)s;
        carry = s >> 8;
    }
    ck_assert_uint_eq(carry, 0); /* S + L still fits the 32 bytes of S */
    ck_assert(lml_verify(sig, msg, n_msg, pk) != 0);
    free(pk), free(msg), free(sig);
}
END_TEST

/* A small-order public key (the identity point) with a signature R = identity,
 * S = 0 "verifies" any message under a lax verifier. */
START_TEST(small_order_key_is_refused)
{
    uint8_t pk[32] = { 1 }, sig[64] = { 1 };
    const uint8_t msg[] = "any message";
    ck_assert(lml_verify(sig, msg, sizeof msg - 1, pk) != 0);
}
END_TEST

START_TEST(sign_then_verify_random_keys)
{
    uint8_t pk[LML_PUBLIC_KEY_BYTES], sk[LML_SECRET_KEY_BYTES], sig[LML_SIGNATURE_BYTES];
    uint8_t msg[300];
    for (int i = 0; i < 20; i++) {
        lt_random_key(pk, sk);
        randombytes_buf(msg, sizeof msg);
        size_t n = (size_t)i * 15;
        ck_assert(lml_sign(sig, msg, n, sk) == 0);
        ck_assert(lml_verify(sig, msg, n, pk) == 0);
        uint8_t other_pk[LML_PUBLIC_KEY_BYTES], other_sk[LML_SECRET_KEY_BYTES];
        lt_random_key(other_pk, other_sk);
        ck_assert(lml_verify(sig, msg, n, other_pk) != 0);
    }
}
END_TEST

Suite *sign_suite(void)
{
    Suite *s = suite_create("sign");
    TCase *tc = tcase_create("ed25519");
    tcase_add_loop_test(tc, rfc8032_known_answers, 0, N_VECTORS);
    tcase_add_loop_test(tc, rfc8032_any_bit_flipped_is_refused, 0, N_VECTORS);
    tcase_add_test(tc, non_canonical_s_is_refused);
    tcase_add_test(tc, small_order_key_is_refused);
    tcase_add_test(tc, sign_then_verify_random_keys);
    suite_add_tcase(s, tc);
    return s;
}
