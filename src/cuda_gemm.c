/*
 * cuda_gemm.c - the module's matrix products through cuBLASLt: projections
 * Y = X W^T + bias (row-major, batched over strided rows so batch-first and
 * sequence-first tensors need no copy), and the backward's forms with either
 * operand stored transposed, alpha, beta (accumulation) and fp32 outputs;
 * fp32 accumulation, bias in the epilogue. A plan (descriptors + the
 * heuristic's algorithm) is cached per shape, form and alignment, so a
 * repeated call costs one cublasLtMatmul. Also dtype conversions of whole
 * matrices (cublasLtMatrixTransform), for the fp32 weight gradients.
 *
 * Row-major Y [rows, N] is column-major Y^T [N, rows] = W [N, K] X^T: A = W
 * (read transposed from row-major [N, K], or as is from [K, N] when w_t),
 * B = X^T (as is from row-major [rows, K], or transposed from [K, rows] when
 * x_t), D = Y^T.
 */
#include "cuda_impl.h"

#include <string.h>

static cudaDataType_t cuda_type(int dtype)
{
    return dtype == LM_BF16 ? CUDA_R_16BF : dtype == LM_F16 ? CUDA_R_16F : CUDA_R_32F;
}

/* Largest power of two <= 256 dividing the address and the byte offsets. */
static int64_t alignment(const void *p, int64_t off1, int64_t off2)
{
    const uint64_t bits = (uint64_t)(uintptr_t)p | (uint64_t)off1 | (uint64_t)off2 | 256u;
    return (int64_t)(bits & (~bits + 1));
}

static lm_status layout(cublasLtMatrixLayout_t *l, cudaDataType_t t, int64_t rows, int64_t cols,
                        int64_t ld, int64_t batch, int64_t stride)
{
    LMI_CUBLAS_TRY(cublasLtMatrixLayoutCreate(l, t, (uint64_t)rows, (uint64_t)cols, ld));
    if (batch > 1) {
        int32_t n = (int32_t)batch;
        LMI_CUBLAS_TRY(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &n, sizeof n));
        LMI_CUBLAS_TRY(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                        &stride, sizeof stride));
    }
    return LM_OK;
}

static void plan_free(lmi_gemm_plan *p)
{
    if (p->op)
        cublasLtMatmulDescDestroy(p->op);
    if (p->a)
        cublasLtMatrixLayoutDestroy(p->a);
    if (p->b)
        cublasLtMatrixLayoutDestroy(p->b);
    if (p->c)
        cublasLtMatrixLayoutDestroy(p->c);
    memset(p, 0, sizeof *p);
}

void lmi_cuda_gemm_release(lmi_cuda_ctx *ctx)
{
    for (int i = 0; i < LMI_GEMM_CACHE; i++)
        plan_free(&ctx->plans[i]);
}

/* fp32 outputs are the backward's weight gradients: small matrices, long
 * reductions, which the heuristic would split (split-K). Not split, a call
 * costs a little more, and compute-sanitizer stays quiet: its racecheck and
 * initcheck flag cuBLASLt's split-K kernels (hazards in their shared memory,
 * partial sums it does not see written). */
static lm_status preference(cublasLtMatmulPreference_t pref, size_t ws, const int64_t *al, int y_f32)
{
    LMI_CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                        &ws, sizeof ws));
    if (y_f32) {
        const uint32_t none = CUBLASLT_REDUCTION_SCHEME_NONE;
        LMI_CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                                                            &none, sizeof none));
    }
    static const cublasLtMatmulPreferenceAttributes_t which[4] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES
    };
    for (int i = 0; i < 4; i++) {
        uint32_t v = (uint32_t)al[i < 3 ? i : 2];
        LMI_CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(pref, which[i], &v, sizeof v));
    }
    return LM_OK;
}

static lm_status plan_make(lmi_cuda_ctx *ctx, const lmi_gemm *g, const int64_t *al, lmi_gemm_plan *p)
{
    const cudaDataType_t t = cuda_type(g->dtype), ty = g->y_f32 ? CUDA_R_32F : t;
    LMI_CUBLAS_TRY(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t ta = g->w_t ? CUBLAS_OP_N : CUBLAS_OP_T, tb = g->x_t ? CUBLAS_OP_T : CUBLAS_OP_N;
    LMI_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    LMI_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    if (g->bias) {
        const cublasLtEpilogue_t ep = CUBLASLT_EPILOGUE_BIAS;
        const int32_t bt = (int32_t)t;
        LMI_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep));
        LMI_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt));
        LMI_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g->bias,
                                                      sizeof g->bias));
    }
    lm_status st;
    if ((st = g->w_t ? layout(&p->a, t, g->N, g->K, g->ldw, g->batch, 0)
                     : layout(&p->a, t, g->K, g->N, g->ldw, g->batch, 0)) ||
        (st = g->x_t ? layout(&p->b, t, g->rows, g->K, g->ldx, g->batch, g->sx)
                     : layout(&p->b, t, g->K, g->rows, g->ldx, g->batch, g->sx)) ||
        (st = layout(&p->c, ty, g->N, g->rows, g->ldy, g->batch, g->sy)))
        return st;
    cublasLtMatmulPreference_t pref;
    LMI_CUBLAS_TRY(cublasLtMatmulPreferenceCreate(&pref));
    st = preference(pref, ctx->lt_ws_bytes, al, g->y_f32);
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    if (st == LM_OK) {
        cublasStatus_t cs = cublasLtMatmulAlgoGetHeuristic(ctx->lt, p->op, p->a, p->b, p->c, p->c, pref, 1,
                                                           &res, &found);
        if (cs != CUBLAS_STATUS_SUCCESS)
            st = lmi_cublas_fail(cs, "cublasLtMatmulAlgoGetHeuristic", __FILE__, __LINE__);
        else if (!found)
            st = lmi_error(LM_ERR_UNSUPPORTED,
                           "cublas: no algorithm for a %lld x %lld x %lld projection (batch %lld)",
                           (long long)g->rows, (long long)g->N, (long long)g->K, (long long)g->batch);
    }
    cublasLtMatmulPreferenceDestroy(pref);
    if (st == LM_OK)
        p->algo = res.algo;
    return st;
}

