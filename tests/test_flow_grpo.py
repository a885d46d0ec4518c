"""The Flow-GRPO objective: the SDE step by hand, its log-density against torch's Gaussian, the PPO clip by hand,
ratio exactly 1 at θ = θ_old, and the KL term."""

import math

import pytest
import torch

from actors.sde import sde_sample, sde_std, sde_step, step_log_prob
from actors.solvers import sigma_schedule, solve
from learner.flow_grpo import grpo_loss


def test_std_by_hand_and_at_sigma_one():
    sigma = torch.tensor([0.5, 0.8, 1.0])
    std = sde_std(sigma, noise_level=0.7, sigma_max=0.9)
    expected = [0.7 * math.sqrt(0.5 / 0.5), 0.7 * math.sqrt(0.8 / 0.2), 0.7 * math.sqrt(1.0 / 0.1)]
    torch.testing.assert_close(std, torch.tensor(expected))


def test_sde_step_by_hand():
    xt, v = torch.tensor([[2.0, -1.0]]), torch.tensor([[0.5, 1.5]])
    # σ 0.5 -> 0.25, noise_level 0.7: std = 0.7, dt = −0.25
    # mean = xt·(1 + 0.49/1·(−0.25)) + v·(1 + 0.49·0.5/1)·(−0.25) = 0.8775·xt − 0.31125·v
    x_next, mean, std = sde_step(v, xt, 0.5, 0.25, noise_level=0.7, sigma_max=0.9)
    torch.testing.assert_close(mean, 0.8775 * xt - 0.31125 * v)
    torch.testing.assert_close(x_next, mean)
    noise = torch.tensor([[1.0, -2.0]])
    x_drawn, _, _ = sde_step(v, xt, 0.5, 0.25, noise_level=0.7, sigma_max=0.9, noise=noise)
    torch.testing.assert_close(x_drawn, mean + 0.7 * 0.5 * noise)  # std·sqrt(−dt) = 0.7·0.5
    assert std.item() == pytest.approx(0.7)


def test_zero_noise_level_is_the_euler_step():
    xt, v = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    sigma, sigma_next = torch.tensor([0.9, 0.6, 0.3]), torch.tensor([0.7, 0.4, 0.0])
    _, mean, _ = sde_step(v, xt, sigma, sigma_next, noise_level=0.0, sigma_max=0.95)
    torch.testing.assert_close(mean, xt + v * (sigma_next - sigma).view(-1, 1, 1, 1))


def test_log_prob_is_the_gaussian_density_averaged_over_dims():
    torch.manual_seed(0)
    xt, v, noise = torch.randn(4, 3, 6, 6), torch.randn(4, 3, 6, 6), torch.randn(4, 3, 6, 6)
    sigma, sigma_next = torch.tensor([1.0, 0.8, 0.5, 0.2]), torch.tensor([0.8, 0.5, 0.2, 0.05])
    x_next, mean, std = sde_step(v, xt, sigma, sigma_next, noise_level=0.7, sigma_max=0.95, noise=noise)
    dt = sigma_next - sigma
    log_prob = step_log_prob(x_next, mean, std, dt)
    scale = (std * torch.sqrt(-dt.view(-1, 1, 1, 1))).expand_as(mean)
    direct = torch.distributions.Normal(mean, scale).log_prob(x_next).mean(dim=(1, 2, 3))
    torch.testing.assert_close(log_prob, direct)
    assert log_prob.shape == (4,)


def test_ratio_is_exactly_one_at_theta_old_and_the_gradient_is_minus_a_grad_log_prob():
    torch.manual_seed(1)
    xt, noise = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    v_old = torch.randn(4, 2, 3, 3)
    x_next, mean_old, std = sde_step(v_old, xt, 0.6, 0.4, noise_level=0.7, sigma_max=0.9, noise=noise)
    old_log_prob = step_log_prob(x_next, mean_old, std, -0.2)
    v_theta = v_old.clone().requires_grad_(True)  # θ = θ_old
    _, mean, _ = sde_step(v_theta, xt, 0.6, 0.4, noise_level=0.7, sigma_max=0.9)
    log_prob = step_log_prob(x_next, mean, std, -0.2)
    advantages = torch.tensor([1.0, -2.0, 0.5, 7.0])
    loss, metrics = grpo_loss(log_prob, old_log_prob, advantages, clip_range=1e-4, adv_clip_max=5.0)
    assert metrics["ratio"].item() == 1.0 and metrics["clip_fraction"].item() == 0.0
    clipped_a = advantages.clamp(-5, 5)
    assert loss.item() == pytest.approx(-clipped_a.mean().item())
    loss.backward()
    v_check = v_old.clone().requires_grad_(True)
    _, mean_check, _ = sde_step(v_check, xt, 0.6, 0.4, noise_level=0.7, sigma_max=0.9)
    (-(clipped_a * step_log_prob(x_next, mean_check, std, -0.2)).mean()).backward()
    torch.testing.assert_close(v_theta.grad, v_check.grad)


