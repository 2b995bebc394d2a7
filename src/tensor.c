/* tensor.c - tensor descriptors: constructors, checks, views. */
#include "lm_impl.h"

size_t lm_dtype_size(lm_dtype dtype)
{
    return lmi_dtype_bytes(dtype);
}

static lm_tensor contiguous(void *data, lm_dtype dtype, lm_device device, int ndim,
                            const int64_t *shape)
{
    lm_tensor t = { .data = data, .dtype = dtype, .device = device, .ndim = ndim };
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        t.shape[i] = shape[i];
        t.stride[i] = s;
        s *= shape[i];
    }
    return t;
}

lm_tensor lm_tensor_2d(void *data, lm_dtype dtype, lm_device device, int64_t d0, int64_t d1)
{
    int64_t s[2] = { d0, d1 };
    return contiguous(data, dtype, device, 2, s);
}

lm_tensor lm_tensor_3d(void *data, lm_dtype dtype, lm_device device, int64_t d0, int64_t d1,
                       int64_t d2)
{
    int64_t s[3] = { d0, d1, d2 };
    return contiguous(data, dtype, device, 3, s);
}

lm_tensor lm_tensor_4d(void *data, lm_dtype dtype, lm_device device, int64_t d0, int64_t d1,
                       int64_t d2, int64_t d3)
{
    int64_t s[4] = { d0, d1, d2, d3 };
    return contiguous(data, dtype, device, 4, s);
}

static const char *device_name(lm_device d)
{
    return d == LM_CPU ? "cpu" : d == LM_CUDA ? "cuda" : "unknown";
}

lm_status lmi_check_tensor(const lm_tensor *t, const char *what, int ndim, lm_device device)
{
    if (!t)
        return lmi_error(LM_ERR_INVALID_ARG, "%s is NULL", what);
    if (t->ndim != ndim)
        return lmi_error(LM_ERR_INVALID_ARG, "%s has %d dimensions, expected %d", what,
                         t->ndim, ndim);
    if (t->dtype != LM_BF16 && t->dtype != LM_F16 && t->dtype != LM_F32 &&
        t->dtype != LM_BOOL)
        return lmi_error(LM_ERR_INVALID_ARG, "%s has an unknown dtype (%d)", what,
                         (int)t->dtype);
    if (t->device != device)
        return lmi_error(LM_ERR_INVALID_ARG, "%s is on %s, expected %s", what,
                         device_name(t->device), device_name(device));
    for (int i = 0; i < ndim; i++) {
        if (t->shape[i] <= 0 || t->shape[i] > ((int64_t)1 << 40))
            return lmi_error(LM_ERR_INVALID_ARG, "%s: dimension %d has size %lld", what, i,
                             (long long)t->shape[i]);
        if (t->stride[i] < 0 || t->stride[i] > ((int64_t)1 << 50))
            return lmi_error(LM_ERR_INVALID_ARG, "%s: dimension %d has stride %lld", what, i,
                             (long long)t->stride[i]);
    }
    if (!t->data)
        return lmi_error(LM_ERR_INVALID_ARG, "%s has a NULL data pointer", what);
    return LM_OK;
}

int64_t lmi_tensor_extent(const lm_tensor *t)
{
    int64_t e = 0;
    for (int i = 0; i < t->ndim; i++)
        e += (t->shape[i] - 1) * t->stride[i];
    return e;
}

lmi_view lmi_view_of(const lm_tensor *t)
{
    lmi_view v = { .data = t->data, .dtype = (int)t->dtype };
    for (int i = 0; i < t->ndim && i < 4; i++)
        v.s[i] = t->stride[i];
    return v;
}
