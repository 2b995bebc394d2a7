/*
 * dtype.h - bf16 / f16 <-> f32 conversion in registers, and strided row
 * loads and stores that convert. Rounding to bf16/f16 is to nearest even.
 */
#ifndef LM_DTYPE_H
#define LM_DTYPE_H

#include "liquid_memory.h"

#include <stdint.h>
#include <string.h>

static inline float lmi_bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint32_t lmi_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float lmi_bf16_to_f32(uint16_t h)
{
    return lmi_bits_f32((uint32_t)h << 16);
}

static inline uint16_t lmi_f32_to_bf16(float f)
{
    uint32_t u = lmi_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it quiet, keep the sign */
        return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float lmi_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0x1f) /* inf or NaN */
        return lmi_bits_f32(sign | 0x7f800000u | (man << 13));
    if (exp == 0) { /* zero or subnormal: man * 2^-24 */
        float f = (float)man * 5.9604644775390625e-8f;
        return sign ? -f : f;
    }
    return lmi_bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

static inline uint16_t lmi_f32_to_f16(float f)
{
    uint32_t u = lmi_f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) /* NaN */
        return (uint16_t)(sign | 0x7e00u);
    if (a >= 0x477ff000u) /* rounds to >= 65520: inf */
        return (uint16_t)(sign | 0x7c00u);
    if (a < 0x38800000u) { /* below 2^-14: subnormal or zero, round to nearest even */
        float m = lmi_bits_f32(a) * 16777216.0f; /* in units of 2^-24 */
        uint32_t r = (uint32_t)m;
        float frac = m - (float)r;
        if (frac > 0.5f || (frac == 0.5f && (r & 1u)))
            r++;
        return (uint16_t)(sign | r);
    }
    a += 0xfffu + ((a >> 13) & 1u);
    return (uint16_t)(sign | ((a - 0x38000000u) >> 13));
}

/* dst[i] = src[i * stride] as f32, for i < n. */
static inline void lmi_load_row(float *dst, const void *src, int dtype, int64_t n, int64_t stride)
{
    if (dtype == LM_F32) {
        const float *s = (const float *)src;
        for (int64_t i = 0; i < n; i++)
            dst[i] = s[i * stride];
    } else if (dtype == LM_BF16) {
        const uint16_t *s = (const uint16_t *)src;
        for (int64_t i = 0; i < n; i++)
            dst[i] = lmi_bf16_to_f32(s[i * stride]);
    } else {
        const uint16_t *s = (const uint16_t *)src;
        for (int64_t i = 0; i < n; i++)
            dst[i] = lmi_f16_to_f32(s[i * stride]);
    }
}

/* dst[i * stride] = src[i] converted to dtype, for i < n. */
static inline void lmi_store_row(void *dst, int dtype, const float *src, int64_t n, int64_t stride)
{
    if (dtype == LM_F32) {
        float *d = (float *)dst;
        for (int64_t i = 0; i < n; i++)
            d[i * stride] = src[i];
    } else if (dtype == LM_BF16) {
        uint16_t *d = (uint16_t *)dst;
        for (int64_t i = 0; i < n; i++)
            d[i * stride] = lmi_f32_to_bf16(src[i]);
    } else {
        uint16_t *d = (uint16_t *)dst;
        for (int64_t i = 0; i < n; i++)
            d[i * stride] = lmi_f32_to_f16(src[i]);
    }
}

/* Address of element offset `off` (in elements) of a dtype array. */
static inline void *lmi_elem(void *base, int dtype, int64_t off)
{
    return (char *)base + off * (int64_t)lm_dtype_size((lm_dtype)dtype);
}

#endif /* LM_DTYPE_H */
