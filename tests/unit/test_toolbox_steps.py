"""Nesterov momentum, gradient-norm clipping and gradient accumulation, checked on a tiny
network against numbers worked out here, for every optimizer path and loss-scale setting."""
import numpy as np
import pytest

from tests import helpers
from tests.helpers import quick_config

LR = 0.1
BATCH = 8
pytestmark = pytest.mark.usefixtures("graph_mode_on_cpu")


def tiny_net(seed=3):
    """A convolution (with bias) and a dense layer, no BatchNorm: splitting a batch into
    micro-batches changes nothing but the order of the arithmetic."""
    return helpers.tiny_net(seed, conv_bias=True, batch_norm=False)


def batches(count, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((BATCH, 3, 6, 6)).astype(np.float32),
             rng.integers(0, 3, BATCH).astype(np.int32)) for _ in range(count)]


def use_isfinite_overflow_check(step):
    """The CPU stand-in for the GPU/Ascend overflow check (see test_optimizer_invariants)."""
    step.gpu_target = False
    step.ascend_910a_target = False
    step.ascend_910b_target = True
    step._ascend_check_overflow_mode = None  # pylint: disable=protected-access
    step.enable_allfinite = False


def weights_of(net):
    return {p.name: p.asnumpy().copy() for p in net.trainable_params()}


# ---------------------------------------------------------------- Nesterov

@pytest.mark.parametrize("native_usable", [True, False])
def test_nesterov_update_is_the_nesterov_formula(native_usable, monkeypatch, request):
    """Two updates with given gradients: accum = m * accum + (g + wd * w);
    w -= lr * ((g + wd * w) + m * accum), by the native kernel (FastNesterovUpdate) where it
    runs and by MindSpore ops elsewhere."""
    import mindspore as ms

    from src import trainer

    if native_usable:
        request.getfixturevalue("library")  # built, or the test fails
    monkeypatch.setattr(trainer, "_fused_optimizer_usable", lambda c, t: native_usable)
    net = tiny_net()
    cfg = quick_config("--nesterov=True", "--momentum=0.9", "--weight_decay=0.01")
    optimizer = trainer.build_optimizer(net, cfg, np.full(2, LR, np.float32), 1.0, "CPU")
    assert type(optimizer).__name__ == ("FusedMomentum" if native_usable else "NesterovMomentum")
    params = list(optimizer.parameters)
    weights = [p.asnumpy().astype(np.float64) for p in params]
    accums = [np.zeros_like(w) for w in weights]
    rng = np.random.default_rng(1)
    for _ in range(2):
        grads = [rng.standard_normal(w.shape).astype(np.float32) for w in weights]
        optimizer(tuple(ms.Tensor(g) for g in grads))
        for i, (p, g) in enumerate(zip(params, grads)):
            decayed = g + (0.01 if len(p.shape) > 1 else 0.0) * weights[i]
            accums[i] = 0.9 * accums[i] + decayed
            weights[i] = weights[i] - LR * (decayed + 0.9 * accums[i])
    for p, want in zip(params, weights):
        np.testing.assert_allclose(p.asnumpy(), want, rtol=1e-5, atol=1e-6, err_msg=p.name)


def test_nesterov_weight_decay_is_unscaled_with_the_gradients(monkeypatch):
    """Loss scale 1024 leaves Nesterov training where loss scale 1 takes it (the decay is
    added to still-scaled gradients, so it must be scaled too)."""
    plain, _ = train(3, "fixed", "--nesterov=True", "--loss_scale=1", monkeypatch=monkeypatch)
    scaled, _ = train(3, "fixed", "--nesterov=True", "--loss_scale=1024",
                      monkeypatch=monkeypatch)
    for name, value in weights_of(plain).items():
        np.testing.assert_allclose(weights_of(scaled)[name], value, rtol=1e-6, atol=1e-9)


def test_without_nesterov_the_native_optimizer_stays(monkeypatch):
    from src import trainer

    monkeypatch.setattr(trainer, "_fused_optimizer_usable", lambda c, t: True)
    optimizer = trainer.build_optimizer(tiny_net(), quick_config("--nesterov=False"),
                                        np.full(2, LR, np.float32), 1.0, "CPU")
    assert type(optimizer).__name__ == "FusedMomentum"


# ---------------------------------------------------------------- clipping, accumulation

