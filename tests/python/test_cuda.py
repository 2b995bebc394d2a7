"""
test_cuda.py - the CUDA path (run on the GPU machine: torch 2.x with CUDA):
core and module against the float64 reference and against the CPU backend,
bf16/f16/f32, torch's current stream, decode in a CUDA graph, gradients,
torch.compile on CUDA. Skipped, with the reason, where there is no CUDA.
"""
import pytest
import torch

import liquid_memory
from conftest import TOL, assert_close, rand_qkv, ref_attention, ref_module, rel_err, requires_cuda
from liquid_memory import LiquidMemory, _core, _ops

pytestmark = requires_cuda
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("L", [1, 63, 64, 65, 257, 1000])
@pytest.mark.parametrize("D", [32, 64, 128])
def test_core_prefill_cuda(dtype, causal, L, D):
    q, k, v = rand_qkv(2, L, 4, D, Hkv=2, dtype=dtype, device="cuda", seed=L + D)
    out, S, z = _ops.prefill(q, k, v, is_causal=causal, want_state=True)
    assert out.device.type == "cuda" and out.dtype == dtype
    ref, S_ref, z_ref = ref_attention(q.cpu(), k.cpu(), v.cpu(), causal=causal)
    assert_close(out, ref, dtype, "out")
    # The tensor cores take phi(k) and v rounded to bf16 (accumulating in fp32),
    # so with bf16 inputs the state carries bf16 rounding; the others fp32-like.
    assert_close(S, S_ref, dtype if dtype == torch.bfloat16 else torch.float32, "state",
                 factor=1 if dtype == torch.bfloat16 else 10)
    cpu, _, _ = _ops.prefill(q.cpu(), k.cpu(), v.cpu(), is_causal=causal)
    assert rel_err(out, cpu.double()) <= 2 * TOL[dtype]


@pytest.mark.parametrize("causal", [True, False])
def test_core_masks_and_decay_cuda(causal):
    q, k, v = rand_qkv(3, 300, 4, 64, device="cuda", seed=1)
    mask = torch.rand(3, 300, device="cuda") < 0.2
    decay = [0.9, 0.99, 0.999, 1.0] if causal else None
    opts = _core.Options(decay=decay)
    out, _, _ = _ops.prefill(q, k, v, mask, is_causal=causal, opts=opts)
    ref, _, _ = ref_attention(q.cpu(), k.cpu(), v.cpu(), mask=mask.cpu(), causal=causal,
                              decay=decay)
    assert_close(out, ref, torch.float32, factor=5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_cuda(dtype):
    q, k, v = rand_qkv(2, 40, 8, 64, Hkv=2, dtype=dtype, device="cuda", seed=2)
    _, S, z = _ops.prefill(q[:, :30], k[:, :30], v[:, :30], is_causal=True, want_state=True)
    outs = [_ops.decode(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], S, z, t)
            for t in range(30, 40)]
    ref, _, _ = ref_attention(q.cpu(), k.cpu(), v.cpu(), causal=True)
    assert_close(torch.cat(outs, 1), ref[:, 30:], dtype)


@torch.no_grad()
def test_eager_decode_plans_on_streams_and_layouts():
    """The cached call plans (one per layout) on CUDA: the core decode and the
    module step on a side stream and on the default one, two batch sizes, the
    same as the CPU."""
    torch.manual_seed(8)
    m = LiquidMemory(256, 4, batch_first=True, num_kv_heads=2).eval()
    x = torch.randn(3, 12, 256)
    want = torch.stack([m.step(x[:, t]) for t in range(12)], 1)
    m.reset_state()
    m.cuda()
    s = torch.cuda.Stream()
    outs = []
    for t in range(12):
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s if t % 2 else torch.cuda.current_stream()):
            outs.append(m.step(x[:, t].cuda()))
        torch.cuda.current_stream().wait_stream(s)
    assert_close(torch.stack(outs, 1), want, torch.float32, factor=50)
    m.reset_state()
    one = torch.stack([m.step(x[:1, t].cuda()) for t in range(4)], 1)  # another batch
    assert_close(one, want[:1, :4], torch.float32, factor=50)
    q, k, v = rand_qkv(2, 6, 8, 64, Hkv=2, device="cuda", seed=9)
    _, S, z = _ops.prefill(q[:, :3], k[:, :3], v[:, :3], want_state=True)
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        outs = [_ops.decode(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], S, z, t)
                for t in range(3, 6)]
    torch.cuda.current_stream().wait_stream(s)
    ref, _, _ = ref_attention(q.cpu(), k.cpu(), v.cpu(), causal=True)
    assert_close(torch.cat(outs, 1), ref[:, 3:], torch.float32, factor=10)


