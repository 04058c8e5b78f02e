"""Loss scaling must not change what training does.

A loss scale multiplies the loss gradient by ``s`` so that small float16 gradients survive;
whatever divides it back out, the update must equal the unscaled one. The class of bug this
guards against: weight decay (or anything else) added while the gradients are still scaled,
which silently makes it ``s`` times too small (1024 times with imagenet2012_config.yaml).

For every optimizer path -- the native ``FusedMomentum`` (CPU), ``DecayedMomentum`` (GPU,
Ascend, CPU without the native library) and MindSpore's own ``nn.Momentum`` with
``weight_decay`` as the reference convention -- and every loss-scale setting (fixed 1024,
dynamic starting at 1024), three training steps from one seed must leave the parameters
AND the momentum accumulators equal to those of the same path's fixed-1 run.
DecayedMomentum is also run under amp_level O2 (the GPU/Ascend mixed-precision
composition); FusedMomentum only ever runs at O0 (CPU).

Each run is composed by ``trainer.compose_train_step``, the function ``build_train_step``
uses after ``choose_precision``, with an explicit (amp_level, scale_type): on CPU
choose_precision would force ("O0", "fixed"), so this seam is what lets the test build the
GPU/Ascend composition -- the VGG converted in place by ``ms.amp.auto_mixed_precision``,
the masked-dropout loss cell reaching into it, ``TrainOneStepCell(sens=s)`` or
``TrainOneStepWithLossScaleCell`` with a ``DynamicLossScaleUpdateCell``, the optimizer --
on CPU. The dynamic cell's overflow check is switched to one that has CPU kernels (see
_check_overflow_with_isfinite).

Precision: the O2 runs use ``amp_dtype=ms.float32`` (see ``trainer.mixed_precision``): the
same in-place conversion, per-cell cast flags and BatchNorm output casts that O2 builds,
with float32 as the cast type. float16 would run on CPU (slowly) but cannot check this
invariant: with a loss scale of 1, small float16 gradients underflow -- the very thing
loss scaling exists to prevent -- so the fixed-1 reference itself would differ
legitimately from the scaled runs, and a tolerance wide enough for float16 (1e-2) would
hide a weight decay that is off by a factor of 1024. What is checked here is the order of
scaling, unscaling and weight decay, which does not depend on the cast type.

Tolerance: rtol 1e-6, atol 1e-9 (float32). The scales are powers of two, and multiplying
by a power of two is exact in binary floating point (no overflow or subnormals here), so a
correct composition reproduces the reference to the last bit -- as measured, for every
case -- and the tolerance leaves room only for a compiler fusing or reordering a multiply
and an add differently in differently composed graphs (a few float32 ulps). Weight decay
is exaggerated (0.05 at learning rate 0.05) so that a decay 1024 times too small is
obvious: the weights shrink 0.25 % a step less than they should, and the accumulators
miss a ``0.05 * w`` term of the size of the gradients themselves -- thousands of times the
tolerance.
"""
import numpy as np
import pytest

from model_utils.config import get_config

SEED = 7
STEPS = 3
BATCH = 8
LR = 0.05
WEIGHT_DECAY = 0.05
RTOL, ATOL = 1e-6, 1e-9
pytestmark = pytest.mark.usefixtures("graph_mode_on_cpu")

# loss-scale settings: (name, loss_scale_type, loss_scale); the first is the reference
SCALES = [("fixed-1", "fixed", 1.0), ("fixed-1024", "fixed", 1024.0),
          ("dynamic-1024", "dynamic", 1024.0)]
# optimizer paths and the precision levels of the compositions they take part in:
# FusedMomentum exists only on CPU, where the step is always amp_level O0; DecayedMomentum
# is what GPU and Ascend train with, also under O2; nn.Momentum is the reference convention
PATHS = [("FusedMomentum", ("O0",)), ("DecayedMomentum", ("O0", "O2")), ("Momentum", ("O0",))]
# every composition against the O0 fixed-1 run of its optimizer (an O2 run that matches it
# at scale 1024 also shows the float32 O2 seam changes nothing, so O2 fixed-1 is not run)
CASES = [(path, amp, scale) for path, amps in PATHS for amp in amps for scale, _, _ in SCALES
         if scale != "fixed-1"]


