"""AdaGC semantics (official code) and the spike comparison against global-norm clipping."""

import math

import pytest
import torch

from rl_platform.optim.adagc import AdaGCConfig, GlobalNormClipConfig, module_gradient_access


def _params(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(f"p{i}", torch.nn.Parameter(torch.randn(4, 5, generator=g))) for i in range(n)]


def _set_grads(params, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _, p in params:
        p.grad = torch.randn(p.shape, generator=g) * scale


def test_warmup_is_global_clipping_and_gamma_is_running_minimum():
    params = _params()
    clipper = AdaGCConfig(warmup_steps=3, warmup_max_norm=1.0).build([n for n, _ in params])
    access = module_gradient_access(params)
    norms = []
    for step, scale in enumerate([0.1, 5.0, 0.05]):
        _set_grads(params, scale, seed=step)
        raw = math.sqrt(sum(float(p.grad.pow(2).sum()) for _, p in params))
        stats = clipper.clip(access)
        assert stats.grad_norm == pytest.approx(raw, rel=1e-6)
        total = math.sqrt(sum(float(p.grad.pow(2).sum()) for _, p in params))
        assert total <= 1.0 + 1e-5
        norms.append({n: float(p.grad.norm()) for n, p in params})
    for name, _ in params:
        assert clipper.gamma[name] == pytest.approx(min(n[name] for n in norms), rel=1e-6)


def test_spike_in_one_tensor_is_clipped_to_lambda_gamma_and_others_untouched():
    params = _params()
    cfg = AdaGCConfig(warmup_steps=1)
    clipper = cfg.build([n for n, _ in params])
    access = module_gradient_access(params)
    _set_grads(params, 0.01, seed=0)
    clipper.clip(access)  # warm-up step sets gamma
    _set_grads(params, 0.01, seed=1)
    gamma_before = dict(clipper.gamma)
    untouched = {n: p.grad.clone() for n, p in params}
    params[1][1].grad *= 100.0  # the spike
    stats = clipper.clip(access)
    assert stats.num_clipped >= 1
    spiked = float(params[1][1].grad.norm())
    limit = cfg.lambda_rel * gamma_before["p1"]
    assert spiked == pytest.approx(limit, rel=1e-4)
    for name in ("p0", "p2"):
        g0 = untouched[name]
        if float(g0.norm()) <= cfg.lambda_rel * gamma_before[name]:
            assert torch.equal(dict(params)[name].grad, g0)
    # gamma of the spiked tensor grows by at most (1 - beta) * (lambda - 1) * gamma
    growth = clipper.gamma["p1"] - gamma_before["p1"]
    assert growth <= (1 - cfg.beta) * (cfg.lambda_rel - 1) * gamma_before["p1"] + 1e-12


def test_state_round_trip():
    params = _params()
    a = AdaGCConfig(warmup_steps=1).build([n for n, _ in params])
    _set_grads(params)
    a.clip(module_gradient_access(params))
    b = AdaGCConfig(warmup_steps=1).build([n for n, _ in params])
    b.load_state_dict(a.state_dict())
    assert b.gamma == a.gamma and b.step == a.step


def spike_score(losses: list[float], window: int = 10, factor: float = 1.5) -> int:
    """Number of steps whose loss exceeds `factor` times the median of the previous `window` losses.
    (AdaGC's own definition is unpublished; this counts sudden jumps relative to recent history.)"""
    count = 0
    for t in range(window, len(losses)):
        recent = sorted(losses[t - window:t])[window // 2]
        count += losses[t] > factor * recent
    return count


def _train(clipping, steps=150, seed=0):
    """A small regressor on a spike-prone AdamW (beta2 0.999, eps 1e-10) with an injected bad batch (labels
    x100) every 30 steps; returns the loss on a fixed clean set after every step."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.999), eps=1e-10, weight_decay=0.0)
    clipper = clipping.build([n for n, _ in model.named_parameters()])
    access = module_gradient_access(model.named_parameters())
    w_true = torch.randn(16, 1) / 4
    x_clean = torch.randn(256, 16, generator=torch.Generator().manual_seed(123))
    losses = []
    for step in range(steps):
        x = torch.randn(64, 16)
        y = torch.tanh(x @ w_true)
        if step % 30 == 29:
            y = y * 100.0
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        clipper.clip(access)
        opt.step()
        with torch.no_grad():
            losses.append(float(torch.nn.functional.mse_loss(model(x_clean), torch.tanh(x_clean @ w_true))))
    return losses


def test_adagc_has_fewer_loss_spikes_than_global_clipping_on_a_spike_prone_setup():
    global_scores = [spike_score(_train(GlobalNormClipConfig(max_norm=1.0), seed=s)) for s in range(2)]
    adagc_scores = [spike_score(_train(AdaGCConfig(warmup_steps=20, warmup_max_norm=1.0), seed=s)) for s in range(2)]
    print(f"spike score per seed: global {global_scores}, adagc {adagc_scores}")
    assert sum(global_scores) >= 4  # the setup does spike under global clipping
    assert sum(adagc_scores) * 2 < sum(global_scores)