def test_runs_on_the_current_stream():
    q, k, v = rand_qkv(4, 4096, 8, 64, device="cuda", dtype=torch.bfloat16, seed=3)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        out, _, _ = _ops.prefill(q, k, v, is_causal=True)
        res = out.float().sum()  # queued behind the prefill on the same stream
    torch.cuda.current_stream().wait_stream(s)
    ref, _, _ = _ops.prefill(q, k, v, is_causal=True)
    assert torch.allclose(res, ref.float().sum(), rtol=1e-3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_module_cuda_matches_cpu_and_reference(dtype):
    torch.manual_seed(4)
    cpu = LiquidMemory(256, 4, batch_first=True)
    gpu = LiquidMemory.from_mha(cpu.to_mha().cuda().to(dtype))
    x = torch.randn(2, 333, 256)
    out, _ = gpu(x.cuda().to(dtype), x.cuda().to(dtype), x.cuda().to(dtype), is_causal=True,
                 need_weights=False)
    assert out.dtype == dtype
    ref = ref_module(cpu, x, x, x, causal=True)
    assert_close(out, ref, dtype, factor=4 if dtype != torch.float32 else 50)


@torch.no_grad()  # decoding is inference (step() refuses to run while autograd records)
def test_step_cuda_and_graph_capture():
    torch.manual_seed(5)
    m = LiquidMemory(256, 4, batch_first=True, device="cuda").eval()
    x = torch.randn(2, 60, 256, device="cuda")
    full = ref_module(m.cpu(), x.cpu(), x.cpu(), x.cpu(), causal=True)
    m.cuda()
    m(x[:, :40], x[:, :40], x[:, :40], is_causal=True, need_weights=False)
    eager = torch.stack([m.step(x[:, t]) for t in range(40, 50)], 1)
    assert_close(eager, full[:, 40:50], torch.float32, factor=50)
    # capture one step (state buffers are static), replay for the next tokens
    tok = x[:, 50].clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    saved = m.get_state()
    with torch.cuda.stream(s):
        m.step(tok)  # warm-up on a side stream, as CUDA graphs require
    torch.cuda.current_stream().wait_stream(s)
    m.set_state(saved)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = m.step(tok)
    m.set_state(saved)  # capture does not run the kernels; start again from token 50
    outs = []
    for t in range(50, 60):
        tok.copy_(x[:, t])
        g.replay()
        outs.append(out.clone())
    assert_close(torch.stack(outs, 1), full[:, 50:60], torch.float32, factor=50)


def test_gradients_cuda():
    if not _core.has_backward():
        pytest.skip("no lm_linear_attn_backward in the library under test")
    q, k, v = rand_qkv(2, 200, 4, 32, Hkv=2, device="cuda", seed=6, scale=0.5)
    w = torch.randn(2, 200, 4, 32, device="cuda")
    qs, ks, vs = (t.clone().requires_grad_() for t in (q, k, v))
    out, _, _ = _ops.prefill(qs, ks, vs, is_causal=True)
    got = torch.autograd.grad((out * w).sum(), [qs, ks, vs])
    qd, kd, vd = (t.cpu().double().requires_grad_() for t in (q, k, v))
    ref, _, _ = ref_attention(qd, kd, vd, causal=True)
    want = torch.autograd.grad((ref * w.cpu().double()).sum(), [qd, kd, vd])
    for g_, w_ in zip(got, want):
        assert rel_err(g_, w_) < 1e-4


def test_transformer_layer_trains_on_cuda():
    if not _core.has_backward():
        pytest.skip("no lm_linear_attn_backward in the library under test")
    torch.manual_seed(7)
    layer = torch.nn.TransformerEncoderLayer(256, 8, 512, dropout=0.1, batch_first=True).cuda()
    layer.self_attn = LiquidMemory(256, 8, batch_first=True, device="cuda")
    x = torch.randn(4, 128, 256, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = layer(x, is_causal=True, src_mask=torch.nn.Transformer.generate_square_subsequent_mask(
            128, device="cuda"))
    y.float().sum().backward()
    assert torch.isfinite(layer.self_attn.in_proj_weight.grad).all()
    layer.eval()
    with torch.no_grad():
        y1 = layer(x)
        sa, _ = layer.self_attn(x, x, x, need_weights=False)
        h = layer.norm1(x + sa)
        want = layer.norm2(h + layer.linear2(layer.activation(layer.linear1(h))))
    assert torch.allclose(y1, want, atol=1e-4)  # the fused fast path did not replace us


@pytest.mark.skipif(not hasattr(torch.library, "custom_op"), reason="needs torch >= 2.4")
def test_compile_cuda_bf16():
    torch.manual_seed(8)
    m = LiquidMemory(512, 8, batch_first=True, device="cuda", dtype=torch.bfloat16).eval()
    x = torch.randn(2, 1024, 512, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        eager, _ = m(x, x, x, is_causal=True, need_weights=False)
        compiled, _ = torch.compile(m, fullgraph=True)(x, x, x, is_causal=True,
                                                      need_weights=False)
    assert torch.equal(compiled, eager) or rel_err(compiled, eager.double()) < 1e-2


def test_cuda_device_guard_other_gpu():
    if torch.cuda.device_count() < 2:
        pytest.skip("one GPU: the device guard for cuda:1 cannot be exercised")
    q, k, v = rand_qkv(1, 100, 2, 64, device="cuda:1", seed=9)
    out, _, _ = _ops.prefill(q, k, v)
    ref, _, _ = ref_attention(q.cpu(), k.cpu(), v.cpu())
    assert out.device == q.device
    assert_close(out, ref, torch.float32)


def test_no_cuda_backend_is_a_clear_error():
    """A build without the CUDA backend refuses CUDA tensors with NoDeviceError."""
    if "cuda" in liquid_memory.library_info()["version"]:
        pytest.skip("this build has the CUDA backend")
    q, k, v = rand_qkv(1, 4, 2, 8, device="cuda")
    with pytest.raises(liquid_memory.NoDeviceError, match="CUDA"):
        _ops.prefill(q, k, v)