lm_status lmi_cuda_gemm(lmi_cuda_ctx *ctx, const lmi_gemm *g, cudaStream_t stream)
{
    const int64_t es = g->dtype == LM_F32 ? 4 : 2, esy = g->y_f32 ? 4 : es;
    const int64_t al[4] = { alignment(g->W, g->ldw * es, 0), alignment(g->X, g->ldx * es, g->sx * es),
                            alignment(g->Y, g->ldy * esy, g->sy * esy),
                            g->bias ? alignment(g->bias, 0, 0) : 0 };
    const int64_t form = g->dtype | g->x_t << 4 | g->w_t << 5 | g->y_f32 << 6;
    const int64_t key[12] = { g->rows, g->N, g->K, g->batch, g->ldx, g->sx, g->ldw, g->ldy, g->sy,
                              form, al[3], al[0] | al[1] << 9 | al[2] << 18 };
    lmi_gemm_plan *p = NULL;
    for (int i = 0; i < LMI_GEMM_CACHE && !p; i++)
        if (ctx->plans[i].used && !memcmp(ctx->plans[i].key, key, sizeof key))
            p = &ctx->plans[i];
    if (!p) {
        p = &ctx->plans[ctx->next_plan];
        ctx->next_plan = (ctx->next_plan + 1) % LMI_GEMM_CACHE;
        plan_free(p);
        lm_status st = plan_make(ctx, g, al, p);
        if (st) {
            plan_free(p);
            return st;
        }
        memcpy(p->key, key, sizeof key);
        p->used = 1;
    } else if (g->bias) {
        LMI_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g->bias,
                                                      sizeof g->bias));
    }
    LMI_CUBLAS_TRY(cublasLtMatmul(ctx->lt, p->op, &g->alpha, g->W, p->a, g->X, p->b, &g->beta, g->Y, p->c,
                                  g->Y, p->c, &p->algo, ctx->lt_ws, ctx->lt_ws_bytes, stream));
    return LM_OK;
}

/* Makes the descriptors (*d, *ld, *ls: the caller destroys them) and queues
 * the conversion. */
static lm_status transform(lmi_cuda_ctx *ctx, cublasLtMatrixTransformDesc_t *d, cublasLtMatrixLayout_t *ld,
                           cublasLtMatrixLayout_t *ls, void *dst, int dst_dtype, const void *src,
                           int src_dtype, int64_t rows, int64_t cols, cudaStream_t stream)
{
    /* Row-major rows x cols is column-major cols x rows with ld cols. */
    LMI_CUBLAS_TRY(cublasLtMatrixTransformDescCreate(d, CUDA_R_32F));
    const uint64_t r = (uint64_t)cols, c = (uint64_t)rows;
    LMI_CUBLAS_TRY(cublasLtMatrixLayoutCreate(ls, cuda_type(src_dtype), r, c, cols));
    LMI_CUBLAS_TRY(cublasLtMatrixLayoutCreate(ld, cuda_type(dst_dtype), r, c, cols));
    const float one = 1.0f, zero = 0.0f;
    LMI_CUBLAS_TRY(cublasLtMatrixTransform(ctx->lt, *d, &one, src, *ls, &zero, NULL, NULL, dst, *ld, stream));
    return LM_OK;
}

lm_status lmi_cuda_convert(lmi_cuda_ctx *ctx, void *dst, int dst_dtype, const void *src, int src_dtype,
                           int64_t rows, int64_t cols, cudaStream_t stream)
{
    cublasLtMatrixTransformDesc_t d = NULL;
    cublasLtMatrixLayout_t ld = NULL, ls = NULL;
    const lm_status st = transform(ctx, &d, &ld, &ls, dst, dst_dtype, src, src_dtype, rows, cols, stream);
    if (d)
        cublasLtMatrixTransformDescDestroy(d);
    if (ld)
        cublasLtMatrixLayoutDestroy(ld);
    if (ls)
        cublasLtMatrixLayoutDestroy(ls);
    return st;
}
