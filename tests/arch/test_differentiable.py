"""Kernels differentiated by autograd: gradients of a GP marginal likelihood with respect to
W_std, b_std and the inputs match central finite differences (float64) to 1e-6."""
import math

import pytest
import torch

import ntklab as nk

GEN = torch.Generator().manual_seed(0)
X = torch.randn(7, 3, generator=GEN, dtype=torch.float64)
Y = torch.sin(X.sum(1, keepdim=True))
IMAGES = torch.randn(4, 2, 5, 5, generator=GEN, dtype=torch.float64)
TOKENS = torch.randn(4, 5, 3, generator=GEN, dtype=torch.float64)


def negative_log_marginal_likelihood(kernel: torch.Tensor, y: torch.Tensor, noise: float = 0.1):
    """-log N(y | 0, K + noise I) of a GP regression."""
    n = len(kernel)
    chol = torch.linalg.cholesky(kernel + noise * torch.eye(n, dtype=kernel.dtype))
    alpha = torch.cholesky_solve(y, chol)
    return 0.5 * (y * alpha).sum() + chol.diagonal().log().sum() + 0.5 * n * math.log(2 * math.pi)


def architectures(w_std, b_std):
    dense = lambda n: nk.Dense(n, W_std=w_std, b_std=b_std)  # noqa: E731
    return {
        "relu mlp": (nk.serial(dense(512), nk.Relu(), dense(512), nk.Relu(), dense(1)), X),
        "erf residual": (nk.serial(dense(512), nk.FanOut(2), nk.parallel(nk.serial(nk.Erf(), dense(512)),
                                                                     nk.Identity()),
                                   nk.FanInSum(), nk.LayerNorm(), nk.Gelu(), dense(1)), X),
        "cnn gap": (nk.serial(nk.Conv(8, (3, 3), padding="SAME", W_std=w_std, b_std=b_std), nk.Relu(),
                              nk.AvgPool((2, 2), strides=(1, 1)), nk.Conv(8, (2, 2), W_std=w_std), nk.Relu(),
                              nk.GlobalAvgPool(), dense(1)), IMAGES),
        "attention": (nk.serial(dense(16), nk.GlobalSelfAttention(16, 16, 16, 2, b_std=0.1), nk.Relu(),
                                nk.GlobalAvgPool(), dense(1)), TOKENS),
    }


@pytest.mark.parametrize("name", ["relu mlp", "erf residual", "cnn gap", "attention"])
@pytest.mark.parametrize("get", ["nngp", "ntk"])
def test_marginal_likelihood_gradients_match_finite_differences(name, get):
    def loss(w_std, b_std, x):
        net, _ = architectures(w_std, b_std)[name]
        return negative_log_marginal_likelihood(net.kernel(x, get=get), Y[:len(x)])

    w_std = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    b_std = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    x = architectures(1.0, 0.1)[name][1].clone().requires_grad_(True)
    value = loss(w_std, b_std, x)
    grads = torch.autograd.grad(value, (w_std, b_std, x))
    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    eps = 1e-5
    with torch.no_grad():
        fd_w = (loss(w_std + eps, b_std, x) - loss(w_std - eps, b_std, x)) / (2 * eps)
        fd_b = (loss(w_std, b_std + eps, x) - loss(w_std, b_std - eps, x)) / (2 * eps)
        fd_x = (loss(w_std, b_std, x + eps * direction) - loss(w_std, b_std, x - eps * direction)) / (2 * eps)
    for got, want in ((grads[0], fd_w), (grads[1], fd_b), ((grads[2] * direction).sum(), fd_x)):
        assert abs(got.item() - want.item()) <= 1e-6 * max(1.0, abs(want.item())), (name, got, want)


