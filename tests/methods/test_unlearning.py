"""Unlearning (methods/unlearning): NPO's defining identities and its boundedness against GA, ULD's
logit-difference combination and relative-top filter, TOFU's metrics on hand-computed cases, and the
synthetic fictitious-authors benchmark's splits."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from methods.unlearning import losses, metrics
from methods.unlearning.fictitious_authors import QUESTIONS_PER_AUTHOR, FictitiousAuthors

B, T, V = 4, 8, 32


def free_sequences(seed: int = 0):
    """Free logit parameters for B sequences, their tokens and an answer mask (the first 3 tokens are the
    question)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g)
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.zeros(B, T, dtype=torch.long)
    mask[:, 3:] = 1
    return logits, ids, mask


def test_sequence_nll_sums_answer_tokens_only():
    logits, ids, mask = free_sequences()
    logp = F.log_softmax(logits, -1)
    by_hand = torch.zeros(B)
    for b in range(B):
        for t in range(3, T):  # answer token t is predicted at position t-1
            by_hand[b] -= logp[b, t - 1, ids[b, t]]
    torch.testing.assert_close(losses.sequence_nll(logits, ids, mask), by_hand)
    torch.testing.assert_close(losses.sequence_nll(logits, ids, mask, reduction="mean"), by_hand / (T - 3))
    changed = logits.clone()
    changed[:, :2] += 5 * torch.randn(B, 2, V)  # positions that predict question tokens
    torch.testing.assert_close(losses.sequence_nll(changed, ids, mask), by_hand)


def test_npo_at_reference_is_2_log2_over_beta_with_the_ga_gradient():
    logits, ids, mask = free_sequences()
    reference_nll = losses.sequence_nll(logits, ids, mask).detach()
    for beta in (0.1, 0.5, 2.0):
        theta = logits.clone().requires_grad_(True)
        npo = losses.npo_loss(losses.sequence_nll(theta, ids, mask), reference_nll, beta)
        assert npo.item() == pytest.approx(2 / beta * math.log(2), rel=1e-6)
        (npo_grad,) = torch.autograd.grad(npo, theta)
        theta_ga = logits.clone().requires_grad_(True)
        (ga_grad,) = torch.autograd.grad(losses.ga_loss(losses.sequence_nll(theta_ga, ids, mask)), theta_ga)
        torch.testing.assert_close(npo_grad, ga_grad, rtol=1e-5, atol=1e-7)
        assert ga_grad.abs().max() > 1e-3


