"""Next-token cross-entropy straight from the last hidden states, without full-vocab logits.

``F.cross_entropy(lm_head(h).float(), y)`` keeps, per token, the vocabulary-sized logits in
the compute dtype, their fp32 copy and the fp32 log-softmax for backward: with phi-1's
51,200 words that is ~0.5 MB per token, more than all 24 decoder layers save together. Here
the tokens go through the head in chunks; each chunk's logits (fp32, ``chunk x V``) live only
while that chunk's loss *and gradient* are computed, in the forward pass (as Liger-Kernel's
fused linear cross-entropy does). What stays for backward is the gradient of the hidden
states (fp32, ``N x H``) and of the head (``V x H``); backward only scales them by the
incoming gradient. So nothing is recomputed and peak memory is one chunk of logits.

On CUDA, Liger's Triton kernel is used instead when ``liger-kernel`` is installed.
"""

from __future__ import annotations

import torch

# Logits elements per chunk: 2^25 fp32 values = 128 MiB (2,621 tokens at vocab 51,200... see
# chunk_tokens); small enough to be noise next to the model, large enough that the chunk's
# matmuls still run near peak.
CHUNK_ELEMENTS = 1 << 25


def chunk_tokens(n_tokens: int, vocab: int, budget: int = CHUNK_ELEMENTS) -> int:
    """Tokens per chunk: ``n_tokens`` split evenly into pieces of at most ``budget`` logits."""
    pieces = max(1, -(-n_tokens * vocab // budget))
    return -(-n_tokens // pieces)


class _ChunkedLinearCE(torch.autograd.Function):
    """mean_i CE(h_i W^T + b, y_i), with the gradient computed chunk by chunk in forward."""

    @staticmethod
    def forward(ctx, h, weight, bias, target, chunk: int, ignore_index: int, need_grad: bool):
        # h: (N, H) in the compute dtype; weight: (V, H); bias: (V,) or None; target: (N,)
        n = h.shape[0]
        acc = torch.promote_types(h.dtype, torch.float32)  # fp32, or fp64 for checks
        w = weight.to(h.dtype)
        b = bias.to(h.dtype) if bias is not None else None
        valid = target != ignore_index
        count = valid.sum().clamp(min=1).to(acc)
        loss = torch.zeros((), dtype=acc, device=h.device)
        grad_h = torch.empty(h.shape, dtype=acc, device=h.device) if need_grad else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=h.device) if need_grad else None
        grad_b = (
            torch.zeros(weight.shape[0], dtype=acc, device=h.device)
            if need_grad and bias is not None
            else None
        )
        for s in range(0, n, chunk):
            hc, yc, vc = h[s : s + chunk], target[s : s + chunk], valid[s : s + chunk]
            logits = torch.addmm(b, hc, w.t()) if b is not None else hc @ w.t()
            logits = logits.to(acc)  # (c, V)
            lse = torch.logsumexp(logits, dim=-1)  # (c,)
            yc_safe = torch.where(vc, yc, 0)
            picked = logits.gather(1, yc_safe[:, None]).squeeze(1)
            loss += ((lse - picked) * vc).sum()
            if not need_grad:
                continue
            # d(sum CE)/d logits = softmax - onehot, in place over the logits buffer; the 1/count
            # of the mean comes last, in fp32, so fp16 never sees the tiny per-token values.
            g = logits.sub_(lse[:, None]).exp_()
            g[torch.arange(len(yc), device=h.device), yc_safe] -= 1.0
            g = g.mul_(vc[:, None]).to(h.dtype)  # (c, V)
            if g.dtype == acc:  # fp32 compute: straight into the buffers, no V x H temporary
                torch.mm(g, w, out=grad_h[s : s + chunk])
                grad_w.addmm_(g.t(), hc)
            else:
                grad_h[s : s + chunk] = g @ w
                grad_w += g.t() @ hc
            if grad_b is not None:
                grad_b += g.to(acc).sum(0)
        if need_grad:
            grad_h /= count
            grad_w /= count
            if grad_b is not None:
                grad_b /= count
            ctx.save_for_backward(grad_h, grad_w, grad_b)
            ctx.dtypes = (h.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return loss / count

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        h_dt, w_dt, b_dt = ctx.dtypes
        # in place when the dtype already matches: the head's gradient is V x H fp32 and
        # would otherwise exist twice at the end of the step
        gh = _scaled(grad_h, grad_out, h_dt) if ctx.needs_input_grad[0] else None
        gw = _scaled(grad_w, grad_out, w_dt) if ctx.needs_input_grad[1] else None
        gb = (
            _scaled(grad_b, grad_out, b_dt)
            if grad_b is not None and ctx.needs_input_grad[2]
            else None
        )
        return gh, gw, gb, None, None, None, None


def _scaled(g: torch.Tensor, by: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return g.mul_(by) if g.dtype == dtype else (g * by).to(dtype)


def _liger():
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    except ImportError:
        return None
    return liger_fused_linear_cross_entropy


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    chunk: int | None = None,
    ignore_index: int = -100,
    use_liger: bool = True,
) -> torch.Tensor:
    """Mean cross-entropy of ``h @ weight.T + bias`` against ``target``, chunked over tokens.

    ``h``: (N, H) hidden states, ``target``: (N,) token ids. Equal to
    ``F.cross_entropy((h @ weight.T + bias).float(), target)`` in value and gradients.
    """
    h = h.reshape(-1, h.shape[-1])
    target = target.reshape(-1)
    if use_liger and h.is_cuda and (fused := _liger()) is not None:
        return fused(h, weight.to(h.dtype), target, bias=bias, ignore_index=ignore_index)
    if torch.is_autocast_enabled(h.device.type):
        h = h.to(torch.get_autocast_dtype(h.device.type))  # the head's matmul dtype
    chunk = chunk or chunk_tokens(h.shape[0], weight.shape[0])
    need_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    with torch.autocast(h.device.type, enabled=False):
        return _ChunkedLinearCE.apply(h, weight, bias, target, chunk, ignore_index, need_grad)
