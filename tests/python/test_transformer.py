"""
test_transformer.py - LiquidMemory as self_attn / multihead_attn of
nn.TransformerEncoderLayer, nn.TransformerDecoderLayer and nn.Transformer,
in training and in inference (where the encoder's fused fast path must not
silently compute softmax attention instead, also when the module is assigned
by hand), and nested-tensor inputs.
"""
import pytest
import torch
from torch import nn

from liquid_memory import LiquidMemory, replace_attention

D_MODEL, NHEAD = 32, 4  # even head count: the encoder fast path would be eligible


def x_(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _encoder_by_hand(layer, x, mask=None, kpm=None, is_causal=False):
    sa, _ = layer.self_attn(x, x, x, attn_mask=mask, key_padding_mask=kpm, need_weights=False,
                            is_causal=is_causal)
    h = layer.norm1(x + sa)
    return layer.norm2(h + layer.linear2(layer.activation(layer.linear1(h))))


def _encoder_layer(batch_first=True):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(D_MODEL, NHEAD, dim_feedforward=64, dropout=0.0,
                                       batch_first=batch_first)
    layer.self_attn = LiquidMemory(D_MODEL, NHEAD, batch_first=batch_first)
    return layer


def test_encoder_layer_training():
    layer = _encoder_layer().train()
    x = x_(2, 12, D_MODEL, seed=1).requires_grad_()
    y = layer(x)
    assert torch.allclose(y, _encoder_by_hand(layer, x), atol=1e-5)
    y.square().mean().backward()
    assert layer.self_attn.in_proj_weight.grad.abs().sum() > 0
    assert layer.self_attn.out_proj.weight.grad.abs().sum() > 0
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_encoder_layer_causal_mask_training():
    layer = _encoder_layer().train()
    x = x_(2, 12, D_MODEL, seed=2)
    mask = nn.Transformer.generate_square_subsequent_mask(12)
    y = layer(x, src_mask=mask)
    assert torch.allclose(y, _encoder_by_hand(layer, x, is_causal=True), atol=1e-5)


class _Calls:
    """Counts LiquidMemory forwards (the fused fast path would make none)."""

    def __init__(self, monkeypatch):
        self.n = 0
        real = LiquidMemory.forward

        def counted(m, *a, **k):
            self.n += 1
            return real(m, *a, **k)
        monkeypatch.setattr(LiquidMemory, "forward", counted)


def _by_hand_stack(layers, x, kpm=None):
    for layer in layers:
        x = _encoder_by_hand(layer, x, kpm=kpm)
    return x


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kv_heads", [None, 2])
def test_encoder_layer_inference_plain_assignment(monkeypatch, batch_first, kv_heads):
    """The README's one-line swap, in eval mode without grad: torch's fused
    fast path (softmax on in_proj_weight) must not run in our place."""
    layer = _encoder_layer(batch_first).eval()
    layer.self_attn = LiquidMemory(D_MODEL, NHEAD, batch_first=batch_first,
                                   num_kv_heads=kv_heads).eval()
    calls = _Calls(monkeypatch)
    x = x_(2, 12, D_MODEL, seed=3)
    x = x if batch_first else x.transpose(0, 1)
    kpm = torch.zeros(2, 12, dtype=torch.bool)
    kpm[0, 9:] = True
    with torch.no_grad():
        for mask in (None, kpm):
            y = layer(x, src_key_padding_mask=mask)
            assert torch.allclose(y, _encoder_by_hand(layer, x, kpm=mask), atol=1e-5)
    assert calls.n == 4  # two by the layer, two by hand


@pytest.mark.parametrize("kv_heads", [None, 2])
def test_encoder_inference_plain_assignment(monkeypatch, kv_heads):
    """nn.TransformerEncoder (built with an MHA, nested tensors enabled), its
    layers' self_attn swapped by hand, eval, no grad, with a padding mask."""
    torch.manual_seed(30)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(
        D_MODEL, NHEAD, dim_feedforward=64, dropout=0.0, batch_first=True), num_layers=2)
    for layer in enc.layers:
        layer.self_attn = LiquidMemory(D_MODEL, NHEAD, batch_first=True, num_kv_heads=kv_heads)
    enc.eval()
    calls = _Calls(monkeypatch)
    x = x_(3, 10, D_MODEL, seed=31)
    kpm = torch.zeros(3, 10, dtype=torch.bool)
    kpm[1, 6:] = True
    with torch.no_grad():
        y = enc(x, src_key_padding_mask=kpm)
        n = calls.n
        want = _by_hand_stack(enc.layers, x, kpm)
    assert n == 2
    keep = ~kpm  # padded positions are unspecified (a nested-tensor encoder zeroes them)
    assert torch.allclose(y[keep], want[keep], atol=1e-5)