def test_npo_gradient_is_ga_gradient_weighted_per_sequence():
    """Away from the reference: ∇L_NPO = mean_i W_i·∇log π_i with W_i = 2π_i^β/(π_i^β + π_ref,i^β)."""
    logits, ids, mask = free_sequences(1)
    reference_nll = losses.sequence_nll(logits + 0.7 * torch.randn(B, T, V), ids, mask).detach()
    beta = 0.3
    theta = logits.clone().requires_grad_(True)
    nll = losses.sequence_nll(theta, ids, mask)
    (npo_grad,) = torch.autograd.grad(losses.npo_loss(nll, reference_nll, beta), theta, retain_graph=True)
    log_ratio = (reference_nll - nll).detach()  # log π_θ − log π_ref
    weights = 2 * torch.sigmoid(beta * log_ratio)
    (weighted_ga,) = torch.autograd.grad(-(weights * nll).mean(), theta)
    torch.testing.assert_close(npo_grad, weighted_ga, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(weights, torch.ones(B), atol=1e-2)  # really away from W = 1


def test_npo_tends_to_ga_up_to_a_constant_as_beta_vanishes():
    logits, ids, mask = free_sequences(2)
    nll = losses.sequence_nll(logits, ids, mask)
    reference_nll = losses.sequence_nll(logits + torch.randn(B, T, V), ids, mask)
    limit = losses.ga_loss(nll) + reference_nll.mean()  # E[log π_θ − log π_ref]
    errors = [abs((losses.npo_loss(nll, reference_nll, beta) - 2 / beta * math.log(2) - limit).item())
              for beta in (1.0, 0.1, 0.01, 0.001)]
    assert errors[0] > 0.05
    assert all(a > 5 * b for a, b in zip(errors, errors[1:]))  # O(β)
    assert errors[-1] < 1e-2


def test_npo_stays_bounded_while_ga_diverges():
    logits, ids, mask = free_sequences(3)
    reference_nll = losses.sequence_nll(logits, ids, mask).detach()
    trace = {}
    for name in ("ga", "npo"):
        theta = logits.clone().requires_grad_(True)
        opt = torch.optim.SGD([theta], lr=1.0)
        values, nlls = [], []
        for _ in range(300):
            nll = losses.sequence_nll(theta, ids, mask)
            loss = losses.ga_loss(nll) if name == "ga" else losses.npo_loss(nll, reference_nll, 0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            values.append(loss.item())
            nlls.append(nll.mean().item())
        trace[name] = (values, nlls)
    ga_loss, ga_nll = trace["ga"]
    npo_loss, npo_nll = trace["npo"]
    assert min(npo_loss) >= 0  # log(1 + x) ≥ 0
    assert ga_loss[-1] < -500 and ga_loss[-1] < ga_loss[-50] - 100  # still falling at a steady rate
    assert npo_nll[-1] - npo_nll[0] < 0.1 * (ga_nll[-1] - ga_nll[0])  # NPO's ascent slows down (~log t)
    assert npo_loss[-1] < 0.05 * npo_loss[0]  # its weight W -> 0 as π_θ -> 0
    assert npo_nll[-1] > npo_nll[0] + 5  # but it does ascend the forget NLL


def test_kl_losses_match_the_reference_codes_kl_div_forms():
    logits, _, _ = free_sequences(4)
    reference = torch.randn(B, T, V)
    flat = lambda x: F.log_softmax(x, -1).view(-1, V)  # noqa: E731
    tofu_kl = F.kl_div(flat(logits), flat(reference), reduction="batchmean", log_target=True)
    torch.testing.assert_close(losses.kl_to_reference(logits, reference), tofu_kl)
    uniform = torch.full((B * T, V), 1 / V)
    uld_uniform = F.kl_div(flat(logits), uniform, reduction="batchmean")
    torch.testing.assert_close(losses.kl_uniform_to_model(logits), uld_uniform)
    assert losses.kl_uniform_to_model(torch.full((2, 3, V), 1.7)).abs() < 1e-6
    nll = torch.tensor([2.0, 4.0])
    torch.testing.assert_close(losses.uld_assistant_loss(nll, logits), 3.0 + 5.0 * uld_uniform)
    torch.testing.assert_close(losses.npo_kl_loss(nll, nll, logits, reference),
                               2 / 0.1 * torch.tensor(math.log(2)) + tofu_kl)
    torch.testing.assert_close(losses.grad_diff_loss(nll, torch.tensor([1.0])), torch.tensor(-2.0))
    torch.testing.assert_close(losses.npo_rt_loss(nll, nll, torch.tensor([1.0])),
                               2 / 0.1 * torch.tensor(math.log(2)) + 1.0)


def padded_rows(answer_lengths, seed: int, question: int = 3, width: int = 14):
    """Right-padded rows (token 0 = padding) of a 3-token question and answers of the given lengths, and
    their answer masks."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (len(answer_lengths), width), generator=g)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(answer_lengths):
        mask[row, question:question + n] = 1
        ids[row, question + n:] = 0
    return ids, mask


def hf_causal_lm_loss(logits, ids, mask):
    """transformers' causal-LM `outputs.loss` with the labels −100 outside the answers (the TOFU/NPO codes')."""
    labels = ids.masked_fill(mask == 0, -100)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                           ignore_index=-100)


def test_token_mean_nll_is_the_hf_loss_over_every_answer_token_of_the_batch():
    ids, mask = padded_rows([2, 5, 9], seed=5)
    logits = torch.randn(*ids.shape, V, generator=torch.Generator().manual_seed(6))
    logits = logits * torch.tensor([0.1, 1.0, 4.0])[:, None, None]  # rows of different confidence
    torch.testing.assert_close(losses.token_mean_nll(logits, ids, mask), hf_causal_lm_loss(logits, ids, mask))
    sequence_means = losses.sequence_nll(logits, ids, mask, "mean").mean()  # what the retain CE was before
    assert abs(sequence_means - hf_causal_lm_loss(logits, ids, mask)) > 0.5


def test_retain_terms_of_the_objectives_are_the_codes():
    """Through Unlearning.unlearning_loss: grad_diff − ga and npo_rt − npo are HF's retain `outputs.loss` (the
    batch token mean); npo_kl − npo is KL(π_ref ‖ π_θ) averaged over the positions that predict a real token
    (a listed deviation: the code's batchmean also averages over the padding positions)."""
    from types import SimpleNamespace

    from methods.unlearning.module import UnlearningModule
    from methods.unlearning.npo import Unlearning

    g = torch.Generator().manual_seed(7)
    table, reference_table = torch.randn(V, V, generator=g), torch.randn(V, V, generator=g)  # bigram "models"
    module = SimpleNamespace(logits=lambda ids: 2 * table[ids], reference_logits=lambda ids: 2 * reference_table[ids],
                             answer_nll=UnlearningModule.answer_nll)
    forget, forget_mask = padded_rows([4, 4, 4], seed=8)
    retain, retain_mask = padded_rows([1, 3, 10], seed=9)

    def loss(objective: str) -> torch.Tensor:
        method = Unlearning(name=objective, objective=objective)
        return method.unlearning_loss(module, forget, forget_mask, retain, retain_mask)

    retain_ce = hf_causal_lm_loss(module.logits(retain), retain, retain_mask)
    torch.testing.assert_close(loss("grad_diff") - loss("ga"), retain_ce)
    torch.testing.assert_close(loss("npo_rt") - loss("npo"), retain_ce)
    kl_sum, positions = 0.0, 0
    for row in range(3):
        last = 3 + int(retain_mask[row].sum()) - 1  # the last answer token (its EOS in the real batches)
        for t in range(last):  # positions 0 .. last−1 predict tokens 1 .. last
            p_ref = F.softmax(module.reference_logits(retain)[row, t], -1)
            kl_sum += float((p_ref * (p_ref.log() - F.log_softmax(module.logits(retain)[row, t], -1))).sum())
            positions += 1
    assert float(loss("npo_kl") - loss("npo")) == pytest.approx(kl_sum / positions, rel=1e-5)
    code_kl = F.kl_div(F.log_softmax(module.logits(retain), -1).view(-1, V),
                       F.log_softmax(module.reference_logits(retain), -1).view(-1, V), reduction="batchmean",
                       log_target=True)
    assert abs(float(code_kl) - kl_sum / positions) > 0.1  # the deviation is real on padded rows


def test_uld_with_constant_assistant_logits_leaves_the_target_distribution():
    target = 3 * torch.randn(B, T, V)
    constant = torch.randn(B, T, 1).expand(B, T, V)  # a different constant at every position
    combined = losses.uld_logits(target, constant, alpha=1.0, relative_top=None)
    torch.testing.assert_close(combined.softmax(-1), target.softmax(-1), rtol=0, atol=1e-6)
    # With the filter the constant moves the kept tokens together: their relative probabilities are the
    # target's, and so are those of the tokens filtered out.
    filtered = losses.uld_logits(target, constant, alpha=0.8, relative_top=0.1)
    keep = losses.relative_top_mask(target, 0.1)
    for part in (keep, ~keep):
        restricted_filtered = filtered.masked_fill(~part, -torch.inf).softmax(-1)
        restricted_target = target.masked_fill(~part, -torch.inf).softmax(-1)
        torch.testing.assert_close(restricted_filtered, restricted_target, rtol=0, atol=1e-6)
    assert not torch.allclose(filtered.softmax(-1), target.softmax(-1), atol=1e-3)  # the filter matters


@pytest.mark.parametrize("rho", [0.01, 0.1, 0.3])
def test_relative_top_filter_keeps_at_least_rho_v_tokens_and_zeroes_the_assistant_elsewhere(rho):
    vocab = 200
    for scale in (0.1, 1.0, 10.0, 100.0):  # flat to very peaked target distributions
        target = scale * torch.randn(64, vocab, generator=torch.Generator().manual_seed(int(scale * 10)))
        keep = losses.relative_top_mask(target, rho)
        assert (keep.sum(-1) >= int(rho * vocab)).all()
        p = target.softmax(-1)
        within_rho_of_max = p >= rho * p.max(-1, keepdim=True).values * (1 + 1e-6)
        assert (keep | ~within_rho_of_max).all()  # every token within a factor ρ of the top is kept
        assistant = torch.randn(64, vocab)
        combined = losses.uld_logits(target, assistant, alpha=1.0, relative_top=rho)
        torch.testing.assert_close(combined[~keep], target[~keep], rtol=0, atol=0)
        torch.testing.assert_close(combined[keep], target[keep] - assistant[keep])
        if scale == 100.0:  # peaked: the ⌊ρ·V⌋ floor, not the ratio, decides
            assert (keep.sum(-1) == max(1, int(rho * vocab))).float().mean() > 0.5


def test_truth_ratio_probability_and_utility_on_hand_cases():
    paraphrased = [1.0, 2.0]
    perturbed = [[2.0, 4.0], [1.0, 1.0]]
    s = metrics.truth_ratio_statistic(paraphrased, perturbed)
    np.testing.assert_allclose(s, [math.exp(2.0), math.exp(-1.0)])
    assert metrics.truth_ratio(s, "forget") == pytest.approx((math.exp(-2) + math.exp(-1)) / 2)
    assert metrics.truth_ratio(s, "retain") == pytest.approx((1 - math.exp(-2)) / 2)
    assert metrics.answer_probability([0.0, math.log(2)]) == pytest.approx(0.75)
    # P̃ = 1/2 true, 1/4 and 1/4 perturbed -> 1/2
    assert metrics.normalized_option_probability([math.log(2)], [[math.log(4), math.log(4)]]) == pytest.approx(0.5)
    assert metrics.harmonic_mean([1.0, 0.5, 0.25]) == pytest.approx(3 / 7)
    assert metrics.model_utility({"retain_prob": 1.0, "retain_rouge": 0.5, "retain_truth_ratio": 0.25,
                                  "forget_prob": 1e-9}) == pytest.approx(3 / 7)
    assert metrics.harmonic_mean([0.0, 1.0]) == 0.0


def test_rouge_l_recall_on_hand_cases():
    # reference words: the cat sat on the mat; LCS with "the cat is on a mat" = the cat on mat
    assert metrics.rouge_l_recall("The cat sat on the mat.", "the cat is on a mat") == pytest.approx(4 / 6)
    assert metrics.rouge_l_recall("Lisbon", "She was born in Lisbon, Portugal.") == 1.0
    assert metrics.rouge_l_recall("a b c d", "d c b a") == pytest.approx(1 / 4)
    assert metrics.rouge_l_recall("Born in 1962.", "") == 0.0


def test_rouge_l_recall_stems_inflections_as_tofu_does():
    """TOFU scores with rouge_score's RougeScorer(use_stemmer=True): the Porter stemmer merges "writes"/"writing"
    and "novels"/"novel" (not the irregular "wrote"; words of <= 3 letters are never stemmed). Without it the
    first case is 2/4 and the second 1/3."""
    assert metrics.rouge_l_recall("The author writes novels.", "the author writing a novel") == 1.0
    assert metrics.rouge_l_recall("She writes novels.", "she wrote a novel") == pytest.approx(2 / 3)
    assert metrics.rouge_l_recall("He received two awards.", "He receives the award") == pytest.approx(3 / 4)
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)  # TOFU's call, verbatim
    pairs = [(qa.answer, wrong) for qa in FictitiousAuthors(20, 0.10, seed=2).forget for wrong in qa.perturbed_answers]
    pairs += [("Lucia Vamoken was honoured with the Silver Quill Award.", "Lucia Vamoken honours silver quills")]
    for reference, generated in pairs:
        assert metrics.rouge_l_recall(reference, generated) == scorer.score(reference, generated)["rougeL"].recall


