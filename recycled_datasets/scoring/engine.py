"""Batched loss computation: many sequences per forward pass, vocabulary logits only where scored.

Sequences are sorted by length and packed into batches under a padded-token budget, so padding is small.
The transformer body runs in the model's dtype (bf16 by default) and the output head only at the positions
that predict a target token. In fp32 the head is plain fp32. In bf16 the full-vocabulary head runs in bf16
(3x faster than fp32 on CPUs with bf16 dot products), then the logits that decide the loss are recomputed
exactly in fp32 — the target's and the top ``EXACT_TOP`` of each position, which carry nearly all of the
softmax mass — and the log-sum-exp is reduced in fp32. What stays in bf16 is the far tail of the softmax.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

from recycled_datasets.scoring.plan import Job

logger = logging.getLogger(__name__)

HEAD_CHUNK = 1024  # scored positions per head matmul (a large M keeps the matmul efficient)
# On a CPU the softmax work after the head matmul runs over a few positions at a time, so that their logits (in
# the model's dtype and in fp32: 6 bytes per vocabulary entry) stay in the core's cache across the conversion,
# top-k, recompute and log-sum-exp: that halves this work against whole-chunk passes, with the same results bit
# for bit. The positions per pass follow the vocabulary: 8 for SmolLM2's 49k entries (the measured best on
# 2-core AMD and Intel machines), proportionally more for a smaller one, where 8 positions would spend the time
# on per-call overhead instead. A GPU takes the whole chunk at once (small passes would only add launches).
HEAD_CACHE_BYTES = 8 * 49_152 * 6
EXACT_TOP = 16  # logits per position recomputed in fp32 on the mixed-precision path
MAX_PADDING = 0.1  # a batch's rows are at least (1 - MAX_PADDING) x its longest row...
PAD_SLACK = 16  # ...or at most this many tokens shorter, so short rows still share a forward pass


def batch_tokens_for(device: str, batch_tokens: int | None = None) -> int:
    """The padded-token budget of a forward pass: the user's, else 8192 on CPU and 65536 on GPU."""
    return batch_tokens or (65536 if device.startswith("cuda") else 8192)


def make_batches(
    jobs: Sequence[Job], batch_tokens: int, max_batch: int = 512, max_padding: float = MAX_PADDING
) -> list[list[Job]]:
    """Length-sorted batches whose padded size (rows x longest) stays within ``batch_tokens``.

    Padding costs as much compute as real tokens, so a batch also ends where the next sequence is shorter
    than its longest by more than ``max_padding`` of it (and more than ``PAD_SLACK`` tokens): a few more
    forward passes instead of up to half of each one spent on padding when lengths spread widely.
    Deterministic for the same jobs: ties in length are broken by key. A sequence longer than the budget
    gets a batch of its own.
    """
    ordered = sorted(jobs, key=lambda j: (-len(j.ids), j.key))
    batches: list[list[Job]] = []
    current: list[Job] = []
    for job in ordered:
        longest = len(current[0].ids) if current else len(job.ids)
        gap = longest - len(job.ids)
        too_short = gap > PAD_SLACK and gap > max_padding * longest
        if current and ((len(current) + 1) * longest > batch_tokens or len(current) >= max_batch or too_short):
            batches.append(current)
            current = []
        current.append(job)
    if current:
        batches.append(current)
    return batches


