"""InfoNCE with in-batch, hard and bank negatives; the memory bank; all-gather across 2 gloo ranks equals the
single-process loss and gradient over the same global batch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from methods.retrieval.losses import MemoryBank, contrastive_logits, gather, info_nce


def _vectors(seed=0, b=6, h=2, n=5, d=4):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, d, generator=g), torch.randn(b, d, generator=g), torch.randn(b, h, d, generator=g),
            torch.randn(n, d, generator=g))


def test_info_nce_by_hand():
    q, p, hard, bank = (x.double() for x in _vectors())
    tau = 0.5
    loss = info_nce(q, p, hard, bank, temperature=tau, reduction="none").double()
    for i in range(q.shape[0]):
        cands = torch.cat([p, hard[i], bank])  # B in-batch (positive first at i), H own hard, N bank
        logits = cands @ q[i] / tau
        assert logits.numel() == q.shape[0] + hard.shape[1] + bank.shape[0]  # B - 1 + 1 + H + N
        assert float(loss[i]) == pytest.approx(float(-(logits[i] - torch.logsumexp(logits, 0))), rel=1e-5)


def test_uniform_weights_are_the_plain_mean_and_weights_reweight():
    q, p, hard, bank = _vectors(1)
    plain = info_nce(q, p, hard, bank)
    assert torch.allclose(info_nce(q, p, hard, bank, weights=torch.full((6,), 3.0)), plain, atol=1e-6)
    each = info_nce(q, p, hard, bank, reduction="none")
    w = torch.arange(1.0, 7.0)
    assert torch.allclose(info_nce(q, p, hard, bank, weights=w), (w * each).sum() / w.sum(), atol=1e-6)


def test_only_query_i_sees_its_hard_negatives():
    q, p, hard, _ = _vectors(2)
    logits = contrastive_logits(q, p, hard, temperature=1.0)
    assert logits.shape == (6, 6 + 2)
    assert torch.allclose(logits[3, 6:], hard[3] @ q[3])


def test_duplicate_positives_are_not_negatives():
    q, p, _, _ = _vectors(3)
    rows = torch.tensor([0, 1, 2, 0, 4, 5])  # queries 0 and 3 share a passage
    logits = contrastive_logits(q, p, p_rows=rows, temperature=1.0)
    assert logits[0, 3] == -math.inf and logits[3, 0] == -math.inf and logits[0, 0] > -math.inf
    assert torch.isfinite(info_nce(q, p, p_rows=rows))


def test_a_bank_copy_of_the_own_positive_is_not_a_negative():
    q, p, _, bank = _vectors(5)
    rows = torch.arange(6)
    bank_rows = torch.tensor([3, 9, 9, 0, 7])  # bank vectors 0 and 3 are copies of queries 3's and 0's positives
    logits = contrastive_logits(q, p, bank=bank, p_rows=rows, bank_rows=bank_rows, temperature=1.0)
    assert logits[3, 6] == -math.inf and logits[0, 6 + 3] == -math.inf
    assert torch.isfinite(logits[1, 6:]).all()


def test_no_gradient_reaches_the_bank():
    q, p, _, bank = _vectors(4)
    bank.requires_grad_(True)
    q.requires_grad_(True)
    info_nce(q, p, bank=bank).backward()
    assert bank.grad is None and q.grad is not None


def test_memory_bank_fifo():
    bank = MemoryBank(5, 2)
    assert bank.negatives().shape == (0, 2)
    bank.push(torch.tensor([[1.0, 1], [2, 2], [3, 3]]))
    bank.push(torch.tensor([[4.0, 4], [5, 5], [6, 6]]))
    assert bank.negatives()[:, 0].tolist() == [4, 5, 6, 1, 2]  # newest batch first, the oldest fell out
    assert bank.negative_rows().tolist() == [-1] * 5
    bank.push(torch.tensor([[7.0, 7]]), torch.tensor([42]))
    assert bank.negative_rows().tolist() == [42, -1, -1, -1, -1] and bank.negatives()[0, 0] == 7
    assert int(bank.filled) == 5 and "vectors" in bank.state_dict()
    with pytest.raises(ValueError, match="bank_size"):
        MemoryBank(-1, 2)


def test_gather_is_the_identity_in_one_process():
    x = torch.randn(3, 2)
    assert gather(x) is x


# -- DDP: 2 gloo ranks ------------------------------------------------------------------------------------------
B, D_IN, D = 8, 5, 4


def _setup():
    g = torch.Generator().manual_seed(0)
    enc = torch.nn.Linear(D_IN, D)
    with torch.no_grad():
        enc.weight.copy_(torch.randn(D, D_IN, generator=g))
        enc.bias.copy_(torch.randn(D, generator=g))
    xq, xp = torch.randn(B, D_IN, generator=g), torch.randn(B, D_IN, generator=g)
    return enc, xq, xp


def _loss(enc, xq, xp, rows):
    q, p = F.normalize(enc(xq), dim=-1), F.normalize(enc(xp), dim=-1)
    return info_nce(q, gather(p), temperature=0.05, p_rows=gather(rows))


def _rank(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    enc, xq, xp = _setup()
    share = slice(rank * B // world, (rank + 1) * B // world)
    loss = _loss(enc, xq[share], xp[share], torch.arange(B)[share])
    loss.backward()
    for p in enc.parameters():  # what DDP does: average the gradients
        dist.all_reduce(p.grad)
        p.grad /= world
    losses = [torch.zeros(()) for _ in range(world)]
    dist.all_gather(losses, loss.detach())
    if rank == 0:
        torch.save({"loss": torch.stack(losses).mean(), "grads": [p.grad for p in enc.parameters()]}, out)
    dist.destroy_process_group()


@pytest.mark.e2e
def test_ddp_gather_equals_the_single_process_loss(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "ddp.pt"
    # forked ranks (torch is imported already; gloo on the CPU is fork-safe): seconds instead of two interpreters
    mp.start_processes(_rank, args=(2, f"file://{tmp_path / 'store'}", str(out)), nprocs=2, join=True,
                       start_method="fork")
    enc, xq, xp = _setup()
    single = _loss(enc, xq, xp, torch.arange(B))
    single.backward()
    got = torch.load(out)
    assert float(got["loss"]) == pytest.approx(float(single), rel=1e-6)
    for a, b in zip(got["grads"], [p.grad for p in enc.parameters()]):
        assert torch.allclose(a, b, atol=1e-6)