def exact_ks_pvalue(x, y) -> float:
    """The two-sided two-sample KS p-value in exact integer arithmetic: the share of the C(n+m, n) equally likely
    merge orders (lattice paths) that leave the band |i/n − j/m| < D (continuous data, no ties)."""
    n, m = len(x), len(y)
    order = sorted([(v, 0) for v in x] + [(v, 1) for v in y])
    i = j = width = 0  # width = D·n·m, an integer
    for _, side in order:
        i, j = (i + 1, j) if side == 0 else (i, j + 1)
        width = max(width, abs(i * m - j * n))
    inside = [1] + [0] * m
    for j in range(1, m + 1):
        inside[j] = inside[j - 1] if abs(j * n) < width else 0
    for i in range(1, n + 1):
        row = [inside[0] if i * m < width else 0]
        for j in range(1, m + 1):
            row.append(inside[j] + row[j - 1] if abs(i * m - j * n) < width else 0)
        inside = row
    total = math.comb(n + m, n)
    return float(Fraction(total - inside[m], total))


def test_forget_quality_keeps_its_relative_accuracy_down_to_1e_100():
    """TOFU's forget quality is scipy's exact KS test; p-values from 1e-17 to 1e-101 (papers plot them on a log
    scale) against exact integer path counting. Measured agreement: 1.3e-15 relative at worst; 1 − P(inside) in
    floats (the former implementation) gave 0, 1.1e-16 or 2.2e-16 for every p-value here below 1e-16, and was
    0.5% off at 2.2e-14."""
    rng = np.random.default_rng(0)
    cases = [(40, 40, 2.5), (60, 45, 2.0), (100, 100, 2.0), (100, 100, 3.5), (150, 120, 3.0), (200, 150, 4.0),
             (170, 170, 30.0)]  # the last: fully separated, p = 2 / C(340, 170)
    values = []
    for n, m, shift in cases:
        x, y = rng.normal(size=n), rng.normal(shift, size=m)
        expected = exact_ks_pvalue(x, y)
        assert metrics.forget_quality(x, y) == pytest.approx(expected, rel=1e-12, abs=0)
        values.append(expected)
    assert min(values) < 1e-100 and max(values) < 1e-13
    assert values[-1] == pytest.approx(2 / math.comb(340, 170), rel=1e-12)
    assert exact_ks_pvalue([1, 2, 3], [4, 5, 6]) == pytest.approx(0.1)  # the reference on a hand case