def _config(scale):
    _, scale_type, loss_scale = next(s for s in SCALES if s[0] == scale)
    return get_config(["--config_path=imagenet2012_config.yaml", "--context_mode=graph",
                       f"--weight_decay={WEIGHT_DECAY}", "--momentum=0.9",
                       f"--loss_scale={loss_scale}", f"--loss_scale_type={scale_type}"])


def _plain_momentum(net, config, lr_per_step, loss_scale, device_target):
    """MindSpore's nn.Momentum with the project's groups and per-group weight_decay."""
    import mindspore as ms
    from mindspore import nn

    from src import trainer

    groups = [{"params": params, "weight_decay": config.weight_decay if decayed else 0.0}
              for (_, decayed), params in trainer.split_parameter_groups(net).items()]
    groups.append({"order_params": net.trainable_params()})
    return nn.Momentum(groups, learning_rate=ms.Tensor(lr_per_step, ms.float32),
                       momentum=config.momentum, loss_scale=loss_scale)


def _check_overflow_with_isfinite(step):
    """TrainOneStepWithLossScaleCell picks its overflow check by device: FloatStatus on GPU,
    the NPU float-status registers on Ascend 910A; neither has a CPU kernel. Its Ascend 910B
    "infnan" check without AllFinite sums IsFinite over the gradients, which CPU has, so the
    step is switched to that one. The loss scaling, the unscaling and the skip-on-overflow
    around the check are the same code on every device."""
    step.gpu_target = False
    step.ascend_910a_target = False
    step.ascend_910b_target = True
    step._ascend_check_overflow_mode = None  # pylint: disable=protected-access
    step.enable_allfinite = False


def _builder(path):
    """(device_target, make_optimizer or None for build_optimizer) that yields `path`: the
    native kernel is chosen on CPU in graph mode when the library is built; DecayedMomentum
    is what build_optimizer gives every device but CPU; nn.Momentum is built directly."""
    if path == "Momentum":
        return "CPU", _plain_momentum
    return ("GPU" if path == "DecayedMomentum" else "CPU"), None


def _train(path, amp_level, scale, steps=STEPS):
    """(parameters, moments) by name after `steps` steps of one composition."""
    import mindspore as ms

    from src import trainer, vgg

    config = _config(scale)
    ms.set_seed(SEED)
    net = vgg.vgg11_bn(num_classes=10, image_size=(32, 32), dropout=True)
    device_target, make_optimizer = _builder(path)
    kwargs = {"amp_dtype": ms.float32, "make_optimizer": make_optimizer}
    scale_type = next(s[1] for s in SCALES if s[0] == scale)
    step = trainer.compose_train_step(net, config, np.full(steps, LR, np.float32),
                                      device_target, amp_level, scale_type, **kwargs)
    assert type(step.optimizer).__name__ == path
    if scale_type == "dynamic":
        _check_overflow_with_isfinite(step)
    assert trainer.uses_dropout(net)  # the masked-dropout loss cell is part of the composition
    if amp_level != "O0":  # converted in place as on GPU/Ascend, with float32 casts
        around_batchnorm = [cell for _, cell in net.cells_and_names()
                            if type(cell).__name__ == "_OutputTo16"]
        assert around_batchnorm and all(c.dtype == ms.float32 for c in around_batchnorm)
    masks = trainer.DropoutMasks(config.seed, 0)
    rng = np.random.default_rng(SEED)
    for i in range(steps):
        image = ms.Tensor(rng.standard_normal((BATCH, 3, 32, 32)).astype(np.float32))
        label = ms.Tensor(rng.integers(0, 10, BATCH).astype(np.int32))
        out = step(image, label, *masks(i, BATCH))
        if scale_type == "dynamic":
            loss, overflow, sens = out
            assert not bool(overflow.asnumpy()) and float(sens.asnumpy()) == 1024.0
        else:
            loss = out
        assert np.isfinite(float(loss.asnumpy()))
    optimizer = step.optimizer
    params = {p.name: p.asnumpy().copy() for p in optimizer.parameters}
    moments = {m.name: m.asnumpy().copy() for m in optimizer.moments}
    assert int(optimizer.global_step.asnumpy()[0]) == steps
    return params, moments


