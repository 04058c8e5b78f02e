"""Exponential moving average of the weights: the average itself (with and without decay
warmup, BatchNorm statistics included), evaluation with the averages swapped in and out bit
for bit, and the files it is saved to."""
import numpy as np
import pytest

from src import checkpoint as ckpt
from tests.helpers import tiny_net

DECAY = 0.9
pytestmark = pytest.mark.usefixtures("graph_mode_on_cpu")


def small_bn_net(seed=5):
    """Convolution, BatchNorm (moving statistics are parameters too) and a dense layer."""
    return tiny_net(seed, batch_norm=True)


def values(net):
    return {p.name: p.asnumpy().copy() for p in net.get_parameters()}


def set_values(net, new):
    import mindspore as ms

    for param in net.get_parameters():
        param.set_data(ms.Tensor(new[param.name]))


def trajectory(net, steps, seed=0):
    """`steps` sets of made-up weights (what optimizer steps would leave), all parameters."""
    rng = np.random.default_rng(seed)
    start = values(net)
    return [{k: (v + rng.standard_normal(v.shape)).astype(np.float32) for k, v in start.items()}
            for _ in range(steps)]


@pytest.mark.parametrize("warmup", [False, True])
def test_average_is_the_exponential_moving_average(warmup):
    """After each update n (0-based): avg = avg + (1 - d) (w - avg), with d = DECAY, or
    min(DECAY, (1 + n) / (10 + n)) with warmup; moving mean and variance included."""
    from src.ema import WeightEMA

    net = small_bn_net()
    ema = WeightEMA(net, DECAY, warmup=warmup)
    expected = {k: v.astype(np.float64) for k, v in values(net).items()}
    for n, weights in enumerate(trajectory(net, 4)):
        set_values(net, weights)
        ema()
        decay = min(DECAY, (1 + n) / (10 + n)) if warmup else DECAY
        expected = {k: v + (1 - decay) * (weights[k] - v) for k, v in expected.items()}
    averages = {p.name: p.asnumpy() for p in ema.averages}
    assert "ema.features.1.moving_mean" in averages and "ema.features.1.moving_variance" in averages
    for name, want in expected.items():
        np.testing.assert_allclose(averages["ema." + name], want, rtol=1e-6, atol=1e-6,
                                   err_msg=name)
    assert float(ema.updates.asnumpy()) == 4


def test_warmup_makes_the_first_average_follow_the_weights():
    """With warmup the first update has decay 0.1: the average moves 90 % of the way."""
    from src.ema import WeightEMA

    net = small_bn_net()
    start = values(net)
    ema = WeightEMA(net, 0.999, warmup=True)
    weights = trajectory(net, 1)[0]
    set_values(net, weights)
    ema()
    got = ema.averages[0].asnumpy()
    name = ema.weights[0].name
    np.testing.assert_allclose(got, start[name] + 0.9 * (weights[name] - start[name]), rtol=1e-5)


def test_applied_swaps_the_averages_in_and_the_weights_back_exactly():
    import mindspore as ms

    from src.ema import WeightEMA

    net = small_bn_net()
    ema = WeightEMA(net, DECAY)
    for weights in trajectory(net, 2):
        set_values(net, weights)
        ema()
    raw = values(net)
    averages = {p.name[len("ema."):]: p.asnumpy().copy() for p in ema.averages}
    image = ms.Tensor(np.random.default_rng(1).standard_normal((2, 3, 6, 6)).astype(np.float32))
    net.set_train(False)
    with ema.applied():
        for name, value in values(net).items():
            np.testing.assert_array_equal(value, averages[name], err_msg=name)
        inside = net(image).asnumpy()
    for name, value in values(net).items():
        np.testing.assert_array_equal(value, raw[name], err_msg=name)
    fresh = small_bn_net()
    set_values(fresh, averages)
    fresh.set_train(False)
    np.testing.assert_allclose(inside, fresh(image).asnumpy(), rtol=1e-6)