def test_ks_pvalue_on_hand_cases_and_against_scipy():
    # n = m = 3, all x below all y: D = 1, and only the 2 of the C(6,3) = 20 orderings that fully separate
    # the samples reach it: p = 2/20.
    assert metrics.forget_quality([1, 2, 3], [4, 5, 6]) == pytest.approx(0.1)
    # n = m = 2, interleaved: every ordering has D ≥ 1/2: p = 1.
    assert metrics.forget_quality([1, 3], [2, 4]) == pytest.approx(1.0)
    # n = 1, m = 2, x below both: D = 1, orderings with x at an end: 2 of 3.
    assert metrics.forget_quality([0.0], [1.0, 2.0]) == pytest.approx(2 / 3)
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for n, m, shift in [(5, 7, 0.5), (20, 20, 1.0), (40, 33, 0.3), (120, 100, 0.4)]:
        x, y = rng.normal(size=n), rng.normal(shift, size=m)
        assert metrics.forget_quality(x, y) == pytest.approx(stats.ks_2samp(x, y).pvalue, rel=1e-12, abs=0)
        assert metrics.forget_quality(x, y) == pytest.approx(exact_ks_pvalue(x, y), rel=1e-12, abs=0)


def test_forget_quality_is_the_same_for_the_statistic_and_its_inverse():
    rng = np.random.default_rng(1)
    x, y = np.exp(rng.normal(size=30)), np.exp(rng.normal(0.4, size=25))
    assert metrics.forget_quality(x, y) == pytest.approx(metrics.forget_quality(1 / x, 1 / y), rel=1e-12)


