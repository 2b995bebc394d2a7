/* cuda_error.c - CUDA and cuBLAS failures as lm_status, with file:line. */
#include "cuda_impl.h"

lm_status lmi_cuda_fail(int err, const char *what, const char *file, int line)
{
    lm_status st = LM_ERR_CUDA;
    if (err == cudaErrorMemoryAllocation)
        st = LM_ERR_OUT_OF_MEMORY;
    else if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver)
        st = LM_ERR_NO_DEVICE;
    return lmi_error(st, "cuda: %s failed at %s:%d: %s (%s)", what, file, line,
                     cudaGetErrorString((cudaError_t)err), cudaGetErrorName((cudaError_t)err));
}

lm_status lmi_cublas_fail(int status, const char *what, const char *file, int line)
{
    lm_status st = status == CUBLAS_STATUS_ALLOC_FAILED ? LM_ERR_OUT_OF_MEMORY : LM_ERR_CUDA;
    return lmi_error(st, "cublas: %s failed at %s:%d: %s", what, file, line,
                     cublasLtGetStatusString((cublasStatus_t)status));
}

lm_status lmi_cuda_enter(int device, int *prev)
{
    LMI_CUDA_TRY(cudaGetDevice(prev));
    if (*prev != device)
        LMI_CUDA_TRY(cudaSetDevice(device));
    return LM_OK;
}

void lmi_cuda_leave(int device, int prev)
{
    if (prev != device)
        cudaSetDevice(prev);
}
