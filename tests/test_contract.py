"""The layer contract and the core's invariants (issue 12): each test failed before it."""
import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ntklab as nk
from ntklab.arch import LAYERS
from ntklab.arch.spec import parse_architecture
from ntklab.kernels import compute_kernel

X = torch.randn(7, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


# 1. the Gaussian-input invariant ---------------------------------------------------------
@pytest.mark.parametrize("arch", [
    nk.serial(nk.Relu(), nk.Dense(1)),                                  # activation on the inputs
    nk.serial(nk.Dense(4), nk.Relu(), nk.Erf(), nk.Dense(1)),           # two activations in a row
    nk.serial(nk.Dense(4), nk.Tanh(n_points=8), nk.Gelu(), nk.Dense(1)),
])
def test_an_activation_needs_gaussian_inputs(arch):
    with pytest.raises(ValueError, match="input to an activation must be Gaussian.*Dense/Conv"):
        arch.kernel(X)


def test_readouts_keep_and_affine_layers_set_the_gaussian_flag():
    images = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    nk.serial(nk.Conv(3, (3, 3), padding="SAME"), nk.GlobalAvgPool(), nk.Relu(), nk.Dense(1)).kernel(images)
    with pytest.raises(ValueError, match="must be Gaussian"):
        nk.serial(nk.Conv(3, (3, 3), padding="SAME"), nk.Relu(), nk.Flatten(), nk.Relu(), nk.Dense(1)).kernel(images)


# 2. store identity: repr round-trips, anonymous functions are never resumed -------------
def test_repr_shows_constructor_arguments_and_round_trips():
    net = nk.serial(nk.Dense(512, W_std=1.5, b_std=0.05), nk.LeakyRelu(0.2), nk.Dense(8),
                    nk.Tanh(n_points=64), nk.Dense(8, parameterization="standard"), nk.ABRelu(-0.5, 2.0),
                    nk.Dense(1))
    assert repr(nk.Tanh(n_points=64)) != repr(nk.Tanh())
    assert repr(net) == ("serial(Dense(512, W_std=1.5, b_std=0.05), LeakyRelu(alpha=0.2), Dense(8), "
                         "Tanh(n_points=64), Dense(8, parameterization='standard'), ABRelu(-0.5, 2.0), "
                         "Dense(1))")
    parsed = parse_architecture(repr(net))
    assert repr(parsed) == repr(net) == net.identity
    torch.testing.assert_close(parsed.kernel(X, get="ntk"), net.kernel(X, get="ntk"), rtol=0, atol=0)


def test_every_public_layer_is_in_the_grammar_and_in_all():
    for name, cls in LAYERS.items():
        assert name in nk.__all__ and getattr(nk, name) is cls
    assert "ABRelu" in nk.arch.spec.LAYERS
    assert set(LAYERS) - set(nk.arch.spec.LAYERS) == {"Elementwise", "Index"}   # a function, slices


def test_a_store_of_an_anonymous_architecture_is_not_resumed(tmp_path):
    x = torch.randn(6, 2, dtype=torch.float64)
    square = nk.serial(nk.Dense(4), nk.Elementwise(lambda z: z * z, n_points=8), nk.Dense(1))
    cube = nk.serial(nk.Dense(4), nk.Elementwise(lambda z: z ** 3, n_points=8), nk.Dense(1))
    assert repr(square) != repr(cube) or square.identity is None
    assert square.identity is None and "lambda" in repr(square)
    store = compute_kernel(square, x, store=tmp_path / "k.zarr", tile_size=3, progress=False)
    np.testing.assert_allclose(store.load("ntk"), square.kernel(x, get="ntk").numpy(), rtol=1e-13)
    with pytest.raises(ValueError, match="cannot be identified exactly"):
        compute_kernel(cube, x, store=tmp_path / "k.zarr", tile_size=3, progress=False)
    named = nk.serial(nk.Dense(4), nk.Elementwise(torch.sin, n_points=8), nk.Dense(1))
    assert named.identity is not None
    compute_kernel(named, x, store=tmp_path / "sin.zarr", tile_size=3, progress=False)
    compute_kernel(named, x, store=tmp_path / "sin.zarr", tile_size=3, progress=False)  # resumes


# 3. a stray file among the markers ------------------------------------------------------
def test_a_stray_file_in_tiles_done_is_ignored(tmp_path):
    x = torch.randn(6, 2, dtype=torch.float64)
    net = nk.serial(nk.Dense(4), nk.Relu(), nk.Dense(1))
    store = compute_kernel(net, x, store=tmp_path / "k.zarr", tile_size=3, progress=False)
    for stray in ("notes.txt", "0_1~", ".DS_Store", "9_9", "a_b"):
        (store.path / "tiles_done" / stray).write_text("x")
    assert store.done() == set(store.tiles()) and store.complete
    np.testing.assert_allclose(store.load("nngp"), net.kernel(x, get="nngp").numpy(), rtol=1e-13)


# API: get, dtype, device, bias ---------------------------------------------------------
def test_get_as_a_name_returns_the_tensor_and_a_tuple_a_kernel():
    net = nk.serial(nk.Dense(4), nk.Relu(), nk.Dense(1))
    both = net.kernel(X)
    assert isinstance(net.kernel(X, get="ntk"), torch.Tensor)
    torch.testing.assert_close(net.kernel(X, get="ntk"), both.ntk, rtol=0, atol=0)
    assert net.kernel(X, get=("ntk",)).nngp is None


def test_kernels_follow_the_input_dtype():
    net = nk.serial(nk.Dense(4, b_std=0.1), nk.Erf(), nk.Dense(1))
    k32 = net.kernel(X.float(), get="ntk")
    assert k32.dtype == torch.float32
    assert net.kernel(X.numpy().astype(np.float32), get="ntk").dtype == torch.float64   # numpy -> float64
    assert net.kernel([[1, 2, 3], [0, 1, 0]], get="ntk").dtype == torch.float64          # integers
    relative = (k32.double() - net.kernel(X, get="ntk")).abs().max() / net.kernel(X, get="ntk").abs().max()
    assert relative < 1e-5   # the documented float32 accuracy


def test_dense_has_no_bias_by_default_as_neural_tangents():
    assert nk.Dense(3).build((2,), torch.Generator(), torch.float32)[0].bias is None
    x = torch.randn(4, 2, dtype=torch.float64)
    standard = lambda b: nk.serial(nk.Dense(1, b_std=b, parameterization="standard"))  # noqa: E731
    # standard parameterization: a zero-initialised bias still adds 1 to the NTK
    torch.testing.assert_close(standard(0.0).kernel(x, get="ntk") - standard(None).kernel(x, get="ntk"),
                               torch.ones(4, 4, dtype=torch.float64))


# the import graph ---------------------------------------------------------------------
def package_graph() -> dict[str, set[str]]:
    """Edges between ntklab's parts (subpackages and top-level modules) from the import
    statements of every module (the root ntklab/__init__.py, which re-exports, excluded)."""
    root = Path(nk.__file__).parent
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        if parts == ("__init__",):
            continue
        unit = parts[0]
        package = parts[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                target = (*base, *(node.module or "").split(".")) if node.module else base
                target = [t for t in target if t]
                if target and target[0] != unit:
                    graph.setdefault(unit, set()).add(target[0])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ntklab."):
                target = node.module.split(".")[1]
                if target != unit:
                    graph.setdefault(unit, set()).add(target)
    return graph


def test_the_import_graph_has_no_cycle_and_arch_does_not_import_kernels():
    graph = package_graph()
    assert "kernels" not in graph.get("arch", set())
    state: dict[str, str] = {}

    def visit(unit, path):
        if state.get(unit) == "open":
            raise AssertionError(f"import cycle: {' -> '.join(path + [unit])}")
        if state.get(unit) == "done":
            return
        state[unit] = "open"
        for other in graph.get(unit, ()):
            visit(other, path + [unit])
        state[unit] = "done"

    for unit in list(graph):
        visit(unit, [])


# Tiers, lowest first: a part may import only parts of lower tiers (data flows one way:
# architecture/kernel -> solver/trainer -> theory and estimators -> the lab).
TIERS = {"_core": 0, "conventions": 1, "arch": 1, "kernels": 2, "predict": 2, "training": 3, "theory": 3, "sklearn": 3,
         "gpytorch": 3, "lab": 4}


def upward_edges(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((unit, target) for unit, targets in graph.items() for target in targets
                  if TIERS[target] >= TIERS[unit])


def test_every_part_imports_only_lower_tiers():
    graph = package_graph()
    assert set(graph) | {t for targets in graph.values() for t in targets} <= set(TIERS)
    assert upward_edges(graph) == []
    # negative control: the library importing the lab is caught
    assert upward_edges({**graph, "predict": {"lab"}}) == [("predict", "lab")]


def private_imports() -> list[str]:
    """`from <another module> import _name` anywhere in src (a module's private names are its own)."""
    root = Path(nk.__file__).parent
    found = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                found += [f"{path.relative_to(root)}: {alias.name}" for alias in node.names
                          if alias.name.startswith("_") and not alias.name.startswith("__")]
    return found


def test_no_module_imports_another_modules_private_names():
    assert private_imports() == []


def test_import_ntklab_stays_light():
    code = ("import sys, ntklab; heavy = [m for m in ('sklearn', 'matplotlib', 'dask', 'distributed', "
            "'zarr', 'pandas', 'click') if m in sys.modules]; assert not heavy, heavy; "
            "import ntklab.arch, ntklab._core.tiling")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_missing_extra_says_which_to_install():
    from ntklab._core.extras import import_extra
    with pytest.raises(ImportError, match=r"needs no_such_module, from the \[engine\] extra: "
                                          r"pip install 'ntklab\[engine\]'"):
        import_extra("no_such_module", "engine")


def test_every_layer_of_the_grammar_round_trips_through_its_repr():
    """One instance of every parseable layer, with non-default arguments, and the combinators."""
    examples = [nk.Dense(3, W_std=1.2, b_std=0.1, parameterization="standard", trainable=False),
                nk.Conv(4, (2, 3), strides=(2, 1), padding="CIRCULAR", W_std=1.1, in_channels=3),
                nk.ConvTranspose(4, (2,), strides=(3,), padding="SAME", W_std=1.1),
                nk.ConvLocal(4, (2, 2, 1), padding="CIRCULAR", b_std=0.2),
                nk.Flatten(), nk.GlobalAvgPool(), nk.GlobalSumPool(),
                nk.AvgPool((3, 3), strides=(2, 2), padding="SAME", normalize_edges=True),
                nk.SumPool((2, 2), padding="SAME"), nk.FanOut(3), nk.FanInSum(), nk.FanInConcat(axis=-1),
                nk.FanInProd(), nk.Identity(), nk.LayerNorm(axis=1, eps=1e-6),
                nk.GlobalSelfAttention(8, 4, 2, 3, W_key_std=2.0, b_std=0.1, attention_mechanism="RELU"),
                nk.GlobalSelfAttention(8, 4, 2, 3, linear_scaling=False, attention_mechanism="IDENTITY",
                                       pos_emb_type="CONCAT", pos_emb_p_norm=1.0, n_chan_pos_emb=4, val_pos_emb=True),
                nk.DotGeneral(lhs=[[1.0, -1.0]], dimension_numbers=(((1,), (2,)), ((), ()))), nk.DotGeneral(rhs=2.0),
                nk.Aggregate(aggregate_axis=(2, 3)),
                nk.Relu(), nk.LeakyRelu(0.3), nk.ABRelu(-1.0, 0.5), nk.Abs(), nk.Erf(0.5, 2.0, 0.1),
                nk.Sigmoid_like(), nk.Sign(), nk.Gelu(), nk.Tanh(n_points=32), nk.Sigmoid(n_points=16),
                nk.Sin(0.5, 1.5, 0.3), nk.Cos(b=2.0), nk.Rbf(0.3), nk.Gaussian(2.0, -0.5), nk.Exp(0.2, 0.4),
                nk.ExpNormalized(2.0, -0.5, do_clip=True), nk.Monomial(4), nk.RectifiedMonomial(3),
                nk.Polynomial([1.0, 0.0, -2.0]), nk.Hermite(5), nk.Gelu(approximate=True, n_points=32),
                nk.Gabor(), nk.Dropout(0.8, mode="test"), nk.ImageResize((4, 5), "nearest", antialias=False),
                nk.parallel(nk.serial(nk.Relu(), nk.Dense(2)), nk.Identity())]
    covered = {type(layer).__name__ for layer in examples}
    assert set(nk.arch.spec.LAYERS) <= covered, set(nk.arch.spec.LAYERS) - covered
    for layer in examples:
        parsed = parse_architecture(repr(layer))
        assert repr(parsed.layers[0] if len(parsed.layers) == 1 else parsed) == repr(layer) == layer.identity


def test_star_import_works_without_scikit_learn():
    """`from ntklab import *` must not import the sklearn extra (it was in __all__)."""
    import subprocess
    import sys
    code = "import sys; sys.modules['sklearn'] = None; from ntklab import *; print(serial, conventions.__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-500:]


@pytest.mark.parametrize("missing, code, hint", [
    ("click", "from ntklab.lab import main; main()", "ntklab: this part of ntklab needs click, from the [lab] extra: "
                                                     "pip install 'ntklab[lab]'"),
    ("sklearn", "import ntklab.sklearn", "ntklab._core.extras.MissingExtra: this part of ntklab needs "
                                         "scikit-learn, from the [sklearn] extra: pip install 'ntklab[sklearn]'"),
])
def test_a_bare_install_says_which_extra_to_install_in_one_line(missing, code, hint):
    """The `ntklab` command and `ntklab.sklearn` without their extra: one line naming the extra
    (the command: no traceback at all)."""
    result = subprocess.run([sys.executable, "-c", f"import sys; sys.modules[{missing!r}] = None; {code}"],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == hint
    if missing == "click":
        assert result.stderr.strip() == hint


def test_the_kernel_state_is_immutable():
    """Layers return new states (`replace`); nothing assigns to a state (it was mutable)."""
    import dataclasses

    from ntklab.arch.state import KernelState
    state = KernelState.from_inputs(torch.eye(3, dtype=torch.float64), None, need_ntk=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.is_gaussian = True
    assert state.replace(is_gaussian=True).is_gaussian and not state.is_gaussian
