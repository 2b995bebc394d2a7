/*
 * options.c - checks shared by the module and the core API: the attention
 * options, masks, output aliasing, and the precision rule.
 */
#include "lm_impl.h"

#include <math.h>

lm_status lmi_check_options(lm_feature_map fm, int normalize, float eps, float scale,
                            const float *decay, int64_t n_decay, lm_precision precision)
{
    if (fm != LM_FEATURE_ELU1 && fm != LM_FEATURE_RELU && fm != LM_FEATURE_IDENTITY)
        return lmi_error(LM_ERR_INVALID_ARG, "feature_map %d is not one of elu1, relu, identity",
                         (int)fm);
    if (normalize != 0 && normalize != 1)
        return lmi_error(LM_ERR_INVALID_ARG, "normalize must be 0 or 1, not %d", normalize);
    if (normalize && !(eps > 0.0f && isfinite(eps)))
        return lmi_error(LM_ERR_INVALID_ARG, "eps must be finite and > 0, not %g", (double)eps);
    if (!(scale >= 0.0f && isfinite(scale)))
        return lmi_error(LM_ERR_INVALID_ARG, "scale must be finite and >= 0 (0 = 1/sqrt(Dk)), not %g",
                         (double)scale);
    if (precision != LM_PRECISION_AUTO && precision != LM_PRECISION_ON &&
        precision != LM_PRECISION_OFF)
        return lmi_error(LM_ERR_INVALID_ARG, "precision %d is not one of auto, on, off",
                         (int)precision);
    for (int64_t h = 0; decay && h < n_decay; h++)
        if (!(decay[h] > 0.0f && decay[h] <= 1.0f))
            return lmi_error(LM_ERR_INVALID_ARG, "decay[%lld] = %g is not in (0, 1]",
                             (long long)h, (double)decay[h]);
    return LM_OK;
}

lm_status lmi_check_shape4(const lm_tensor *t, const char *what, const int64_t *shape,
                           const char *names)
{
    for (int i = 0; i < 4; i++)
        if (t->shape[i] != shape[i])
            return lmi_error(LM_ERR_INVALID_ARG,
                             "%s is [%lld, %lld, %lld, %lld], expected %s = [%lld, %lld, %lld, %lld]",
                             what, (long long)t->shape[0], (long long)t->shape[1],
                             (long long)t->shape[2], (long long)t->shape[3], names,
                             (long long)shape[0], (long long)shape[1], (long long)shape[2],
                             (long long)shape[3]);
    return LM_OK;
}

lm_status lmi_check_mask(const lm_tensor *mask, lm_device device, int64_t B, int64_t Lk)
{
    lm_status st = lmi_check_tensor(mask, "key_padding_mask", 2, device);
    if (st)
        return st;
    if (mask->dtype != LM_BOOL)
        return lmi_error(LM_ERR_INVALID_ARG, "key_padding_mask must have dtype LM_BOOL");
    if (mask->shape[0] != B || mask->shape[1] != Lk)
        return lmi_error(LM_ERR_INVALID_ARG,
                         "key_padding_mask is [%lld, %lld], expected [B, Lk] = [%lld, %lld]",
                         (long long)mask->shape[0], (long long)mask->shape[1], (long long)B,
                         (long long)Lk);
    return LM_OK;
}

static int overlaps(const lm_tensor *x, const lm_tensor *y)
{
    const char *x0 = x->data, *y0 = y->data;
    const char *x1 = x0 + (lmi_tensor_extent(x) + 1) * (int64_t)lm_dtype_size(x->dtype);
    const char *y1 = y0 + (lmi_tensor_extent(y) + 1) * (int64_t)lm_dtype_size(y->dtype);
    return x0 < y1 && y0 < x1;
}

lm_status lmi_check_no_alias(const lm_tensor *out, const lm_tensor *const *inputs,
                             const char *const *names, int n)
{
    for (int i = 0; i < n; i++)
        if (inputs[i] && overlaps(out, inputs[i]))
            return lmi_error(LM_ERR_INVALID_ARG, "out overlaps %s: the output must not alias the inputs",
                             names[i]);
    return LM_OK;
}