def train(steps, scale_type="fixed", *args, accumulate=1, native=False, monkeypatch=None,
          amp_level="O0"):
    """Weights of tiny_net after `steps` optimizer steps on batches(steps), each batch split
    into `accumulate` micro-batches. amp_level O2 composes as on GPU/Ascend, with float32 as
    the cast type (see trainer.mixed_precision)."""
    import mindspore as ms

    from src import trainer

    monkeypatch.setattr(trainer, "_fused_optimizer_usable", lambda c, t: native)
    cfg = quick_config("--momentum=0.9", "--weight_decay=0.01",
                       f"--accumulate_steps={accumulate}", f"--loss_scale_type={scale_type}",
                       *args)
    net = tiny_net()
    step = trainer.compose_train_step(net, cfg, np.full(steps, LR, np.float32), "CPU", amp_level,
                                      scale_type, amp_dtype=ms.float32)
    if scale_type == "dynamic":
        use_isfinite_overflow_check(step.update if accumulate > 1 else step)
    for images, labels in batches(steps):
        for part in range(accumulate):
            rows = slice(part * BATCH // accumulate, (part + 1) * BATCH // accumulate)
            step(ms.Tensor(images[rows]), ms.Tensor(labels[rows]))
        if accumulate > 1:
            assert not bool(step.apply_update().asnumpy())
    assert int(step.optimizer.global_step.asnumpy()[0]) == steps
    return net, step


def reference_gradient():
    """Gradient of the mean cross-entropy of tiny_net on the first batch, and its norm."""
    import mindspore as ms
    from mindspore import nn, ops

    net = tiny_net()
    with_loss = nn.WithLossCell(net, nn.CrossEntropyLoss())
    images, labels = batches(1)[0]
    grads = ops.GradOperation(get_by_list=True)(with_loss, net.trainable_params())(
        ms.Tensor(images), ms.Tensor(labels))
    grads = {p.name: g.asnumpy().astype(np.float64) for p, g in zip(net.trainable_params(), grads)}
    return grads, np.sqrt(sum((g ** 2).sum() for g in grads.values()))


SCALES = [("fixed", "--loss_scale=1"), ("fixed", "--loss_scale=1024"),
          ("dynamic", "--loss_scale=1024")]


# the native optimizer runs on CPU only, where the loss scale is always fixed
CLIP_CASES = [(t, s, a, n) for t, s in SCALES for a in (1, 2) for n in (False, True)
              if not (n and t == "dynamic")]


@pytest.mark.parametrize("scale_type,scale,accumulate,native", CLIP_CASES)
def test_clipping_scales_the_unscaled_gradient_to_max_norm(scale_type, scale, accumulate, native,
                                                           monkeypatch):
    """One step of plain SGD (momentum 0, no decay): w1 = w0 - lr * g * c / |g| for a norm
    c a quarter of |g|, whatever the loss scale, accumulation or optimizer path."""
    if native:
        from src import trainer

        usable = trainer._fused_optimizer_usable  # pylint: disable=protected-access
        if not usable(quick_config(), "CPU"):
            pytest.skip("the native optimizer kernel is not built or not allowed here")
    grads, norm = reference_gradient()
    start = weights_of(tiny_net())
    clip = norm / 4
    net, _ = train(1, scale_type, scale, f"--clip_grad_norm={clip}", "--momentum=0",
                   "--weight_decay=0", accumulate=accumulate, native=native,
                   monkeypatch=monkeypatch)
    for name, value in weights_of(net).items():
        want = start[name] - LR * grads[name] * clip / norm
        np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-7, err_msg=name)


def test_clipping_leaves_a_small_gradient_alone(monkeypatch):
    _, norm = reference_gradient()
    plain, _ = train(2, "fixed", monkeypatch=monkeypatch)
    roomy, _ = train(2, "fixed", f"--clip_grad_norm={norm * 100}", monkeypatch=monkeypatch)
    for name, value in weights_of(plain).items():
        np.testing.assert_array_equal(weights_of(roomy)[name], value)


@pytest.mark.parametrize("scale_type,scale", SCALES)
@pytest.mark.parametrize("clip", ["0", "0.5"])
def test_two_accumulated_halves_equal_one_whole_batch(scale_type, scale, clip, monkeypatch):
    """Three optimizer steps on batches of 8 = three steps on two micro-batches of 4 each
    (no BatchNorm, so the batch split changes nothing but the arithmetic order): weights,
    momenta and the loss scale agree, and the sums are zero after each step."""
    whole_net, whole = train(3, scale_type, scale, f"--clip_grad_norm={clip}",
                             monkeypatch=monkeypatch)
    split_net, split = train(3, scale_type, scale, f"--clip_grad_norm={clip}", accumulate=2,
                             monkeypatch=monkeypatch)
    for name, value in weights_of(whole_net).items():
        np.testing.assert_allclose(weights_of(split_net)[name], value, rtol=1e-5, atol=1e-7,
                                   err_msg=name)
    for mine, theirs in zip(split.optimizer.moments, whole.optimizer.moments):
        np.testing.assert_allclose(mine.asnumpy(), theirs.asnumpy(), rtol=1e-5, atol=1e-7)
    sums = [p for p in split.get_parameters() if p.name.startswith("accum_grads.")]
    assert len(sums) == len(whole_net.trainable_params())
    assert all(not p.asnumpy().any() for p in sums)
    if scale_type == "dynamic":
        assert float(split.update.scale_sense.asnumpy()) == float(whole.scale_sense.asnumpy())


def test_accumulation_and_clipping_compose_with_mixed_precision(monkeypatch):
    """The GPU/Ascend composition (amp O2, dynamic loss scale 1024) with two micro-batches
    and clipping ends where the plain O0 whole-batch step does."""
    args = ("--loss_scale=1024", "--clip_grad_norm=0.5")
    plain, _ = train(3, "fixed", "--loss_scale=1", "--clip_grad_norm=0.5",
                     monkeypatch=monkeypatch)
    mixed, _ = train(3, "dynamic", *args, accumulate=2, amp_level="O2", monkeypatch=monkeypatch)
    for name, value in weights_of(plain).items():
        np.testing.assert_allclose(weights_of(mixed)[name], value, rtol=1e-5, atol=1e-7)


def test_an_epoch_is_whole_accumulation_windows():
    """The batches that cannot fill a window at the end of an epoch are left out; too few
    batches for one window is a one-line error."""
    from src import trainer
    from src.errors import UserError

    assert trainer.usable_batches(16, 3) == 15 and trainer.usable_batches(16, 1) == 16
    with pytest.raises(UserError, match="accumulate_steps: 20 is more than the 16 batches"):
        trainer.usable_batches(16, 20)