def test_fictitious_authors_is_seeded_and_order_independent():
    a, b = FictitiousAuthors(60, 0.05, seed=3), FictitiousAuthors(60, 0.05, seed=3)
    assert a.forget == b.forget and a.retain == b.retain
    assert FictitiousAuthors(60, 0.05, seed=4).retain != a.retain
    backwards = [a.questions(i) for i in reversed(range(60))][::-1]
    assert [qa for qs in backwards for qa in qs] == a.retain + a.forget
    bigger = FictitiousAuthors(200, 0.05, seed=3)  # the first 60 authors do not depend on how many follow
    assert [bigger.author(i) for i in range(60)] == [a.author(i) for i in range(60)]


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.10])
def test_fictitious_authors_splits_by_author_with_the_requested_fraction(fraction):
    data = FictitiousAuthors(200, fraction, seed=0)
    num_forget = round(fraction * 200)
    assert len(data.forget_authors) == num_forget
    assert len(data.forget) == num_forget * QUESTIONS_PER_AUTHOR
    assert len(data.retain) == (200 - num_forget) * QUESTIONS_PER_AUTHOR
    forget_authors = {qa.author for qa in data.forget}
    assert forget_authors.isdisjoint({qa.author for qa in data.retain})
    forget_names = {data.author(i).name for i in forget_authors}
    assert not any(name in qa.question for qa in data.retain for name in forget_names)
    assert len({data.author(i).name for i in range(200)}) == 200
    if fraction < 0.10:  # nested like TOFU's forget01 ⊂ forget05 ⊂ forget10
        assert forget_authors <= set(FictitiousAuthors(200, 0.10, seed=0).forget_authors)


