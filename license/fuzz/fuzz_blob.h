/*
 * fuzz_blob.h - the input of the state blob fuzzer (fuzz_blob.c) and its
 * seeds (make_corpus.c): one mode byte, then the blob. The mode byte picks
 *   bits 0-1  the reader: 0 a linear lm_attn handle, 1 a hybrid one, 2 a linear
 *             pool, 3 a hybrid pool (the handle's W and s);
 *   bit 2     the license in force: 1 a context cap (blobs must carry this
 *             process's tag), 0 unlimited;
 *   bit 3     1: the fuzzer replaces the last FUZZ_BLOB_TAG bytes with the
 *             tag of everything before them, so that inputs reach the paths
 *             behind a valid tag.
 * The readers' shapes are fixed so that seeds can match them.
 */
#ifndef LM_FUZZ_BLOB_H
#define LM_FUZZ_BLOB_H

#define FUZZ_BLOB_KV_HEADS 1
#define FUZZ_BLOB_D 2      /* the handles' head dim; the pool's Dk */
#define FUZZ_BLOB_DV 3     /* the pool's Dv */
#define FUZZ_BLOB_WINDOW 2 /* the hybrid handle's W */
#define FUZZ_BLOB_SINKS 1  /* and s */
#define FUZZ_BLOB_TAG 32
#define FUZZ_BLOB_CAPPED 0x04
#define FUZZ_BLOB_SIGN 0x08

#endif /* LM_FUZZ_BLOB_H */
