"""sync_bn: refused in one line on CPU and without BatchNorm; on GPU/Ascend every BatchNorm
of the features becomes an nn.SyncBatchNorm with the same names, settings and values (built
here with process_groups=0, MindSpore's form without communication, so it runs on CPU)."""
import logging

import numpy as np
import pytest

from src.errors import UserError
from src.runtime import Runtime
from src.sync_bn import apply_sync_bn, convert_to_sync_batchnorm
from tests.helpers import QUICK_CONFIG, quick_config, run_python


@pytest.mark.e2e
def test_cpu_training_refuses_sync_bn_in_one_line(learnable_cifar, tmp_path):
    data = learnable_cifar(n_train=32, n_eval=16)
    result = run_python("train.py", f"--config_path={QUICK_CONFIG}", "--arch=vgg11",
                        f"--data_dir={data}", f"--ckpt_path={tmp_path}/run", "--sync_bn=True",
                        "--batch_size=16", timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: sync_bn: MindSpore has no SyncBatchNorm on CPU (GPU and Ascend only); set "
        "--sync_bn=False"]


def test_sync_bn_without_batchnorm_is_refused_and_one_device_keeps_batchnorm(caplog):
    from mindspore import nn

    from src import vgg

    config = quick_config("--sync_bn=True", "--batch_norm=False")
    with pytest.raises(UserError, match=r"^sync_bn: the network has no BatchNorm"):
        apply_sync_bn(vgg.vgg11(num_classes=10, image_size=(32, 32)), config,
                      Runtime("GPU", 0, 0, 2), logging.getLogger("vgg"))
    net = vgg.vgg11_bn(num_classes=10, image_size=(32, 32))
    with caplog.at_level(logging.INFO, logger="vgg"):
        apply_sync_bn(net, config.replace(batch_norm=True), Runtime("GPU", 0, 0, 1),
                      logging.getLogger("vgg"))
    assert "one device" in caplog.text
    assert not any(isinstance(c, nn.SyncBatchNorm) for c in net.features)


def test_conversion_keeps_names_settings_and_values():
    import mindspore as ms
    from mindspore import nn

    from src import vgg

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    ms.set_seed(1)
    net = vgg.vgg11_bn(num_classes=10, image_size=(32, 32), dropout=False)
    rng = np.random.default_rng(0)
    for param in net.get_parameters():  # BatchNorm statistics away from their defaults
        if "moving" in param.name or "gamma" in param.name or "beta" in param.name:
            param.set_data(ms.Tensor(rng.uniform(0.5, 1.5, param.shape).astype(np.float32)))
    before = {p.name: p.asnumpy().copy() for p in net.get_parameters()}
    image = ms.Tensor(rng.standard_normal((2, 3, 32, 32)).astype(np.float32))
    net.set_train(False)
    expected = net(image).asnumpy()
    momentum = next(c for c in net.features if isinstance(c, nn.BatchNorm2d)).momentum
    assert convert_to_sync_batchnorm(net, process_groups=0) == 8
    synced = [c for c in net.features if isinstance(c, nn.SyncBatchNorm)]
    assert len(synced) == 8 and all(c.momentum == momentum for c in synced)
    after = {p.name: p.asnumpy() for p in net.get_parameters()}
    assert after.keys() == before.keys()
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value, err_msg=name)
    np.testing.assert_allclose(net(image).asnumpy(), expected, rtol=1e-5, atol=1e-6)
