"""The linearized network: equal to the network at theta_0, linear in theta, and trained by
any torch optimizer it follows its empirical NTK's function-space dynamics."""
import pytest
import torch
from torch import nn

import ntklab as nk
from ntklab import predict


def problem(outputs=2, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 32), nn.Tanh(), nn.Linear(32, outputs)).double()
    x = torch.randn(8, 3, dtype=torch.float64)
    return model, x, torch.randn(8, outputs, dtype=torch.float64)


def train(module, x, y, learning_rate, steps):
    optimizer = torch.optim.SGD(module.parameters(), lr=learning_rate)
    for _ in range(steps):
        optimizer.zero_grad()
        (0.5 * (module(x) - y).square().mean()).backward()
        optimizer.step()
    return module(x).detach()


def test_linearized_network_is_the_first_order_taylor_expansion():
    model, x, _ = problem()
    lin = nk.linearize(model)
    assert [p.shape for p in lin.parameters()] == [p.shape for p in model.parameters()]   # theta only
    torch.testing.assert_close(lin(x), model(x), rtol=0, atol=0)
    with torch.no_grad():   # a step delta in theta changes f_lin by exactly J delta
        deltas = [0.01 * torch.randn_like(p) for p in lin.parameters()]
        for p, d in zip(lin.parameters(), deltas, strict=True):
            p += d
        params = tuple(model.parameters())
        jacobian = torch.func.jacrev(lambda *ps: torch.func.functional_call(
            model, dict(zip([n for n, _ in model.named_parameters()], ps, strict=True)), (x,)),
            argnums=tuple(range(len(params))))(*params)
        expected = model(x) + sum((j.flatten(2) @ d.flatten()) for j, d in zip(jacobian, deltas, strict=True))
        torch.testing.assert_close(lin(x), expected, rtol=0, atol=1e-13)


def test_gd_on_the_linearized_network_is_the_empirical_ntk_recursion():
    """Full-batch SGD (torch.optim) on 0.5 mean (f - y)^2: f <- f - (lr / |Y|) Theta (f - y)."""
    model, x, y = problem()
    f = model(x).detach()
    theta = nk.empirical_ntk(model, x, mode="full")            # [N, N, O, O]
    trained = train(nk.linearize(model), x, y, 0.5, 30)
    for _ in range(30):
        f = f - 0.5 / y.numel() * torch.einsum("ijab,jb->ia", theta, f - y)
    torch.testing.assert_close(trained, f, rtol=0, atol=1e-12)


def test_small_steps_reach_the_closed_form_gradient_flow():
    """Discrete GD at learning rate lr for t / lr steps -> gradient_descent_mse at time t as
    lr -> 0 (one output, so Theta is [N, N]): the error halves with lr (first order), and the
    Richardson combination 2 f(lr/2) - f(lr) removes it to second order."""
    model, x, y = problem(outputs=1, seed=1)
    theta = nk.empirical_ntk(model, x)
    flow = predict.gradient_descent_mse(theta, y)(4.0, model(x).detach())
    runs = {lr: train(nk.linearize(model), x, y, lr, round(4.0 / lr)) for lr in (0.02, 0.01)}
    errors = {lr: float((f - flow).abs().max()) for lr, f in runs.items()}
    assert errors[0.02] / errors[0.01] == pytest.approx(2.0, rel=0.01)
    extrapolated = float((2 * runs[0.01] - runs[0.02] - flow).abs().max())
    assert extrapolated < 0.02 * errors[0.01]


def test_bad_model():
    with pytest.raises(ValueError, match="torch.nn.Module"):
        nk.linearize(lambda x: x)
    with pytest.raises(ValueError, match="no parameter with requires_grad"):
        nk.linearize(nn.Linear(2, 2).requires_grad_(False))


def moved(expansion, scale, directions):
    """Set theta = theta_0 + scale * direction (in place)."""
    with torch.no_grad():
        for p, p0, d in zip(expansion.parameters(), expansion.theta0, directions, strict=True):
            p.copy_(p0 + scale * d)
    return expansion


def test_a_degree_two_expansion_of_a_bilinear_network_is_exact():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 2)).double()   # quadratic in its parameters
    x = torch.randn(4, 3, dtype=torch.float64)
    quadratic = nk.taylor_expand(model, 2)
    directions = [torch.randn_like(p) for p in model.parameters()]
    moved(quadratic, 0.7, directions)
    target = torch.func.functional_call(model, {n: p + 0.7 * d for (n, p), d in
                                                zip(model.named_parameters(), directions, strict=True)}, (x,))
    torch.testing.assert_close(quadratic(x), target, rtol=0, atol=1e-12)
    linear = moved(nk.linearize(model), 0.7, directions)
    assert float((linear(x) - target).detach().abs().max()) > 0.01   # the linear model misses it


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_the_remainder_of_a_degree_k_expansion_is_of_order_k_plus_one(degree):
    model, x, _ = problem(seed=3)
    directions = [torch.randn_like(p) for p in model.parameters()]

    def remainder(scale):
        expansion = moved(nk.taylor_expand(model, degree), scale, directions)
        exact = torch.func.functional_call(model, {n: p + scale * d for (n, p), d in
                                                   zip(model.named_parameters(), directions, strict=True)}, (x,))
        return float((expansion(x) - exact).detach().abs().max())
    ratio = remainder(0.04) / remainder(0.02)
    assert ratio == pytest.approx(2 ** (degree + 1), rel=0.15)
    with torch.no_grad():
        torch.testing.assert_close(nk.taylor_expand(model, degree)(x), model(x), rtol=0, atol=1e-14)