def test_evaluating_the_average_leaves_training_untouched():
    """A compiled train step, then an evaluation with the averages, then more steps: the
    same weights as a twin that never evaluated."""
    import mindspore as ms
    from mindspore import nn

    from src.ema import WeightEMA

    rng = np.random.default_rng(3)
    data = [(ms.Tensor(rng.standard_normal((4, 3, 6, 6)).astype(np.float32)),
             ms.Tensor(rng.integers(0, 3, 4).astype(np.int32))) for _ in range(3)]
    runs = []
    for evaluate in (True, False):
        net = small_bn_net()
        step = nn.TrainOneStepCell(nn.WithLossCell(net, nn.CrossEntropyLoss()),
                                   nn.Momentum(net.trainable_params(), 0.1, 0.9))
        ema = WeightEMA(net, DECAY)
        for i, (image, label) in enumerate(data):
            step(image, label)
            ema()
            if evaluate and i == 0:
                net.set_train(False)
                with ema.applied():
                    net(image)
                net.set_train(True)
        runs.append(values(net))
    for name, value in runs[1].items():
        np.testing.assert_array_equal(runs[0][name], value, err_msg=name)


def test_weights_only_file_loads_into_a_plain_network(tmp_path):
    """<arch>-ema.ckpt holds the averages under the network's names: eval.py's loader takes
    it as it takes any weights file."""
    from src.ema import WeightEMA

    net = small_bn_net()
    ema = WeightEMA(net, DECAY)
    set_values(net, trajectory(net, 1)[0])
    ema()
    path = str(tmp_path / "net-ema.ckpt")
    ckpt.save_checkpoint(ema.weights_only(), path, {"arch": "small"})
    other = small_bn_net(seed=9)
    ckpt.load_weights(other, ckpt.read_checkpoint(path), path)
    for average, (name, value) in zip(ema.averages, values(other).items()):
        assert average.name == "ema." + name
        np.testing.assert_array_equal(value, average.asnumpy())


def test_training_state_checkpoint_carries_and_restores_the_average(tmp_path):
    """The checkpoint of the train step and the EMA holds ema.* beside the weights and the
    momenta; restoring it into a fresh pair gives the same averages and update count, and
    resuming without EMA state is refused with the entries named."""
    import mindspore as ms
    from mindspore import nn

    from src import trainer
    from src.ema import WeightEMA
    from src.errors import UserError

    def pair():
        net = small_bn_net()
        optimizer = nn.Momentum(net.trainable_params(), 0.1, 0.9)
        step = nn.TrainOneStepCell(nn.WithLossCell(net, nn.CrossEntropyLoss()), optimizer)
        ema = WeightEMA(net, DECAY)
        return net, step, ema, trainer.training_state(step, ema)

    net, step, ema, state = pair()
    rng = np.random.default_rng(2)
    for _ in range(2):
        step(ms.Tensor(rng.standard_normal((4, 3, 6, 6)).astype(np.float32)),
             ms.Tensor(rng.integers(0, 3, 4).astype(np.int32)))
        ema()
    path = str(tmp_path / "state.ckpt")
    ckpt.save_checkpoint(state, path, {"epoch": 0})
    entries = ckpt.read_checkpoint(path)
    assert {"ema.updates", "ema.features.0.weight", "moments.features.0.weight",
            "features.0.weight"} <= set(entries)
    _, _, restored_ema, restored = pair()
    trainer.restore_train_state(restored, entries, path)
    for mine, theirs in zip(restored_ema.averages, ema.averages):
        np.testing.assert_array_equal(mine.asnumpy(), theirs.asnumpy())
    assert float(restored_ema.updates.asnumpy()) == 2
    without = {k: v for k, v in entries.items() if not k.startswith("ema.")}
    with pytest.raises(UserError, match=r"entries missing \(ema\."):
        trainer.restore_train_state(pair()[3], without, path)