def test_transformer_inference_plain_assignment(monkeypatch):
    torch.manual_seed(32)
    model = nn.Transformer(D_MODEL, NHEAD, num_encoder_layers=1, num_decoder_layers=1,
                           dim_feedforward=64, dropout=0.0, batch_first=True)
    ref = nn.Transformer(D_MODEL, NHEAD, num_encoder_layers=1, num_decoder_layers=1,
                         dim_feedforward=64, dropout=0.0, batch_first=True)
    ref.load_state_dict(model.state_dict())
    model.encoder.layers[0].self_attn = LiquidMemory.from_mha(model.encoder.layers[0].self_attn)
    dec = model.decoder.layers[0]
    dec.self_attn = LiquidMemory.from_mha(dec.self_attn)
    dec.multihead_attn = LiquidMemory.from_mha(dec.multihead_attn)
    model.eval()
    ref.eval()
    calls = _Calls(monkeypatch)
    src, tgt = x_(2, 10, D_MODEL, seed=33), x_(2, 7, D_MODEL, seed=34)
    mask = model.generate_square_subsequent_mask(7)
    with torch.no_grad():
        y = model(src, tgt, tgt_mask=mask)
        softmax = ref(src, tgt, tgt_mask=mask)
    assert calls.n == 3 and torch.isfinite(y).all()
    assert not torch.allclose(y, softmax, atol=1e-3)


def test_nested_input_is_padded_and_masked():
    """Nested (ragged) inputs, as a torch 2.x encoder may pass them: the same
    as padding with key_padding_mask, nested again."""
    torch.manual_seed(35)
    m = LiquidMemory(D_MODEL, NHEAD, batch_first=True).eval()
    rows = [x_(5, D_MODEL, seed=36), x_(9, D_MODEL, seed=37)]
    nt = torch.nested.nested_tensor(rows)
    padded = torch.nested.to_padded_tensor(nt, 0.0)
    kpm = torch.tensor([[False] * 5 + [True] * 4, [False] * 9])
    for causal in (False, True):
        with torch.no_grad():
            out, _ = m(nt, nt, nt, is_causal=causal, need_weights=False)
            want, _ = m(padded, padded, padded, key_padding_mask=kpm, is_causal=causal,
                        need_weights=False)
        assert out.is_nested
        for got, w, n in zip(out.unbind(), want, (5, 9)):
            assert got.shape == (n, D_MODEL) and torch.equal(got, w[:n])
    with pytest.raises(ValueError, match="batch_first=True"):
        LiquidMemory(D_MODEL, NHEAD)(nt, nt, nt, need_weights=False)
    with pytest.raises(ValueError, match="all nested tensors or none"):
        m(nt, padded, padded, need_weights=False)


def test_nested_input_is_one_forward(monkeypatch):
    """A nested input is one forward of the module, not a second one for its
    padded form (torch 2.x's nn.TransformerEncoder passes nested input to the
    layers: test_encoder_inference_plain_assignment counts forwards)."""
    m = LiquidMemory(D_MODEL, NHEAD, batch_first=True).eval()
    nt = torch.nested.nested_tensor([x_(4, D_MODEL, seed=38), x_(7, D_MODEL, seed=39)])
    calls = _Calls(monkeypatch)
    with torch.no_grad():
        out, _ = m(nt, nt, nt, need_weights=False)
    assert calls.n == 1 and out.is_nested


