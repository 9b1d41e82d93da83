import pytest
import torch

from mpt_ext.train.optim import LionW, build_optimizer, build_scheduler, warmup_cosine_factor


def test_lionw_matches_a_hand_computed_step():
    p0 = torch.randn(5, 3, dtype=torch.float64)
    g1, g2 = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    lr, b1, b2, wd = 0.01, 0.9, 0.99, 0.1
    p = p0.clone().requires_grad_()
    opt = LionW([p], lr=lr, betas=(b1, b2), weight_decay=wd)
    # by hand: m starts at 0
    m = torch.zeros_like(p0)
    want = p0.clone()
    for g in (g1, g2):
        want = want * (1 - wd)                      # lr == initial_lr: full decay fraction
        want = want - lr * torch.sign(b1 * m + (1 - b1) * g)
        m = b2 * m + (1 - b2) * g
        p.grad = g.clone()
        opt.step()
    torch.testing.assert_close(p.detach(), want, rtol=0, atol=1e-15)
    torch.testing.assert_close(opt.state[p]["exp_avg"], m, rtol=0, atol=1e-15)


def test_lionw_decay_follows_the_schedule_not_lr_squared():
    p = torch.ones(4, requires_grad=True)
    opt = LionW([p], lr=1.0, weight_decay=0.5)
    opt.param_groups[0]["lr"] = 0.5  # a scheduler halved lr: decay fraction halves too
    p.grad = torch.zeros(4)
    opt.step()
    # sign(0) = 0: only the decay acts: 1 * (1 - 0.5 * 0.5 / 1.0)
    torch.testing.assert_close(p.detach(), torch.full((4,), 0.75))


def test_lionw_bad_args():
    p = [torch.zeros(1, requires_grad=True)]
    with pytest.raises(ValueError, match="lr"):
        LionW(p, lr=0)
    with pytest.raises(ValueError, match="betas"):
        LionW(p, betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="weight_decay"):
        LionW(p, weight_decay=-1)


def test_scheduler_values():
    w, total, a = 10, 110, 0.1
    f = [warmup_cosine_factor(s, w, total, a) for s in range(130)]
    assert f[0] == pytest.approx(0.1) and f[4] == pytest.approx(0.5) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0)
    assert f[60] == pytest.approx(a + (1 - a) * 0.5)          # half way through the cosine
    assert f[110] == pytest.approx(a) and f[129] == pytest.approx(a)
    assert all(x >= y for x, y in zip(f[10:111], f[11:111]))   # monotone decay
    assert warmup_cosine_factor(0, 0, 10, a) == pytest.approx(1.0)  # no warmup


def test_scheduler_drives_the_optimizer_and_round_trips():
    model = torch.nn.Linear(3, 3)
    opt = build_optimizer(model, "adamw", lr=2.0, betas=(0.9, 0.95), weight_decay=0.1)
    sched = build_scheduler(opt, warmup=4, total=20, alpha_f=0.1)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    state = sched.state_dict()
    opt2 = build_optimizer(model, "adamw", lr=2.0, betas=(0.9, 0.95), weight_decay=0.1)
    sched2 = build_scheduler(opt2, warmup=4, total=20, alpha_f=0.1)
    sched2.load_state_dict(state)
    assert sched2.get_last_lr() == sched.get_last_lr()
    with pytest.raises(ValueError, match="alpha_f"):
        build_scheduler(opt, 1, 10, 1.5)


def test_optimizer_groups_and_names():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    opt = build_optimizer(model, "lion", lr=1e-3, betas=(0.9, 0.99), weight_decay=0.2)
    assert isinstance(opt, LionW)
    decay, no_decay = opt.param_groups
    assert [p.dim() for p in decay["params"]] == [2] and decay["weight_decay"] == 0.2
    assert all(p.dim() == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    with pytest.raises(ValueError, match="adamw' or 'lion"):
        build_optimizer(model, "sgd", 1e-3, (0.9, 0.9), 0.0)
