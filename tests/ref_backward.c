/*
 * ref_backward.c - the float64 reference of the core backward
 * (lm_linear_attn_backward) for the case grid both backends run
 * (backward_cases.c); test_backward.c checks it against central
 * differences of the recurrence. See ref_backward in ref.h.
 *
 * Per (batch, kv head) the quadratic form
 *   o_t = (g^u(t) phi(q_t) S_0 + sum_{s in keys(t)} g^(u(t)-u(s)) (phi q_t . phi k_s) v_s) / den_t
 * with u(t) the unmasked keys among 0..t (a masked key is no step of the
 * recurrence, so it does not decay the state either: docs/DESIGN.md §2),
 * differentiated by hand, O(L Lk), with no chunks; the final state
 * S_Lk = g^u(Lk-1) S_0 + sum_s g^(u(Lk-1)-u(s)) phi(k_s) v_s^T (z likewise)
 * adds the terms of dstate_out, dnormalizer_out.
 */
#include "ref.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static double dphi(int fm, double x)
{
    return fm == LM_FEATURE_ELU1 ? (x > 0 ? 1 : exp(x)) : fm == LM_FEATURE_RELU ? (x > 0) : 1;
}

static int64_t off(const ref_view *v, int64_t b, int64_t t, int64_t h, int64_t d)
{
    return b * v->s[0] + t * v->s[1] + h * v->s[2] + d * v->s[3];
}

static void *scratch(int64_t n, size_t size)
{
    void *x = calloc((size_t)(n > 0 ? n : 1), size);
    if (!x)
        abort(); /* inside a parallel loop: no ck_assert there */
    return x;
}