_REFERENCE = {}


def _reference(path):
    if path not in _REFERENCE:
        _REFERENCE[path] = _train(path, "O0", "fixed-1")
    return _REFERENCE[path]


@pytest.mark.parametrize("path,amp_level,scale", CASES,
                         ids=[f"{p}-{a}-{s}" for p, a, s in CASES])
def test_loss_scale_leaves_parameters_and_momenta_unchanged(path, amp_level, scale):
    if path == "FusedMomentum":
        from src.native import library_status

        built, why = library_status()
        if not built:
            pytest.skip(f"native library not built ({why}); python -m src.native.build")
    ref_params, ref_moments = _reference(path)
    params, moments = _train(path, amp_level, scale)
    assert params.keys() == ref_params.keys() and moments.keys() == ref_moments.keys()
    for kind, got, want in (("parameter", params, ref_params),
                            ("momentum", moments, ref_moments)):
        for name in want:
            np.testing.assert_allclose(
                got[name], want[name], rtol=RTOL, atol=ATOL,
                err_msg=f"{path} {amp_level} {scale}: {kind} {name} differs from the "
                        "fixed-1 run")


def _optimizer_only(path):
    """(parameters, moments) after STEPS updates of one optimizer path with the same random
    gradients (one seed) and no network in between: the update arithmetic alone."""
    import mindspore as ms

    from src import trainer, vgg

    ms.set_seed(SEED)
    net = vgg.vgg11_bn(num_classes=10, image_size=(32, 32), dropout=True)
    device_target, make_optimizer = _builder(path)
    optimizer = (make_optimizer or trainer.build_optimizer)(
        net, _config("fixed-1"), np.full(STEPS, LR, np.float32), 1.0, device_target)
    assert type(optimizer).__name__ == path
    rng = np.random.default_rng(SEED)
    for _ in range(STEPS):
        optimizer(tuple(ms.Tensor((0.05 * rng.standard_normal(p.shape)).astype(np.float32))
                        for p in optimizer.parameters))
    return ({p.name: p.asnumpy().copy() for p in optimizer.parameters},
            {m.name: m.asnumpy().copy() for m in optimizer.moments})


def test_the_paths_agree_at_loss_scale_1():
    """The references themselves coincide, so every case above is also checked against
    MindSpore's own nn.Momentum.

    In one whole training step (zero moments) the paths differ only in the last bit
    (nn.Momentum's AddN, one fused add and the native kernel round differently). Over more
    steps the network amplifies such a bit chaotically: with batch 8 of random images, a
    ReLU or max-pool tie that flips sends a gradient elsewhere (seen on an AVX2-only CPU: 1e-7
    after one step, 2 % after two). So the multi-step comparison feeds the same gradients
    to every optimizer directly, where only the arithmetic differs (a few ulps)."""
    from src.native import library_status

    paths = ["DecayedMomentum"] + (["FusedMomentum"] if library_status()[0] else [])
    want_params, _ = _train("Momentum", "O0", "fixed-1", steps=1)
    for path in paths:
        params, _ = _train(path, "O0", "fixed-1", steps=1)
        for name, want in want_params.items():
            np.testing.assert_allclose(params[name], want, rtol=1e-5, atol=1e-8,
                                       err_msg=f"{path} (one training step): {name}")

    want_params, want_moments = _optimizer_only("Momentum")
    for path in paths:
        params, moments = _optimizer_only(path)
        for kind, got, want in (("parameter", params, want_params),
                                ("momentum", moments, want_moments)):
            for name in want:
                np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-7,
                                           err_msg=f"{path}: {kind} {name}")
