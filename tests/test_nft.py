"""Tests of learner/nft.py on hand-computable tensors: advantages, optimality, the NFT loss, the θ_old schedule."""

import pytest
import torch
from torch.testing import assert_close

from learner.nft import (
    eval_ema_decay,
    group_advantages,
    learning_rate,
    nft_loss,
    old_policy_decay,
    optimality,
    training_timesteps,
)

EPS = 1e-4


# --- advantages and optimality -------------------------------------------------------------------------------


def test_group_advantages_global_std():
    rewards = torch.tensor([1.0, 3.0, 2.0, 6.0])
    group_ids = torch.tensor([0, 0, 1, 1])
    # Group means 2 and 4; population std of all four rewards: sqrt(((1-3)² + 0 + (2-3)² + (6-3)²) / 4) = sqrt(3.5).
    expected = torch.tensor([-1.0, 1.0, -2.0, 2.0]) / (3.5**0.5 + EPS)
    assert_close(group_advantages(rewards, group_ids), expected)


def test_group_advantages_group_std_with_interleaved_ids():
    rewards = torch.tensor([1.0, 2.0, 3.0, 6.0])
    group_ids = torch.tensor([5, 9, 5, 9])  # group 5: {1, 3}, std 1; group 9: {2, 6}, std 2
    expected = torch.tensor([-1 / (1 + EPS), -2 / (2 + EPS), 1 / (1 + EPS), 2 / (2 + EPS)])
    assert_close(group_advantages(rewards, group_ids, global_std=False), expected)


@pytest.mark.parametrize("global_std", [True, False], ids=["global-std", "group-std"])
def test_constant_group_gets_zero_advantage(global_std):
    rewards = torch.tensor([0.7, 0.7, 0.7, 0.1, 0.9, 0.5])
    group_ids = torch.tensor([3, 3, 3, 4, 4, 4])
    advantages = group_advantages(rewards, group_ids, global_std=global_std)
    assert_close(advantages[:3], torch.zeros(3))
    assert advantages[3] < 0 < advantages[4]


def test_optimality_clips_and_maps_to_unit_interval():
    advantages = torch.tensor([-10.0, -5.0, -2.5, 0.0, 2.5, 5.0, 10.0])
    expected = torch.tensor([0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0])
    assert_close(optimality(advantages, adv_clip_max=5.0), expected)
    r = optimality(100 * torch.randn(1000, generator=torch.Generator().manual_seed(0)), adv_clip_max=2.0)
    assert r.min() == 0 and r.max() == 1


# --- the loss on one hand-computed sample ---------------------------------------------------------------------
# x0 = 0, xt = 1, t = 0.5, v_old = (2, 0), v_theta = (4, 1), β = 0.5:
#   v⁺ = (3, 0.5) → x̂0⁺ = (−0.5, 0.75), w⁺ = 0.625, L⁺ = mean(0.25, 0.5625) / 0.625 = 0.65
#   v⁻ = (1, −0.5) → x̂0⁻ = (0.5, 1.25),  w⁻ = 0.875, L⁻ = mean(0.25, 1.5625) / 0.875 = 29/28
L_POS, L_NEG = 0.65, 29 / 28


def hand_inputs(r: float, **overrides) -> dict:
    inputs = dict(
        v_theta=torch.tensor([[[[4.0, 1.0]]]]),
        v_old=torch.tensor([[[[2.0, 0.0]]]]),
        v_ref=None,
        x0=torch.zeros(1, 1, 1, 2),
        xt=torch.ones(1, 1, 1, 2),
        t=torch.tensor([0.5]),
        r=torch.tensor([r]),
        nft_beta=0.5,
        kl_coef=0.0,
        adv_clip_max=5.0,
    )
    return inputs | overrides


@pytest.mark.parametrize(
    ("r", "expected"),
    [(1.0, 5 * L_POS / 0.5), (0.0, 5 * L_NEG / 0.5), (0.25, 5 * (0.25 * L_POS + 0.75 * L_NEG) / 0.5)],
    ids=["r1-positive-only", "r0-negative-only", "r-quarter-mixes"],
)
def test_hand_computed_loss(r, expected):
    loss, metrics = nft_loss(**hand_inputs(r))
    assert_close(loss.item(), expected)
    assert_close(metrics["positive_loss"].item(), L_POS)
    assert_close(metrics["negative_loss"].item(), L_NEG)
    assert_close(metrics["old_deviation"].item(), ((4 - 2) ** 2 + (1 - 0) ** 2) / 2)
    assert_close(metrics["kl"].item(), 0.0)


def test_policy_term_is_multiplied_by_adv_clip_max():
    loss_5, _ = nft_loss(**hand_inputs(1.0))
    loss_10, _ = nft_loss(**hand_inputs(1.0, adv_clip_max=10.0))
    assert_close(loss_10, 2 * loss_5)