@pytest.mark.parametrize("batch_first", [True, False])
def test_encoder_inference_after_replace_attention(batch_first):
    torch.manual_seed(4)
    enc_layer = nn.TransformerEncoderLayer(D_MODEL, NHEAD, dim_feedforward=64, dropout=0.0,
                                           batch_first=batch_first)
    enc = nn.TransformerEncoder(enc_layer, num_layers=2)
    mha_ref = enc.layers[0].self_attn
    replace_attention(enc)
    assert isinstance(enc.layers[0].self_attn, LiquidMemory)
    assert torch.equal(enc.layers[0].self_attn.in_proj_weight, mha_ref.in_proj_weight)
    enc.eval()
    x = x_(2, 10, D_MODEL, seed=5)
    x = x if batch_first else x.transpose(0, 1)
    kpm = torch.zeros(2, 10, dtype=torch.bool)
    kpm[1, 7:] = True
    with torch.no_grad():
        y = enc(x, src_key_padding_mask=kpm)
        h = x
        for layer in enc.layers:
            h = _encoder_by_hand(layer, h, kpm=kpm)
    assert torch.allclose(y, h, atol=1e-5)
    # and it is not what softmax attention gives
    enc_mha = nn.TransformerEncoder(nn.TransformerEncoderLayer(
        D_MODEL, NHEAD, dim_feedforward=64, dropout=0.0, batch_first=batch_first), 2)
    enc_mha.load_state_dict(enc.state_dict())
    with torch.no_grad():
        assert not torch.allclose(enc_mha.eval()(x, src_key_padding_mask=kpm), y, atol=1e-3)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_decoder_layer(mode):
    torch.manual_seed(6)
    layer = nn.TransformerDecoderLayer(D_MODEL, NHEAD, dim_feedforward=64, dropout=0.0,
                                       batch_first=True)
    layer.self_attn = LiquidMemory(D_MODEL, NHEAD, batch_first=True)
    layer.multihead_attn = LiquidMemory(D_MODEL, NHEAD, batch_first=True)
    getattr(layer, mode)()
    tgt, mem = x_(2, 9, D_MODEL, seed=7), x_(2, 15, D_MODEL, seed=8)
    tgt_mask = nn.Transformer.generate_square_subsequent_mask(9)
    mem_kpm = torch.zeros(2, 15, dtype=torch.bool)
    mem_kpm[0, 12:] = True
    with torch.set_grad_enabled(mode == "train"):
        y = layer(tgt, mem, tgt_mask=tgt_mask, memory_key_padding_mask=mem_kpm)
        sa, _ = layer.self_attn(tgt, tgt, tgt, is_causal=True, need_weights=False)
        h = layer.norm1(tgt + sa)
        ca, _ = layer.multihead_attn(h, mem, mem, key_padding_mask=mem_kpm, need_weights=False)
        h = layer.norm2(h + ca)
        want = layer.norm3(h + layer.linear2(layer.activation(layer.linear1(h))))
    assert torch.allclose(y, want, atol=1e-5)
    if mode == "train":
        y.sum().backward()
        assert layer.multihead_attn.in_proj_weight.grad.abs().sum() > 0


def test_full_transformer_trains():
    torch.manual_seed(9)
    model = replace_attention(nn.Transformer(D_MODEL, NHEAD, num_encoder_layers=1,
                                             num_decoder_layers=1, dim_feedforward=64,
                                             dropout=0.1, batch_first=True))
    n_lm = sum(isinstance(m, LiquidMemory) for m in model.modules())
    assert n_lm == 3 and not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    src, tgt = x_(4, 10, D_MODEL, seed=10), x_(4, 8, D_MODEL, seed=11)
    target = x_(4, 8, D_MODEL, seed=12)
    mask = model.generate_square_subsequent_mask(8)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = (model(src, tgt, tgt_mask=mask) - target).square().mean()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0] * 0.9, losses
    model.eval()
    with torch.no_grad():
        out = model(src, tgt, tgt_mask=mask)
    assert torch.isfinite(out).all()