/* The gradients of (batch b, kv head hk): its G query heads, its keys, its state. */
static void one_head(const ref_problem *p, const ref_grads *gr, int mag, int64_t b, int64_t hk)
{
    const int64_t L = p->L, Lk = p->Lk, Hkv = p->Hkv, Dk = p->Dk, Dv = p->Dv, G = p->Hq / p->Hkv;
    const int64_t bh = b * Hkv + hk, fm = p->feature_map;
    const double g = p->decay ? (double)p->decay[hk] : 1.0;
#define M(x) (mag ? fabs(x) : (x))
    double *K = scratch(Lk * Dk, sizeof(double)), *V = scratch(Lk * Dv, sizeof(double));
    double *dK = scratch(Lk * Dk, sizeof(double)), *dV = scratch(Lk * Dv, sizeof(double));
    double *a = scratch(Lk, sizeof(double)), *S0 = scratch(Dk * Dv, sizeof(double));
    double *Q = scratch(Dk, sizeof(double)), *dQ = scratch(Dk, sizeof(double));
    double *z0 = scratch(Dk, sizeof(double)), *num = scratch(Dv, sizeof(double));
    double *dnum = scratch(Dv, sizeof(double)), *dout = scratch(Dv, sizeof(double));
    /* u[s + 1]: unmasked keys among 0..s, so g's exponent from after key s to
     * after position t is u[t + 1] - u[s + 1] */
    int64_t *u = scratch(Lk + 1, sizeof(int64_t));
    for (int64_t s = 0; s < Lk; s++)
        u[s + 1] = u[s] + !(p->mask && p->mask[b * Lk + s]);
    double *dS0 = gr->dstate_in + bh * Dk * Dv, *dz0 = gr->dnormalizer_in + bh * Dk;
    for (int64_t i = 0; p->state && i < Dk * Dv; i++)
        S0[i] = M(p->state[bh * Dk * Dv + i]);
    for (int64_t d = 0; p->normalizer && d < Dk; d++)
        z0[d] = M(p->normalizer[bh * Dk + d]);
    for (int64_t s = 0; s < Lk; s++) {
        const int m = p->mask && p->mask[b * Lk + s];
        for (int64_t d = 0; d < Dk; d++)
            K[s * Dk + d] = m ? 0 : M(ref_phi(p->k.p[off(&p->k, b, s, hk, d)], (int)fm));
        for (int64_t e = 0; e < Dv; e++)
            V[s * Dv + e] = m ? 0 : M(p->v.p[off(&p->v, b, s, hk, e)]);
    }
    for (int64_t h = hk * G; h < (hk + 1) * G; h++)
        for (int64_t t = 0; t < L; t++) {
            const int64_t send = p->causal ? t + 1 : Lk;
            const double gs = p->causal ? pow(g, (double)u[t + 1]) : 1.0;
            for (int64_t d = 0; d < Dk; d++)
                Q[d] = M(ref_phi(p->q.p[off(&p->q, b, t, h, d)], (int)fm));
            for (int64_t e = 0; e < Dv; e++)
                dout[e] = M(gr->dout.p[off(&gr->dout, b, t, h, e)]);
            /* num, den with the initial state, then the keys */
            double den = p->eps;
            for (int64_t e = 0; e < Dv; e++) {
                num[e] = 0;
                for (int64_t d = 0; d < Dk; d++)
                    num[e] += gs * Q[d] * S0[d * Dv + e];
            }
            for (int64_t d = 0; d < Dk; d++)
                den += gs * Q[d] * z0[d];
            for (int64_t s = 0; s < send; s++) {
                double qk = 0;
                for (int64_t d = 0; d < Dk; d++)
                    qk += Q[d] * K[s * Dk + d];
                a[s] = (p->causal ? pow(g, (double)(u[t + 1] - u[s + 1])) : 1.0) * qk;
                for (int64_t e = 0; e < Dv; e++)
                    num[e] += a[s] * V[s * Dv + e];
                den += a[s];
            }
            /* o = num / den (or scale num): dnum, dden */
            double dden = 0, don = 0;
            for (int64_t e = 0; e < Dv; e++) {
                dnum[e] = p->normalize ? dout[e] / den : p->scale * dout[e];
                don += dout[e] * num[e];
            }
            if (p->normalize)
                dden = (mag ? don : -don) / (den * den);
            for (int64_t d = 0; d < Dk; d++) {
                double x = 0;
                for (int64_t e = 0; e < Dv; e++)
                    x += S0[d * Dv + e] * dnum[e];
                dQ[d] = gs * (x + dden * z0[d]);
                for (int64_t e = 0; e < Dv; e++)
                    dS0[d * Dv + e] += gs * Q[d] * dnum[e];
                dz0[d] += gs * dden * Q[d];
            }
            for (int64_t s = 0; s < send; s++) {
                const double w = p->causal ? pow(g, (double)(u[t + 1] - u[s + 1])) : 1.0;
                double dw = dden;
                for (int64_t e = 0; e < Dv; e++)
                    dw += dnum[e] * V[s * Dv + e];
                for (int64_t d = 0; d < Dk; d++) {
                    dQ[d] += w * dw * K[s * Dk + d];
                    dK[s * Dk + d] += w * dw * Q[d];
                }
                for (int64_t e = 0; e < Dv; e++)
                    dV[s * Dv + e] += a[s] * dnum[e];
            }
            for (int64_t d = 0; d < Dk; d++) {
                const int64_t i = off(&p->q, b, t, h, d);
                gr->dq[i] = dQ[d] * M(dphi((int)fm, p->q.p[i]));
            }
        }
    /* the final state's terms */
    const double *dSo = gr->dstate_out ? gr->dstate_out + bh * Dk * Dv : NULL;
    const double *dzo = gr->dnormalizer_out ? gr->dnormalizer_out + bh * Dk : NULL;
    for (int64_t s = 0; (dSo || dzo) && s < Lk; s++) {
        const double w = p->causal ? pow(g, (double)(u[Lk] - u[s + 1])) : 1.0;
        for (int64_t d = 0; d < Dk; d++) {
            double x = dzo ? M(dzo[d]) : 0.0;
            for (int64_t e = 0; dSo && e < Dv; e++) {
                const double dso = M(dSo[d * Dv + e]);
                x += dso * V[s * Dv + e];
                dV[s * Dv + e] += w * dso * K[s * Dk + d];
            }
            dK[s * Dk + d] += w * x;
        }
    }
    const double gL = p->causal ? pow(g, (double)u[Lk]) : 1.0;
    for (int64_t i = 0; dSo && i < Dk * Dv; i++)
        dS0[i] += gL * M(dSo[i]);
    for (int64_t d = 0; dzo && d < Dk; d++)
        dz0[d] += gL * M(dzo[d]);
    for (int64_t s = 0; s < Lk; s++) {
        const int m = p->mask && p->mask[b * Lk + s];
        for (int64_t d = 0; d < Dk; d++) {
            const int64_t i = off(&p->k, b, s, hk, d);
            gr->dk[i] = m ? 0 : dK[s * Dk + d] * M(dphi((int)fm, p->k.p[i]));
        }
        for (int64_t e = 0; e < Dv; e++)
            gr->dv[off(&p->v, b, s, hk, e)] = m ? 0 : dV[s * Dv + e];
    }
#undef M
    free(K), free(V), free(dK), free(dV), free(a), free(S0), free(u);
    free(Q), free(dQ), free(z0), free(num), free(dnum), free(dout);
}

void ref_backward(const ref_problem *p, const ref_grads *g, int mag)
{
    memset(g->dstate_in, 0, (size_t)(p->B * p->Hkv * p->Dk * p->Dv) * sizeof(double));
    memset(g->dnormalizer_in, 0, (size_t)(p->B * p->Hkv * p->Dk) * sizeof(double));
    /* (batch, kv head) pairs write disjoint gradients: the same bits in any order */
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t task = 0; task < p->B * p->Hkv; task++)
        one_head(p, g, mag, task / p->Hkv, task % p->Hkv);
}