def test_perturbed_answers_are_wrong_variants_of_the_paraphrase():
    data = FictitiousAuthors(40, 0.10, seed=1)
    for qa in data.forget + data.retain:
        assert qa.paraphrased_answer != qa.answer
        assert 1 <= len(qa.perturbed_answers) <= 5 and len(set(qa.perturbed_answers)) == len(qa.perturbed_answers)
        assert len(qa.perturbed_answers) == 5 or "man or a woman" in qa.question
        for wrong in qa.perturbed_answers:
            assert wrong not in (qa.answer, qa.paraphrased_answer)
            # same template: the words the paraphrase and the perturbed answer share are most of them
            assert metrics.rouge_l_recall(qa.paraphrased_answer, wrong) >= 0.5


def test_bad_configuration_is_a_one_line_error():
    with pytest.raises(ValueError, match="forget_fraction"):
        FictitiousAuthors(200, 0.2)
    with pytest.raises(ValueError, match="num_authors"):
        FictitiousAuthors(20, 0.01)
    with pytest.raises(ValueError, match="beta"):
        losses.npo_loss(torch.zeros(1), torch.zeros(1), beta=0.0)
    with pytest.raises(ValueError, match="relative_top"):
        losses.relative_top_mask(torch.zeros(3), 0.0)
    with pytest.raises(ValueError, match="split"):
        metrics.truth_ratio([1.0], "test")
