/* attend_bf16.cu - the bf16 instances of the attention kernel (Dk 64, 128, 256),
 * in a file of their own so that they compile in parallel. */
#include "attend_launch.cuh"

lm_status lmk::attend_bf16(const lmk_attend &p, int kind, int64_t ctas, cudaStream_t s)
{
    return launch_dt<LM_BF16>(p, kind, ctas, s);
}