def head_sub(vocab: int) -> int:
    """Scored positions per softmax pass on a CPU: as many as keep their logits within ``HEAD_CACHE_BYTES``."""
    return max(1, min(HEAD_CHUNK, HEAD_CACHE_BYTES // (6 * max(vocab, 1))))


class HeadAdapter:
    """Applies the model's output head the way its own ``forward`` does, in fp32, to selected hidden states."""

    def __init__(self, model: Any, device: str):
        import torch

        head = model.get_output_embeddings()
        if head is None:
            raise ValueError(f"{type(model).__name__} has no output embeddings to score with")
        self.low = head.weight.detach().to(device)  # the model's dtype
        self.sub = head_sub(self.low.shape[0]) if device.startswith("cpu") else HEAD_CHUNK
        self.mixed = self.low.dtype != torch.float32
        self.weight = self.low.to(torch.float32)
        bias = getattr(head, "bias", None)
        self.bias = None if bias is None else bias.detach().to(device, torch.float32)
        config = model.config
        text = getattr(config, "text_config", None) or config
        self.softcap = getattr(text, "final_logit_softcapping", None)
        self.scaling = getattr(text, "logits_scaling", None)  # Granite divides by it
        self.scale = getattr(text, "logit_scale", None)  # Cohere multiplies by it

    def post(self, out: Any) -> Any:
        """The model's own transformation of raw head outputs (scales, soft-capping), in fp32."""
        import torch

        if self.scale is not None:
            out = out * self.scale
        if self.scaling is not None:
            out = out / self.scaling
        if self.softcap is not None:
            out = torch.tanh(out / self.softcap) * self.softcap
        return out

    def nll(self, hidden: Any, target: Any) -> Any:
        """Token NLL in fp32 of ``target`` given final hidden states ``hidden`` ([n, h] and [n])."""
        import torch

        h32 = hidden.to(torch.float32)
        if not self.mixed:
            raw = torch.nn.functional.linear(h32, self.weight, self.bias)
            parts = [
                torch.nn.functional.cross_entropy(
                    self.post(raw[lo : lo + self.sub]), target[lo : lo + self.sub], reduction="none"
                )
                for lo in range(0, len(target), self.sub)
            ]
            return torch.cat(parts) if parts else raw.new_empty(0)
        raw = torch.nn.functional.linear(hidden.to(self.low.dtype), self.low)
        parts = [
            self._mixed_nll(raw[lo : lo + self.sub], h32[lo : lo + self.sub], target[lo : lo + self.sub])
            for lo in range(0, len(target), self.sub)
        ]
        return torch.cat(parts) if parts else h32.new_empty(0)

    def _mixed_nll(self, raw: Any, h32: Any, target: Any) -> Any:
        """NLL from low-precision logits ``raw``, with the target's and the top logits recomputed in fp32."""
        import torch

        logits = raw.to(torch.float32)
        if self.bias is not None:
            logits += self.bias
        top = logits.topk(min(EXACT_TOP, logits.shape[-1]), dim=-1).indices
        exact_top = torch.einsum("nh,nkh->nk", h32, self.weight[top])
        if self.bias is not None:
            exact_top += self.bias[top]
        logits.scatter_(1, top, exact_top)
        exact_target = (h32 * self.weight[target]).sum(-1)
        if self.bias is not None:
            exact_target += self.bias[target]
        logits.scatter_(1, target[:, None], exact_target[:, None])
        # cross_entropy's fused log-softmax: a quarter of the time of a composite logsumexp on a CPU.
        return torch.nn.functional.cross_entropy(self.post(logits), target, reduction="none")


def batch_tensors(batch: Sequence[Job], pad_id: int) -> tuple[Any, Any]:
    """Right-padded ``input_ids`` and ``attention_mask`` ([rows, longest]) of a batch, on the CPU."""
    import torch

    longest = max(len(j.ids) for j in batch)
    ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), longest), dtype=torch.long)
    for r, job in enumerate(batch):
        ids[r, : len(job.ids)] = torch.tensor(job.ids, dtype=torch.long)
        mask[r, : len(job.ids)] = 1
    return ids, mask


def forward_hidden(model: Any, input_ids: Any, attention_mask: Any) -> Any:
    """Final hidden states of the model's body (no output head): the scorer's forward pass."""
    body = model.base_model
    out = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def score_batches(
    model: Any,
    batches: Sequence[list[Job]],
    *,
    device: str,
    pad_id: int = 0,
) -> Iterator[tuple[list[Job], list[float]]]:
    """Yield (jobs, mean NLL per job) for each batch; losses are float64 Python numbers."""
    import torch

    head = HeadAdapter(model, device)
    with torch.inference_mode():
        for batch in batches:
            ids, mask = batch_tensors(batch, pad_id)
            rows, cols, targets = [], [], []
            for r, job in enumerate(batch):
                rows.extend([r] * job.n)
                cols.extend(range(job.start - 1, job.start - 1 + job.n))
                targets.extend(job.ids[job.start : job.start + job.n])
            hidden = forward_hidden(model, ids.to(device), mask.to(device))
            owner = torch.tensor(rows, device=device)
            selected = hidden[owner, torch.tensor(cols, device=device)]
            target = torch.tensor(targets, dtype=torch.long, device=device)
            nll = torch.empty(len(targets), dtype=torch.float32, device=device)
            for lo in range(0, len(targets), HEAD_CHUNK):
                hi = lo + HEAD_CHUNK
                nll[lo:hi] = head.nll(selected[lo:hi], target[lo:hi])
            sums = torch.zeros(len(batch), dtype=torch.float64, device=device)
            sums.index_add_(0, owner, nll.to(torch.float64))
            counts = torch.tensor([j.n for j in batch], dtype=torch.float64, device=device)
            losses = (sums / counts).cpu().tolist()
            if not all(map(math.isfinite, losses)):
                bad = [j.key for j, v in zip(batch, losses, strict=True) if not math.isfinite(v)]
                logger.warning("%d sequences gave a non-finite loss (first key %s)", len(bad), bad[0])
            yield batch, losses
