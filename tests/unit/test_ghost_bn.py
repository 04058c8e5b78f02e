"""ghost_batch_size: GhostBatchNorm2d (the MindSpore cell run on GPU, Ascend and CPU without the
native kernels) against float64 NumPy, the plain BatchNorm it must equal where a batch is one
run or in inference, the networks train.py and eval.py build, and the config checks. The
native kernel and chain are checked against this cell in test_native_kernels.py."""
import numpy as np
import pytest

from src.errors import UserError
from tests.helpers import quick_config
from tests.unit.test_native_kernels import bn_relu_float64, rel_err


@pytest.fixture(scope="module")
def ms_graph():
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    return ms


def _cells(channels, ghost, eps=1e-5):
    """(GhostBatchNorm2d + ReLU, nn.BatchNorm2d + ReLU) with the same random gamma and beta."""
    import mindspore as ms
    from mindspore import nn

    from src.ghost_bn import GhostBatchNorm2d

    rng = np.random.default_rng(3)
    gamma = rng.uniform(0.5, 1.5, channels).astype(np.float32)
    beta = rng.normal(0, 0.3, channels).astype(np.float32)
    cells = []
    for norm in (GhostBatchNorm2d(channels, ghost, eps=eps), nn.BatchNorm2d(channels, eps=eps)):
        norm.gamma.set_data(ms.Tensor(gamma))
        norm.beta.set_data(ms.Tensor(beta))
        cells.append(nn.SequentialCell([norm, nn.ReLU()]))
    return cells, gamma, beta


def _batch(shape, seed=5):
    rng = np.random.default_rng(seed)
    c = shape[1]
    return (rng.standard_normal(shape) * rng.uniform(0.5, 2, (1, c, 1, 1))
            + rng.normal(0, 1, (1, c, 1, 1))).astype(np.float32)


def _value_and_grads(ms, cell, x, cotangent):
    def loss_fn(v, r):
        out = cell(v)
        return (out * r).sum(), out

    grad_fn = ms.value_and_grad(loss_fn, grad_position=0, weights=cell.trainable_params(),
                                has_aux=True)
    (_, out), (dx, (dgamma, dbeta)) = grad_fn(ms.Tensor(x), ms.Tensor(cotangent))
    return out.asnumpy(), dx.asnumpy(), dgamma.asnumpy(), dbeta.asnumpy()


@pytest.mark.parametrize("shape,ghost", [((8, 5, 3, 4), 2), ((6, 3, 5, 5), 3)])
def test_each_run_is_normalised_with_its_own_statistics(ms_graph, shape, ghost):
    (cell, _), gamma, beta = _cells(shape[1], ghost)
    cell.set_train(True)
    x = _batch(shape)
    cotangent = np.random.default_rng(9).standard_normal(shape).astype(np.float32)
    out, dx, dgamma, dbeta = _value_and_grads(ms_graph, cell, x, cotangent)
    exact = bn_relu_float64(x, gamma, beta, 1e-5, cotangent, ghost)
    whole = bn_relu_float64(x, gamma, beta, 1e-5, cotangent)
    for name, value in (("forward", out), ("backward_data", dx), ("backward_gamma", dgamma),
                        ("backward_beta", dbeta)):
        assert rel_err(value, exact[name]) < 1e-5, name
    # and it is not plain BatchNorm: the runs' statistics differ from the batch's
    assert rel_err(out, whole["forward"]) > 1e-2


def test_moving_statistics_are_those_of_the_whole_batch(ms_graph):
    (ghost, plain), _, _ = _cells(4, 2)
    for cell in (ghost, plain):
        cell.set_train(True)
    for seed in (1, 2):  # two steps: the momentum is applied to the running values
        x = ms_graph.Tensor(_batch((8, 4, 3, 3), seed))
        ghost(x)
        plain(x)
    for name in ("moving_mean", "moving_variance"):
        got, want = getattr(ghost[0], name).asnumpy(), getattr(plain[0], name).asnumpy()
        assert rel_err(got, want) < 1e-6, name
        assert not np.allclose(want, 0 if name == "moving_mean" else 1)


def test_one_run_and_inference_are_plain_batchnorm(ms_graph):
    x = ms_graph.Tensor(_batch((4, 6, 5, 5)))
    (ghost, plain), _, _ = _cells(6, 4)  # the batch is one run
    for train in (True, False):
        ghost.set_train(train)
        plain.set_train(train)
        np.testing.assert_array_equal(ghost(x).asnumpy(), plain(x).asnumpy())
    (ghost, plain), _, _ = _cells(6, 2)
    ghost.set_train(False)
    plain.set_train(False)
    np.testing.assert_array_equal(ghost(x).asnumpy(), plain(x).asnumpy())


def test_a_batch_that_is_not_a_multiple_of_the_ghost_batch_is_refused(ms_graph):
    (ghost, _), _, _ = _cells(3, 4)
    ghost.set_train(True)
    with pytest.raises(ValueError, match="a batch of 6 images is not a multiple of the ghost "
                                         "batch of 4"):
        ghost(ms_graph.Tensor(_batch((6, 3, 2, 2))))


def test_train_py_network_has_ghost_cells_with_the_checkpoint_names_of_the_plain_one(ms_graph):
    from mindspore import nn

    from src.factory import build_network
    from src.ghost_bn import GhostBatchNorm2d

    config = quick_config("--arch=vgg11", "--batch_size=16", "--ghost_batch_size=4",
                          "--native_kernels=off")
    trained = build_network(config, "CPU", training=True)
    evaluated = build_network(config, "CPU")
    ghosts = [c for c in trained.features if isinstance(c, GhostBatchNorm2d)]
    assert len(ghosts) == 8 and {c.ghost_batch for c in ghosts} == {4}
    assert not any(isinstance(c, GhostBatchNorm2d) for c in evaluated.features)
    assert sum(isinstance(c, nn.BatchNorm2d) for c in evaluated.features) == 8
    assert [p.name for p in trained.get_parameters()] == \
        [p.name for p in evaluated.get_parameters()]


def test_training_refuses_a_batch_the_ghost_batch_does_not_divide_but_evaluation_takes_it():
    from train import check_train_keys

    config = quick_config("--batch_size=16", "--ghost_batch_size=6")  # eval.py's view: fine
    with pytest.raises(UserError) as err:
        check_train_keys(config)
    assert str(err.value) == ("config key 'ghost_batch_size' is 6; it must divide batch_size "
                              "(16), or set --ghost_batch_size=0")
    check_train_keys(quick_config("--batch_size=16", "--ghost_batch_size=8"))


@pytest.mark.parametrize("args,message", [
    (["--ghost_batch_size=4", "--batch_norm=False"],
     "config key 'ghost_batch_size' is 4, but the network has no BatchNorm (batch_norm=False); "
     "set --ghost_batch_size=0"),
    (["--ghost_batch_size=4", "--sync_bn=True"],
     "config keys 'ghost_batch_size' (4) and 'sync_bn' ask for BatchNorm statistics over fewer "
     "and over more images; set one of them off"),
    (["--ghost_batch_size=-1"], "config key 'ghost_batch_size' is -1; it must not be negative"),
])
def test_bad_ghost_batch_settings_are_one_line_errors(args, message):
    with pytest.raises(UserError) as err:
        quick_config("--batch_size=16", *args)
    assert str(err.value) == message
