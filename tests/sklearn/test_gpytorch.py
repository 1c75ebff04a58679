"""ntklab.gpytorch.ArchitectureKernel (the `gpytorch` extra): an ExactGP with it gives ntklab's own
GP posterior (nk.predict.gp_inference on the architecture's kernels) to 1e-8, and its
hyperparameters get the gradients of the kernel recursions (finite differences)."""
import pytest
import torch

import ntklab as nk

gpytorch = pytest.importorskip("gpytorch", reason="needs the gpytorch extra: pip install 'ntklab[gpytorch]'")
from ntklab.gpytorch import ArchitectureKernel  # noqa: E402

G = torch.Generator().manual_seed(0)
X = torch.randn(12, 3, generator=G, dtype=torch.float64)
Y = torch.sin(X.sum(1))
X_TEST = torch.randn(5, 3, generator=G, dtype=torch.float64)
NOISE = 0.01


def build(W_std, b_std):
    return nk.mlp(2, 512, W_std=W_std, b_std=b_std)


class Exact(gpytorch.models.ExactGP):
    def __init__(self, kernel):
        likelihood = gpytorch.likelihoods.GaussianLikelihood().double()
        likelihood.noise = NOISE
        super().__init__(X, Y, likelihood)
        self.mean_module, self.covar_module = gpytorch.means.ZeroMean(), kernel

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


@pytest.mark.parametrize("get", ["nngp", "ntk"])
def test_exact_gp_posterior_is_ntklabs_gp_inference(get):
    model = Exact(ArchitectureKernel(build, get=get, W_std=1.3, b_std=0.2)).double().eval()
    with torch.no_grad(), gpytorch.settings.fast_pred_var(False), gpytorch.settings.max_cholesky_size(10_000):
        posterior = model(X_TEST)
        mean, cov = posterior.mean, posterior.covariance_matrix
    net = build(1.3, 0.2)
    predict = nk.predict.gp_inference(net.kernel(X, None, get), Y[:, None], diag_reg=NOISE,
                                      diag_reg_absolute_scale=True)
    expected = predict(net.kernel(X_TEST, X, get), net.kernel(X_TEST, None, get))
    torch.testing.assert_close(mean, expected.mean[:, 0], rtol=0, atol=1e-8)
    torch.testing.assert_close(cov, expected.covariance, rtol=0, atol=1e-8)
    # negative control: other hyperparameters give another posterior
    other = nk.predict.gp_inference(build(1.5, 0.05).kernel(X, None, get), Y[:, None], diag_reg=NOISE,
                                    diag_reg_absolute_scale=True)(build(1.5, 0.05).kernel(X_TEST, X, get))
    assert (mean - other[:, 0]).abs().max() > 1e-4


def test_marginal_likelihood_gradient_in_W_std_and_b_std():
    """d(-mll)/d raw_W_std, raw_b_std by autograd against central finite differences (step 1e-5)."""
    model = Exact(ArchitectureKernel(build, W_std=1.3, b_std=0.2)).double().train()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)

    def loss():
        return -mll(model(X), Y)

    kernel = model.covar_module
    loss().backward()
    for raw in (kernel.raw_W_std, kernel.raw_b_std):
        with torch.no_grad():
            raw += 1e-5
            up = loss().item()
            raw -= 2e-5
            down = loss().item()
            raw += 1e-5
        assert raw.grad is not None and abs(raw.grad.item()) > 1e-3
        assert raw.grad.item() == pytest.approx((up - down) / 2e-5, rel=1e-5)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="get must be"):
        ArchitectureKernel(build, get="both")
    with pytest.raises(ValueError, match="W_std and b_std must be > 0"):
        ArchitectureKernel(build, W_std=0.0)
    with pytest.raises(ValueError, match="batch dimensions"):
        ArchitectureKernel(build)(torch.zeros(2, 4, 3, dtype=torch.float64)).to_dense()