def explicit_linearization(model, x, deltas):
    """f(x; theta_0) + J(x) delta by an explicit autograd Jacobian of `model` in its current mode."""
    names, params = zip(*model.named_parameters(), strict=True)
    jacobian = torch.func.jacrev(lambda *ps: torch.func.functional_call(model, dict(zip(names, ps, strict=True)), (x,)),
                                 argnums=tuple(range(len(params))))(*params)
    return model(x) + sum(j.flatten(2) @ d.flatten() for j, d in zip(jacobian, deltas, strict=True))


def test_train_and_eval_reach_the_network_so_dropout_switches_off():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 32), nn.Tanh(), nn.Dropout(0.5), nn.Linear(32, 2)).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    lin = nk.linearize(model)
    assert lin.training and not torch.equal(lin(x), lin(x))   # train mode: a random mask per call
    lin.eval()
    assert not lin.training and all(not m.training for m in lin.modules())
    deltas = [0.05 * torch.randn_like(p) for p in lin.parameters()]
    moved(lin, 1.0, deltas)
    with torch.no_grad():
        first, second = lin(x), lin(x)
    assert torch.equal(first, second)                          # deterministic in eval mode
    torch.testing.assert_close(first, explicit_linearization(model.eval(), x, deltas).detach(),
                               rtol=0, atol=1e-13)
    assert lin.train().training and model.eval() is model and lin.network[2].training


def batchnorm_model(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 2)).double()
    with torch.no_grad():
        model(torch.randn(64, 3, dtype=torch.float64) * 2 + 1)   # non-trivial running statistics
    return model.eval()


def test_state_dict_holds_the_buffers_and_a_reload_restores_the_outputs():
    x = torch.randn(5, 3, dtype=torch.float64)
    lin = nk.linearize(batchnorm_model(5))
    moved(lin, 0.1, [torch.randn_like(p) for p in lin.parameters()])
    state = lin.state_dict()
    assert {"network.1.running_mean", "network.1.running_var"} <= set(state)
    other = nk.linearize(batchnorm_model(6))                # another initialization and statistics
    assert float((other(x) - lin(x)).detach().abs().max()) > 0.1
    other.load_state_dict(state)
    torch.testing.assert_close(other(x), lin(x), rtol=0, atol=0)
    assert [n for n, _ in lin.named_parameters()] == [f"theta.{i}" for i in range(6)]   # theta only


def test_train_mode_batchnorm_is_refused_like_the_empirical_ntk():
    model = batchnorm_model(7).train()
    x = torch.randn(5, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"BatchNorm1d \(1\) is in train mode.*eval\(\)") as refused:
        nk.linearize(model)
    with pytest.raises(ValueError, match=str(refused.value).split(";")[0].replace("(", r"\(").replace(")", r"\)")):
        nk.empirical_ntk(model, x)                            # the same check, the same words
    lin = nk.linearize(model.eval()).train()                  # switched to train mode afterwards
    with pytest.raises(ValueError, match=r"BatchNorm1d \(1\) is in train mode"):
        lin(x)
    torch.testing.assert_close(lin.eval()(x), model(x), rtol=0, atol=1e-15)


@pytest.mark.parametrize("degree", [1, 2])
def test_dtype_conversion_converts_theta_the_reference_point_and_the_buffers(degree):
    model = batchnorm_model(8)
    x = torch.randn(5, 3, dtype=torch.float64)
    expansion = nk.taylor_expand(model, degree)
    deltas = [0.05 * torch.randn_like(p) for p in expansion.parameters()]
    moved(expansion, 1.0, deltas)
    expected = expansion(x).detach()
    single = expansion.float()
    assert {t.dtype for t in list(single.parameters()) + list(single.buffers()) if t.is_floating_point()} \
        == {torch.float32}
    got = single(x.float())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    if degree == 1:   # and against the float64 explicit Jacobian
        torch.testing.assert_close(expected, explicit_linearization(model, x, deltas).detach(),
                                   rtol=0, atol=1e-13)


@pytest.mark.parametrize("degree", [2, 3])
def test_taylor_terms_of_a_train_mode_dropout_network_share_one_mask(degree):
    """Dropout -> Linear is linear in its parameters, so its Taylor polynomial of any degree is
    the network itself under the same random draws (before: each term drew its own mask and the
    quadratic model was off by 10); the random state afterwards is that of one forward pass."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Dropout(0.3), nn.Linear(5, 2)).double().train()
    x = torch.randn(4, 5, dtype=torch.float64)
    expansion = nk.taylor_expand(model, degree)
    with torch.no_grad():
        expansion.theta[0].add_(0.3)
        model[1].weight.add_(0.3)
    torch.manual_seed(5)
    expanded, after_expansion = expansion(x), torch.rand(3)
    torch.manual_seed(5)
    direct, after_model = model(x), torch.rand(3)
    torch.testing.assert_close(expanded, direct, rtol=1e-12, atol=1e-14)
    assert torch.equal(after_expansion, after_model)


def test_a_state_dict_loads_only_into_the_same_parameters_in_the_same_order():
    """theta is keyed by position; before, a checkpoint over ["0.weight", "2.weight"] loaded
    into an expansion over ["2.weight", "0.weight"] with all keys matched (outputs off by 0.64)."""
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3)).double()
    saved = nk.linearize(model, params=["0.weight", "2.weight"])
    with torch.no_grad():
        saved.theta[0].add_(0.5)
    same = nk.linearize(model, params=["0.weight", "2.weight"])
    same.load_state_dict(saved.state_dict())
    x = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(same(x), saved(x), rtol=0, atol=0)
    for other in (nk.linearize(model, params=["2.weight", "0.weight"]),
                  nk.taylor_expand(model, 2, params=["0.weight", "2.weight"])):
        with pytest.raises(ValueError, match="this state dict is of an expansion over"):
            other.load_state_dict(saved.state_dict())