def test_kl_term():
    v_ref = torch.tensor([[[[4.0, 0.0]]]])  # (v_theta − v_ref)² = (0, 1), mean 0.5
    loss, metrics = nft_loss(**hand_inputs(1.0, v_ref=v_ref, kl_coef=0.1))
    assert_close(metrics["kl"].item(), 0.5)
    assert_close(loss.item(), 5 * L_POS / 0.5 + 0.1 * 0.5)
    assert_close(metrics["policy_loss"].item(), 5 * L_POS / 0.5)
    with pytest.raises(ValueError, match="kl_coef"):
        nft_loss(**hand_inputs(1.0, kl_coef=0.1))


# --- properties on random tensors -----------------------------------------------------------------------------


def random_batch(seed: int = 0, dtype=torch.float32) -> dict:
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(3, 2, 2, 2, generator=gen, dtype=dtype)  # (B, C, H, W)
    noise = torch.randn(3, 2, 2, 2, generator=gen, dtype=dtype)  # (B, C, H, W)
    t = torch.tensor([0.2, 0.5, 0.9], dtype=dtype)  # (B,)
    xt = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * noise  # (B, C, H, W)
    v_old = noise - x0 + 0.5 * torch.randn(3, 2, 2, 2, generator=gen, dtype=dtype)  # (B, C, H, W)
    v_theta = v_old + 0.3 * torch.randn(3, 2, 2, 2, generator=gen, dtype=dtype)  # (B, C, H, W)
    v_ref = v_old + 0.3 * torch.randn(3, 2, 2, 2, generator=gen, dtype=dtype)  # (B, C, H, W)
    return dict(
        v_theta=v_theta,
        v_old=v_old,
        v_ref=v_ref,
        x0=x0,
        xt=xt,
        t=t,
        r=torch.tensor([0.1, 0.6, 0.9]),
        nft_beta=0.4,
        kl_coef=0.01,
        adv_clip_max=5.0,
    )


def test_loss_ignores_r_when_v_theta_equals_v_old():
    batch = random_batch(dtype=torch.float64)
    batch["v_theta"] = batch["v_old"].clone()
    losses = [nft_loss(**batch | {"r": torch.full((3,), r)})[0] for r in (0.0, 0.3, 1.0)]
    assert_close(losses[0], losses[1])
    assert_close(losses[0], losses[2])


def test_beta_scales_the_policy_loss_as_one_over_beta():
    batch = random_batch() | {"kl_coef": 0.0}
    batch["v_theta"] = batch["v_old"].clone()  # then v⁺ = v⁻ = v_old for every β, and only the 1/β factor is left
    loss_a, _ = nft_loss(**batch | {"nft_beta": 0.1})
    loss_b, _ = nft_loss(**batch | {"nft_beta": 1.0})
    assert_close(loss_a, 10 * loss_b)


@pytest.mark.parametrize(("r", "toward"), [(1.0, True), (0.0, False)], ids=["r1-pulls-toward", "r0-pushes-away"])
def test_gradient_direction(r, toward):
    batch = random_batch() | {"kl_coef": 0.0, "v_ref": None, "r": torch.full((3,), r)}
    v_theta = batch["v_old"].clone().requires_grad_()
    t = batch["t"][:, None, None, None]
    target = (batch["xt"] - batch["x0"]) / t  # the velocity that reconstructs x0
    nft_loss(**batch | {"v_theta": v_theta})[0].backward()
    stepped = v_theta.detach() - 1e-3 * v_theta.grad
    before = (v_theta.detach() - target).pow(2).sum()
    after = (stepped - target).pow(2).sum()
    assert (after < before) == toward


def test_weights_are_detached():
    batch = random_batch(dtype=torch.float64)
    v_theta = batch["v_theta"].clone().requires_grad_()
    nft_loss(**batch | {"v_theta": v_theta})[0].backward()
    # Analytic gradient with w± held constant; x̂0± depend on v_theta through −t·β and +t·β.
    beta, t, r = batch["nft_beta"], batch["t"][:, None, None, None], batch["r"][:, None, None, None]
    x0, xt, v_old = batch["x0"], batch["xt"], batch["v_old"]
    e_pos = xt - t * (beta * v_theta.detach() + (1 - beta) * v_old) - x0  # (B, C, H, W)
    e_neg = xt - t * ((1 + beta) * v_old - beta * v_theta.detach()) - x0  # (B, C, H, W)
    w_pos = e_pos.abs().mean(dim=(1, 2, 3), keepdim=True)
    w_neg = e_neg.abs().mean(dim=(1, 2, 3), keepdim=True)
    batch_size, n = x0.shape[0], x0[0].numel()
    d_per_sample = (r * 2 * e_pos / w_pos * (-t * beta) + (1 - r) * 2 * e_neg / w_neg * (t * beta)) / (n * beta)
    expected = batch["adv_clip_max"] * d_per_sample / batch_size
    expected += batch["kl_coef"] * 2 * (v_theta.detach() - batch["v_ref"]) / (batch_size * n)
    assert_close(v_theta.grad, expected)