def test_fitting_w_std_by_gradient_descent_on_the_marginal_likelihood():
    """A small end-to-end use: Adam on log W_std, log b_std increases the evidence."""
    log_w = torch.zeros((), dtype=torch.float64, requires_grad=True)
    log_b = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([log_w, log_b], lr=0.1)
    losses = []
    for _ in range(30):
        net = nk.serial(nk.Dense(512, W_std=log_w.exp(), b_std=log_b.exp()), nk.Relu(),
                        nk.Dense(1, W_std=log_w.exp(), b_std=log_b.exp()))
        loss = negative_log_marginal_likelihood(net.kernel(X, get="nngp"), Y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.2, losses


def test_without_grad_the_kernel_is_computed_under_no_grad():
    w_std = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    net = nk.serial(nk.Dense(512, W_std=w_std), nk.Relu(), nk.Dense(1))
    assert net.kernel(X, get="ntk").requires_grad
    with torch.no_grad():
        assert not net.kernel(X, get="ntk").requires_grad
    assert not nk.serial(nk.Dense(512, W_std=1.3), nk.Relu(), nk.Dense(1)).kernel(X, get="ntk").requires_grad
    assert net.identity is None  # a tensor hyperparameter is not a literal: no store resumes it


# ----------------------------------------------------------------- every activation, gradcheck
def _sinh_dual(cov, var1, var2):
    """E[sin u sin v] = exp(-(v1 + v2)/2) sinh(c): a user's closed-form `dual` for Elementwise."""
    return torch.exp(-(var1 + var2) / 2) * torch.sinh(cov)


# One instance of every activation class in the layer registry (a new class without an entry
# here fails `test_every_activation_class_is_gradchecked`).  Quadrature rules are short: the
# gradient of the rule's value is what is checked, and it is exact at any number of nodes.
ACTIVATIONS = {
    "Relu": nk.Relu(), "LeakyRelu": nk.LeakyRelu(0.1), "ABRelu": nk.ABRelu(-0.3, 1.2), "Abs": nk.Abs(),
    "Erf": nk.Erf(1.2, 0.8, 0.1), "Sigmoid_like": nk.Sigmoid_like(), "Sign": nk.Sign(), "Gelu": nk.Gelu(),
    "Tanh": nk.Tanh(n_points=12), "Sigmoid": nk.Sigmoid(n_points=12), "Sin": nk.Sin(), "Cos": nk.Cos(),
    "Rbf": nk.Rbf(), "Gaussian": nk.Gaussian(), "Exp": nk.Exp(), "ExpNormalized": nk.ExpNormalized(),
    "Monomial": nk.Monomial(3), "RectifiedMonomial": nk.RectifiedMonomial(2),
    "Polynomial": nk.Polynomial([0.1, 1.0, 0.5]), "Hermite": nk.Hermite(3), "Gabor": nk.Gabor(),
    "Gelu approximate": nk.Gelu(approximate=True, n_points=12),
    "Elementwise": nk.Elementwise(torch.sin, n_points=12),
    "Elementwise dual": nk.Elementwise(torch.sin, dual=_sinh_dual),
}


def test_every_activation_class_is_gradchecked():
    activations = {name for name, cls in nk.LAYERS.items() if issubclass(cls, nk.Activation)}
    assert activations <= {name.split()[0] for name in ACTIVATIONS}, activations


X_OTHER = X[5:] ** 2 - 0.5   # no pair of inputs at correlation 1 (the kink of ReLU-like duals)


def _kernel_fn(activation, get, images=False):
    def kernel(w_std, b_std, x):
        if images:   # the case: Conv, the activation, global average pooling
            net = nk.serial(nk.Conv(4, (2, 2), padding="SAME", W_std=w_std, b_std=b_std), activation,
                            nk.GlobalAvgPool(), nk.Dense(1, W_std=w_std, b_std=b_std))
        else:
            net = nk.serial(nk.Dense(8, W_std=w_std, b_std=b_std), activation,
                            nk.Dense(8, W_std=w_std, b_std=b_std), activation,
                            nk.Dense(1, W_std=w_std, b_std=b_std))
        return net.kernel(x, X_OTHER if not images else IMAGES[2:, :, :2, :2], get=get)
    return kernel


def _gradcheck(kernel, x):
    w_std = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    b_std = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    return torch.autograd.gradcheck(kernel, (w_std, b_std, x.clone().requires_grad_(True)),
                                    atol=1e-7, rtol=1e-6, raise_exception=False)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@pytest.mark.parametrize("get", ["nngp", "ntk"])
def test_kernel_gradients_of_every_activation_pass_gradcheck(name, get):
    """d kernel / d (W_std, b_std, x) by autograd = finite differences (float64 gradcheck), two
    hidden layers so that the activation's derivative term feeds a second activation."""
    x = X[:3] * 0.8   # moderate pre-activation variances (Exp, Monomial grow fast)
    assert _gradcheck(_kernel_fn(ACTIVATIONS[name], get), x), (name, get)


@pytest.mark.parametrize("name", ["Tanh", "Elementwise", "Elementwise dual"])
def test_ntk_gradients_through_conv_and_global_pooling_pass_gradcheck(name):
    assert _gradcheck(_kernel_fn(ACTIVATIONS[name], "ntk", images=True), IMAGES[:2, :, :2, :2])


def test_gradcheck_catches_a_derivative_term_cut_from_the_graph(monkeypatch):
    """Negative control: phi' computed on a detached input (the bug of issue 27) fails gradcheck."""
    from ntklab.arch import quadrature

    def detached_derivative(fn, z):
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            return torch.autograd.grad(fn(z).sum(), z)[0]

    monkeypatch.setattr(quadrature, "_derivative", detached_derivative)
    assert not _gradcheck(_kernel_fn(ACTIVATIONS["Tanh"], "ntk"), X[:3] * 0.8)


# ----------------------------------------------------------------- torch.func transforms
# neural-tangents' kernel_fn works under jax.grad and jax.vmap; net.kernel under torch.func's.
X2 = X[5:] ** 2 - 0.5


def _func_architectures():
    w, b = 1.3, 0.2
    dense = lambda n: nk.Dense(n, W_std=w, b_std=b)  # noqa: E731
    return {
        "relu mlp": (nk.serial(dense(8), nk.Relu(), dense(8), nk.Relu(), dense(1)), X[:4], X2),
        "tanh residual": (nk.serial(dense(8), nk.FanOut(2), nk.parallel(nk.serial(nk.Tanh(n_points=8), dense(8)),
                                                                      nk.Identity()),
                                    nk.FanInSum(), nk.LayerNorm(), nk.Gelu(), dense(1)), X[:4], X2),
        "elementwise dual": (nk.serial(dense(8), nk.Elementwise(torch.sin, dual=_sinh_dual), dense(1)), X[:4], X2),
        "cnn gap": (nk.serial(nk.Conv(4, (2, 2), padding="SAME", W_std=w, b_std=b), nk.Relu(),
                              nk.AvgPool((2, 2), strides=(1, 1)), nk.GlobalAvgPool(), dense(1)),
                    IMAGES[:2, :, :3, :3], IMAGES[2:, :, :3, :3]),
        "attention": (nk.serial(dense(8), nk.GlobalSelfAttention(8, 8, 8, 2, b_std=0.1), nk.Relu(),
                                nk.GlobalAvgPool(), dense(1)), TOKENS[:2, :3], TOKENS[2:, :3]),
    }


FUNC_ARCHITECTURES = _func_architectures()


def _directional_fd(f, x, direction, eps=1e-5):
    with torch.no_grad():
        return (f(x + eps * direction) - f(x - eps * direction)) / (2 * eps)


@pytest.mark.parametrize("name", list(FUNC_ARCHITECTURES))
@pytest.mark.parametrize("x2", ["x2", "None"])
def test_torch_func_grad_of_the_ntk_wrt_the_inputs_matches_finite_differences(name, x2):
    """torch.func.grad of sum(sin(NTK(x1, x2))) w.r.t. x1: its derivative along a random direction
    = central finite differences (float64, 1e-6 relative), and = torch.autograd's gradient."""
    net, x1, other = FUNC_ARCHITECTURES[name]
    other = other if x2 == "x2" else None

    def f(x):
        return net.kernel(x, other, get="ntk").sin().sum()

    got = torch.func.grad(f)(x1)
    direction = torch.randn(x1.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    want = _directional_fd(f, x1, direction)
    assert abs(float((got * direction).sum() - want)) <= 1e-6 * max(1.0, abs(float(want))), (got, want)
    leaf = x1.clone().requires_grad_(True)
    (eager,) = torch.autograd.grad(f(leaf), leaf)
    torch.testing.assert_close(got, eager, rtol=1e-12, atol=1e-14)


def test_torch_func_grad_wrt_hyperparameters_matches_finite_differences():
    """d NLL(NNGP) / d (W_std, b_std) by torch.func.grad over tensor hyperparameters."""
    def loss(w_std, b_std):
        net = nk.serial(nk.Dense(8, W_std=w_std, b_std=b_std), nk.Erf(), nk.Dense(1, W_std=w_std, b_std=b_std))
        return negative_log_marginal_likelihood(net.kernel(X, get="nngp"), Y)

    w, b = torch.tensor(1.3, dtype=torch.float64), torch.tensor(0.2, dtype=torch.float64)
    grad_w, grad_b = torch.func.grad(loss, argnums=(0, 1))(w, b)
    eps = 1e-5
    fd_w = (loss(w + eps, b) - loss(w - eps, b)) / (2 * eps)
    fd_b = (loss(w, b + eps) - loss(w, b - eps)) / (2 * eps)
    for got, want in ((grad_w, fd_w), (grad_b, fd_b)):
        assert abs(float(got - want)) <= 1e-6 * max(1.0, abs(float(want))), (got, want)


def test_torch_func_jacrev_of_the_kernel_equals_the_autograd_jacobian():
    net, x1, x2 = FUNC_ARCHITECTURES["relu mlp"]
    kernel = lambda x: net.kernel(x, x2, get="ntk")  # noqa: E731
    torch.testing.assert_close(torch.func.jacrev(kernel)(x1), torch.autograd.functional.jacobian(kernel, x1),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", list(FUNC_ARCHITECTURES))
def test_torch_func_vmap_over_input_sets_equals_the_loop(name):
    """vmap over 3 input sets (x1 batched, x2 shared; and x2=None) = one kernel per set."""
    net, x1, x2 = FUNC_ARCHITECTURES[name]
    sets = torch.stack([x1, 0.5 * x1 + 0.2, x1.flip(0)])
    for other in (x2, None):
        got = torch.func.vmap(lambda x, other=other: net.kernel(x, other))(sets)
        for i, x in enumerate(sets):
            want = net.kernel(x, other)
            for part, reference in ((got.nngp[i], want.nngp), (got.ntk[i], want.ntk)):
                torch.testing.assert_close(part, reference, rtol=1e-13, atol=1e-15)


def test_torch_func_vmap_of_grad_equals_the_loop_of_grads():
    net, x1, x2 = FUNC_ARCHITECTURES["tanh residual"]
    sets = torch.stack([x1, 0.5 * x1 + 0.2])
    f = lambda x: net.kernel(x, x2, get="ntk").sum()  # noqa: E731
    got = torch.func.vmap(torch.func.grad(f))(sets)
    torch.testing.assert_close(got, torch.stack([torch.func.grad(f)(x) for x in sets]), rtol=1e-13, atol=1e-15)


def test_under_vmap_a_bad_member_of_the_batch_is_refused():
    """Inputs are checked for NaN/inf and kernels for the floating range under vmap as in eager
    code: a NaN in one set refuses the batch; an overflowing float32 network names its layer."""
    net, x1, _ = FUNC_ARCHITECTURES["relu mlp"]
    bad = torch.stack([x1, x1])
    bad[1, 0, 1] = float("nan")
    with pytest.raises(ValueError, match="x1 contains 1 NaN/inf"):
        torch.func.vmap(lambda x: net.kernel(x))(bad)
    deep = nk.serial(*[layer for _ in range(30) for layer in (nk.Dense(8, W_std=10.0), nk.Relu())], nk.Dense(1))
    x32 = torch.stack([X[:3], X[3:6]]).float()
    with pytest.raises(nk.ArchitectureError, match="in torch.float32 at layer 21, Relu") as eager:
        deep.kernel(x32[0])
    with pytest.raises(nk.ArchitectureError) as vmapped:
        torch.func.vmap(lambda x: deep.kernel(x))(x32)
    assert str(vmapped.value) == str(eager.value)


def test_torch_func_grad_catches_a_derivative_term_cut_from_the_graph(monkeypatch):
    """Negative control of the torch.func tests: phi' taken at a detached point fails them."""
    from ntklab.arch import quadrature

    monkeypatch.setattr(quadrature, "_derivative",
                        lambda fn, z: torch.func.jvp(fn, (z.detach(),), (torch.ones_like(z),))[1])
    net, x1, x2 = FUNC_ARCHITECTURES["tanh residual"]
    f = lambda x: net.kernel(x, x2, get="ntk").sin().sum()  # noqa: E731
    direction = torch.randn(x1.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got, want = (torch.func.grad(f)(x1) * direction).sum(), _directional_fd(f, x1, direction)
    assert abs(float(got - want)) > 1e-4 * abs(float(want))
