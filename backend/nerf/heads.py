"""The field's two MLPs evaluated together, forward and backward written by hand for the CPU.

Both MLPs read the same hash features x and have one hidden layer of ReLU units, no biases:
    h = x W^T, W = [W_d; W_a]          (hidden layers of the density and albedo MLPs, stacked)
    raw = relu(h_d) w_d^T               density before the blob bias and softplus
    albedo_logits = relu(h_a) W_o^T
and for the normal, d raw / d x = (1[h_d > 0] * w_d) W_d.
Autograd would keep several [N, 128] tensors alive and stream each through memory a few times;
here the samples go through in blocks that stay in cache and the backward recomputes h from x
(one small matrix product), which on 2 cores is about twice as fast.
"""
from __future__ import annotations

import torch

CHUNK = 1 << 12  # samples per block: a block's [CHUNK, 128] hidden activations (2 MB) stay in L2


class FusedHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_hidden, w_density, w_albedo):
        n, hidden = x.shape[0], w_density.shape[1]
        raw, albedo_logits, raw_grad = x.new_empty(n, 1), x.new_empty(n, w_albedo.shape[0]), torch.empty_like(x)
        for start in range(0, n, CHUNK):
            block = slice(start, start + CHUNK)
            h = torch.relu_(x[block] @ w_hidden.t())
            h_density, h_albedo = h[:, :hidden], h[:, hidden:]
            torch.mm(h_density, w_density.t(), out=raw[block])
            torch.mm(h_albedo, w_albedo.t(), out=albedo_logits[block])
            torch.mm(torch.sign(h_density).mul_(w_density), w_hidden[:hidden], out=raw_grad[block])
        ctx.save_for_backward(x, w_hidden, w_density, w_albedo)
        return raw[:, 0], albedo_logits, raw_grad

    @staticmethod
    def backward(ctx, grad_raw, grad_albedo, grad_raw_grad):
        x, w_hidden, w_density, w_albedo = ctx.saved_tensors
        hidden = w_density.shape[1]
        w_d = w_hidden[:hidden]
        grad_x = torch.empty_like(x)
        grad_w_hidden, grad_w_density, grad_w_albedo = (torch.zeros_like(w) for w in (w_hidden, w_density, w_albedo))
        for start in range(0, x.shape[0], CHUNK):
            block = slice(start, start + CHUNK)
            xb, g_raw, g_albedo, g_grad = x[block], grad_raw[block, None], grad_albedo[block], grad_raw_grad[block]
            h = xb @ w_hidden.t()
            mask = (h > 0).to(x.dtype)
            a = h.mul_(mask)                                             # relu(h), in place
            mask_d, a_d, a_a = mask[:, :hidden], a[:, :hidden], a[:, hidden:]
            # raw_grad = (mask_d * w_d_out) W_d: its gradient reaches w_density and W_d (mask is constant).
            grad_w_density += (g_raw * a_d).sum(0, keepdim=True) + ((g_grad @ w_d.t()) * mask_d).sum(0, keepdim=True)
            grad_w_hidden[:hidden] += (mask_d * w_density).t() @ g_grad
            grad_w_albedo += g_albedo.t() @ a_a
            grad_h = torch.cat([(g_raw * w_density) * mask_d, (g_albedo @ w_albedo) * mask[:, hidden:]], dim=1)
            grad_w_hidden += grad_h.t() @ xb
            torch.mm(grad_h, w_hidden, out=grad_x[block])
        return grad_x, grad_w_hidden, grad_w_density, grad_w_albedo
