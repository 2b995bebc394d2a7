/* quickstart.c - the README's example: causal prefill, then one decode step. */
#include <liquid_memory.h>
#include <stdio.h>
#include <stdlib.h>

enum { B = 2, L = 1000, E = 256, H = 4 };

int main(void)
{
    lm_attn_config cfg;
    lm_attn *attn;                                  /* fp32 on the CPU, elu+1, normalised: */
    if (lm_attn_config_default(&cfg, E, H) != LM_OK || lm_attn_create(&cfg, &attn) != LM_OK) {
        fprintf(stderr, "create: %s\n", lm_last_error());
        return 1;
    }
    /* nn.MultiheadAttention's layout: in_proj [3E, E], out_proj [E, E]. */
    float *w_in = malloc(sizeof(float) * 3 * E * E), *w_out = malloc(sizeof(float) * E * E);
    float *x = malloc(sizeof(float) * B * L * E), *y = malloc(sizeof(float) * B * L * E);
    float tok[B * E], tok_out[B * E];
    for (int i = 0; i < 3 * E * E; i++) w_in[i] = (float)rand() / RAND_MAX * 0.1f - 0.05f;
    for (int i = 0; i < E * E; i++) w_out[i] = (float)rand() / RAND_MAX * 0.1f - 0.05f;
    for (int i = 0; i < B * L * E; i++) x[i] = (float)rand() / RAND_MAX - 0.5f;
    for (int i = 0; i < B * E; i++) tok[i] = (float)rand() / RAND_MAX - 0.5f;
    lm_weights w = { LM_SIZED(lm_weights), .in_proj_weight = w_in, .out_proj_weight = w_out };
    lm_status st = lm_attn_set_weights(attn, &w);   /* borrowed, not copied */

    lm_tensor tx = lm_tensor_3d(x, LM_F32, LM_CPU, B, L, E);  /* [B, L, E] */
    lm_tensor ty = lm_tensor_3d(y, LM_F32, LM_CPU, B, L, E);
    lm_forward_opts opts = { LM_SIZED(lm_forward_opts), .is_causal = 1, .keep_state = 1 };
    if (st == LM_OK)
        st = lm_attn_forward(attn, &tx, &tx, &tx, &opts, &ty, NULL);
    lm_tensor tt = lm_tensor_2d(tok, LM_F32, LM_CPU, B, E);   /* token L+1: [B, E] */
    lm_tensor to = lm_tensor_2d(tok_out, LM_F32, LM_CPU, B, E);
    if (st == LM_OK)
        st = lm_attn_step(attn, &tt, &to, NULL);   /* O(1): reads and updates the state */
    int64_t pos = 0;
    if (st == LM_OK)
        st = lm_attn_position(attn, &pos);
    printf("%s after %lld tokens: y[0] = %.5f, step[0] = %.5f\n", lm_status_string(st),
           (long long)pos, y[0], tok_out[0]);
    lm_attn_destroy(attn);
    free(w_in), free(w_out), free(x), free(y);
    return st == LM_OK ? 0 : 1;
}
