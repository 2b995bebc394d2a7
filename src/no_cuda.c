/* no_cuda.c - the CUDA entry point of a build without nvcc: no device. */
#include "lm_impl.h"

lm_status lmi_cuda_backend(int cuda_device, const lmi_backend **out)
{
    (void)cuda_device;
    (void)out;
    return lmi_error(LM_ERR_NO_DEVICE,
                     "this build of Liquid Memory has no CUDA backend (built without nvcc)");
}