def test_gradcheck_where_weights_sit_at_their_floor():
    # The weights are a stop-gradient, so finite differences see them move and disagree with autograd, except
    # where w± = 1e-5 (the floor) stays put: v_theta and v_old within ~1e-6 of the velocity that reconstructs x0.
    batch = random_batch(dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    t = batch["t"][:, None, None, None]
    target = (batch["xt"] - batch["x0"]) / t
    v_old = target + 1e-6 * torch.randn(target.shape, generator=gen, dtype=torch.float64)
    v_theta = target + 1e-6 * torch.randn(target.shape, generator=gen, dtype=torch.float64)
    batch |= {"v_old": v_old}
    loss = lambda v: nft_loss(**batch | {"v_theta": v})[0]  # noqa: E731
    beta = batch["nft_beta"]
    for v in (beta * v_theta + (1 - beta) * v_old, (1 + beta) * v_old - beta * v_theta):  # v⁺, v⁻
        assert (batch["xt"] - t * v - batch["x0"]).abs().mean(dim=(1, 2, 3)).max() < 5e-6
    assert torch.autograd.gradcheck(loss, (v_theta.requires_grad_(),), eps=1e-8)
    away_from_floor = random_batch(dtype=torch.float64)["v_theta"].requires_grad_()
    assert not torch.autograd.gradcheck(loss, (away_from_floor,), raise_exception=False)


def test_metrics_are_detached_scalars():
    batch = random_batch()
    batch["v_theta"].requires_grad_()
    loss, metrics = nft_loss(**batch)
    assert loss.requires_grad and loss.dim() == 0
    assert set(metrics) >= {"loss", "policy_loss", "positive_loss", "negative_loss", "kl", "old_deviation"}
    assert all(not m.requires_grad and m.dim() == 0 for m in metrics.values())


# --- θ_old schedule and training timesteps --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "steps_and_decays"),
    [
        (dict(flat=0, uprate=0.0, cap=0.0), [(0, 0.0), (10, 0.0), (5000, 0.0)]),
        (dict(flat=0, uprate=0.001, cap=0.5), [(0, 0.0), (100, 0.1), (500, 0.5), (2000, 0.5)]),
        (dict(flat=75, uprate=0.0075, cap=0.999), [(0, 0.0), (74, 0.0), (75, 0.0), (175, 0.75), (300, 0.999)]),
    ],
    ids=["off", "default", "ocr"],
)
def test_old_policy_decay(schedule, steps_and_decays):
    for step, decay in steps_and_decays:
        assert old_policy_decay(step, **schedule) == pytest.approx(decay)


def test_learning_rate_schedules():
    assert learning_rate(57, lr=2e-3, schedule="constant", decay_steps=100, final_ratio=0.1) == 2e-3
    cosine = [learning_rate(s, lr=2e-3, schedule="cosine", decay_steps=100, final_ratio=0.1) for s in range(130)]
    assert cosine[0] == pytest.approx(2e-3)
    assert cosine[50] == pytest.approx(1.1e-3)  # halfway: the mean of the peak and the floor
    assert cosine[100] == pytest.approx(2e-4) and cosine[129] == pytest.approx(2e-4)  # flat at the floor after
    assert all(a >= b for a, b in zip(cosine, cosine[1:], strict=False))


def test_training_timesteps_are_a_per_sample_subset_without_repeats():
    collection = torch.stack([torch.arange(10.0) * 100 + i for i in range(6)])  # (B, T), distinct per row
    chosen = training_timesteps(collection, 0.99, torch.Generator().manual_seed(0))
    assert chosen.shape == (6, 9)
    for row, picked in zip(collection, chosen, strict=True):
        assert set(picked.tolist()) <= set(row.tolist())
        assert len(set(picked.tolist())) == 9
    orders = (chosen - collection[:, :1]).tolist()  # the same offsets in every row would mean one shared order
    assert any(order != orders[0] for order in orders)
    assert training_timesteps(collection, 1.0, None).shape == (6, 10)


def test_eval_ema_decay_warms_up_then_holds():
    assert eval_ema_decay(0, 0.9) == pytest.approx(1 / 10)
    assert eval_ema_decay(1, 0.9) == pytest.approx(2 / 11)
    assert eval_ema_decay(80, 0.9) == pytest.approx(81 / 90)  # (1 + s) / (10 + s) reaches 0.9 at s = 80
    assert eval_ema_decay(81, 0.9) == pytest.approx(0.9)
    assert eval_ema_decay(10_000, 0.9) == pytest.approx(0.9)