def test_ppo_clip_by_hand():
    old = torch.zeros(4)
    log_prob = torch.log(torch.tensor([1.5, 0.5, 1.5, 0.5]))
    advantages = torch.tensor([1.0, -1.0, -1.0, 1.0])
    loss, metrics = grpo_loss(log_prob, old, advantages, clip_range=0.2, adv_clip_max=5.0)
    # A = 1, ratio 1.5: max(−1.5, −1.2) = −1.2;  A = −1, ratio 0.5: max(0.5, 0.8) = 0.8
    # A = −1, ratio 1.5: max(1.5, 1.2) = 1.5;    A = 1, ratio 0.5: max(−0.5, −0.8) = −0.5
    assert loss.item() == pytest.approx((-1.2 + 0.8 + 1.5 - 0.5) / 4)
    assert metrics["clip_fraction"].item() == 1.0
    assert metrics["approx_kl"].item() == pytest.approx(0.5 * (2 * math.log(1.5) ** 2 + 2 * math.log(0.5) ** 2) / 4)


def test_kl_term_by_hand_and_required_inputs():
    mean = torch.tensor([[[[1.0, 2.0]]], [[[0.0, 0.0]]]])  # (2, 1, 1, 2)
    ref_mean = torch.tensor([[[[0.0, 0.0]]], [[[1.0, 1.0]]]])
    std = torch.tensor([0.5, 1.0]).view(-1, 1, 1, 1)
    zero = torch.zeros(2)
    loss, metrics = grpo_loss(zero, zero, zero, clip_range=0.2, adv_clip_max=5.0, mean=mean, ref_mean=ref_mean,
                              std=std, beta=0.04)
    # sample 1: mean((1, 4)) / (2·0.25) = 5;  sample 2: mean((1, 1)) / 2 = 0.5
    assert metrics["kl"].item() == pytest.approx((5.0 + 0.5) / 2)
    assert loss.item() == pytest.approx(0.04 * 2.75)
    with pytest.raises(ValueError, match="beta > 0 needs"):
        grpo_loss(zero, zero, zero, clip_range=0.2, adv_clip_max=5.0, beta=0.04)


def linear_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """v = ε − x0 for a flow whose data is 0.3·(its noise): a smooth stand-in for the policy."""
    return x * (1 - 0.3) / (t.view(-1, 1, 1, 1) * (1 - 0.3) + 0.3)


def test_sde_sample_records_the_trajectory_and_its_log_probs():
    noise = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    sigmas = sigma_schedule(6, shift=3.0)
    trajectory = sde_sample(linear_velocity, noise, sigmas, noise_level=0.7, generator=torch.Generator().manual_seed(1))
    assert trajectory.latents.shape == (3, 7, 2, 4, 4) and trajectory.log_probs.shape == (3, 6)
    torch.testing.assert_close(trajectory.latents[:, 0], noise)
    epsilon = torch.Generator().manual_seed(1)
    for j in range(6):  # each recorded transition is sde_step's draw, and its log-density is recomputable
        x, t = trajectory.latents[:, j], torch.full((3,), float(sigmas[j]))
        x_next, mean, std = sde_step(linear_velocity(x, t), x, sigmas[j], sigmas[j + 1], noise_level=0.7,
                                     sigma_max=float(sigmas[1]), noise=torch.randn(x.shape, generator=epsilon))
        torch.testing.assert_close(trajectory.latents[:, j + 1], x_next)
        dt = sigmas[j + 1] - sigmas[j]
        torch.testing.assert_close(trajectory.log_probs[:, j], step_log_prob(x_next, mean, std, dt))


def test_sde_sample_without_noise_is_the_euler_solver():
    noise = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    sigmas = sigma_schedule(8, shift=3.0)
    trajectory = sde_sample(linear_velocity, noise, sigmas, noise_level=0.0)
    torch.testing.assert_close(trajectory.latents[:, -1], solve(linear_velocity, noise, sigmas, "euler"))
