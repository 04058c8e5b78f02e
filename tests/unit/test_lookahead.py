"""Lookahead: one synchronisation (slow weights pulled toward the trained ones, which restart
from them; only trainable parameters), where a run synchronises, training with it against a
reference computed by hand from the same train step, and the checkpoint that carries it."""
import numpy as np
import pytest

from src import checkpoint as ckpt
from tests.helpers import tiny_net

pytestmark = pytest.mark.usefixtures("graph_mode_on_cpu")
ALPHA = 0.5


def values(params):
    return {p.name: p.asnumpy().copy() for p in params}


def train_pair(seed=5, steps=2, alpha=ALPHA):
    """A small BatchNorm net, its momentum train step and a Lookahead over it."""
    from mindspore import nn

    from src.lookahead import Lookahead

    net = tiny_net(seed, batch_norm=True)
    optimizer = nn.Momentum(net.trainable_params(), 0.1, 0.9)
    step = nn.TrainOneStepCell(nn.WithLossCell(net, nn.CrossEntropyLoss()), optimizer)
    return net, step, Lookahead(net, steps, alpha)


def batches(count, seed=3):
    import mindspore as ms

    rng = np.random.default_rng(seed)
    return [(ms.Tensor(rng.standard_normal((4, 3, 6, 6)).astype(np.float32)),
             ms.Tensor(rng.integers(0, 3, 4).astype(np.int32))) for _ in range(count)]


def test_a_sync_pulls_the_slow_weights_and_restarts_the_trained_ones_from_them():
    import mindspore as ms

    net, _, lookahead = train_pair(alpha=0.3)
    trainable = {p.name for p in net.trainable_params()}
    slow_names = {p.name for p in lookahead.slow}
    assert slow_names == {"lookahead." + n for n in trainable}
    assert not any("moving_" in n for n in slow_names)  # statistics are not trained
    start = values(net.get_parameters())
    rng = np.random.default_rng(0)
    moved = {n: (v + rng.standard_normal(v.shape)).astype(np.float32) for n, v in start.items()}
    for param in net.get_parameters():
        param.set_data(ms.Tensor(moved[param.name]))
    lookahead()
    after = values(net.get_parameters())
    for name in trainable:
        want = start[name] + 0.3 * (moved[name] - start[name])
        np.testing.assert_allclose(after[name], want, rtol=1e-6, atol=1e-6, err_msg=name)
        np.testing.assert_array_equal(after[name], values(lookahead.slow)["lookahead." + name])
    for name in set(start) - trainable:  # BatchNorm moving statistics: left as they were set
        np.testing.assert_array_equal(after[name], moved[name], err_msg=name)


@pytest.mark.parametrize("steps, accumulate, epoch, span, want", [
    (3, 1, 7, 14, [2, 5, 6, 9, 12, 13]),  # every 3rd optimizer step, and each epoch's last
    (2, 2, 6, 6, [3, 5]),  # windows of 2 batches: optimizer steps end at batches 1, 3, 5
    (10, 1, 7, 7, [6]),  # k beyond the epoch: only the epoch's end
])
def test_sync_points_follow_the_position_in_the_epoch(steps, accumulate, epoch, span, want):
    _, _, lookahead = train_pair(steps=steps)
    assert [g for g in range(span) if lookahead.due(g, epoch, accumulate)] == want


def test_training_with_lookahead_matches_the_algorithm_by_hand():
    """Four steps with k=2: after steps 2 and 4 the weights are slow + alpha (fast - slow)
    of the slow weights at the previous sync, computed here from the same train step run
    without Lookahead and reset by hand."""
    import mindspore as ms

    data = batches(4)
    net, step, lookahead = train_pair(steps=2)
    for number, (x, y) in enumerate(data):
        step(x, y)
        if lookahead.due(number, 4):
            lookahead()
    got = values(net.trainable_params())

    ref_net, ref_step, _ = train_pair(steps=2)
    slow = values(ref_net.trainable_params())
    for number, (x, y) in enumerate(data):
        ref_step(x, y)
        if number % 2 == 1:
            fast = values(ref_net.trainable_params())
            slow = {n: slow[n] + ALPHA * (fast[n] - slow[n]) for n in slow}
            for param in ref_net.trainable_params():
                param.set_data(ms.Tensor(slow[param.name]))
    for name, want in slow.items():
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6, err_msg=name)
    plain_net, plain_step, _ = train_pair(steps=2)
    for x, y in data:
        plain_step(x, y)
    plain = values(plain_net.trainable_params())
    assert any(not np.allclose(plain[n], got[n]) for n in got)  # Lookahead changed something


def test_checkpoint_carries_the_slow_weights_and_resume_needs_them(tmp_path):
    from src import trainer
    from src.errors import UserError

    net, step, lookahead = train_pair(steps=3)
    for number, (x, y) in enumerate(batches(4)):
        step(x, y)
        if lookahead.due(number, 8):
            lookahead()  # after the 3rd step; the 4th leaves fast and slow apart
    state = trainer.training_state(step, None, lookahead)
    path = str(tmp_path / "state.ckpt")
    ckpt.save_checkpoint(state, path, {"epoch": 0})
    entries = ckpt.read_checkpoint(path)
    assert {"lookahead.features.0.weight", "features.0.weight",
            "moments.features.0.weight"} <= set(entries)
    assert not np.array_equal(entries["lookahead.features.0.weight"].asnumpy(),
                              entries["features.0.weight"].asnumpy())
    _, fresh_step, fresh_lookahead = train_pair(steps=3, seed=9)
    trainer.restore_train_state(trainer.training_state(fresh_step, None, fresh_lookahead),
                                entries, path)
    for mine, theirs in zip(fresh_lookahead.slow, lookahead.slow):
        np.testing.assert_array_equal(mine.asnumpy(), theirs.asnumpy())
    without = {k: v for k, v in entries.items() if not k.startswith("lookahead.")}
    _, other_step, other_lookahead = train_pair(steps=3)
    with pytest.raises(UserError, match=r"entries missing \(lookahead\."):
        trainer.restore_train_state(trainer.training_state(other_step, None, other_lookahead),
                                    without, path)


@pytest.mark.parametrize("steps, alpha, message", [
    (0, 0.5, "at least 1"), (2, 0.0, r"\(0, 1\]"), (2, 1.5, r"\(0, 1\]")])
def test_bad_settings_are_refused(steps, alpha, message):
    with pytest.raises(ValueError, match=message):
        train_pair(steps=steps, alpha=alpha)
