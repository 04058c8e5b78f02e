"""torchvision weights: the converted network computes what torchvision's does, the ImageNet
evaluation transform gives torchvision's tensor, and bad .pth files are refused in one line.

The torchvision-layout VGG is rebuilt here from torch.nn modules (torchvision itself is not
installed), with random weights and random BatchNorm running statistics, so no download.
"""
import mindspore as ms
import numpy as np
import pytest

import convert_torchvision
import mindspore_hub_conf
from src import checkpoint as ckpt
from src import vgg
from src.cli import run_entry
from src.dataset import IMAGENET_MEAN, IMAGENET_STD
from src.errors import UserError
from src.torchvision_weights import load_torchvision_weights
from tests.helpers import RunsCode

torch = pytest.importorskip("torch")

ms.set_context(mode=ms.PYNATIVE_MODE)
ms.set_device("CPU")

LOGIT_TOLERANCE = 1e-4  # the bound; measured about 1e-5 at 224x224
# Both sides decode with Pillow, so the tensors differ only by float rounding: measured
# <= 7.2e-7 with a Pillow (antialiased) bilinear resize. A decoder change (libjpeg versions)
# would move pixels by a grey level, 1/255/0.225 = 0.017 after normalising.
TRANSFORM_TOLERANCE = 1e-4


# ---------------------------------------------------------------- torchvision-layout VGG

def build_torchvision_vgg(name, num_classes=1000):
    """torchvision's VGG layout: the same module indices, hence the same state dict names."""
    from torch import nn

    class TorchvisionVGG(nn.Module):
        def __init__(self):
            super().__init__()
            arch, batch_norm = (name[:-3], True) if name.endswith("_bn") else (name, False)
            layers, in_channels = [], 3
            for item in vgg.LAYER_TABLE[arch]:
                if item == "M":
                    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                    continue
                layers.append(nn.Conv2d(in_channels, item, kernel_size=3, padding=1))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(item))
                layers.append(nn.ReLU(inplace=True))
                in_channels = item
            self.features = nn.Sequential(*layers)
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(),
                nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(),
                nn.Linear(4096, num_classes))

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    return TorchvisionVGG()


def torchvision_vgg(name, seed=0):
    """build_torchvision_vgg with random weights and BatchNorm statistics, in eval mode."""
    from torch import nn

    with torch.device("meta"):  # every tensor is filled below: skip torch's own init
        model = build_torchvision_vgg(name)
    model = model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):  # He normal keeps activations O(1) through depth
                fan_in = module.in_channels * 9
                module.weight.normal_(0, (2 / fan_in) ** 0.5, generator=generator)
                module.bias.normal_(0, 0.05, generator=generator)
            elif isinstance(module, nn.BatchNorm2d):
                size = module.num_features
                module.weight.copy_(0.5 + torch.rand(size, generator=generator))
                module.bias.normal_(0, 0.1, generator=generator)
                module.running_mean.normal_(0, 0.2, generator=generator)
                module.running_var.copy_(0.5 + 1.5 * torch.rand(size, generator=generator))
                module.num_batches_tracked.fill_(1234)
            elif isinstance(module, nn.Linear):
                module.weight.normal_(0, (2 / module.in_features) ** 0.5, generator=generator)
                module.bias.normal_(0, 0.05, generator=generator)
    return model.eval()


def state_dict_arrays(model):
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def mindspore_vgg(name, weights, **kwargs):
    """This repository's network holding `weights` ({name: array}), in eval mode."""
    from mindspore.nn.utils import no_init_parameters

    with no_init_parameters():  # all of them are loaded next; initialising 138M takes seconds
        net = mindspore_hub_conf.create_network(name, **kwargs)
    ckpt.load_weights(net, {k: ms.Parameter(v, name=k) for k, v in weights.items()}, "weights")
    net.set_train(False)
    return net


# ---------------------------------------------------------------- proven equal

@pytest.mark.parametrize("name, through_files", [("vgg16_bn", True), ("vgg16", False)])
def test_converted_logits_match_torchvision_at_224_and_features_at_32(name, through_files,
                                                                      tmp_path, capsys):
    model = torchvision_vgg(name)
    if through_files:  # .pth -> convert_torchvision.py -> .ckpt, as a user runs it
        pth, output = str(tmp_path / "w.pth"), str(tmp_path / "converted")
        torch.save(model.state_dict(), pth)
        convert_torchvision.main([f"--pth={pth}", f"--arch={name}", "--num_classes=1000",
                                  f"--output={output}"])
        assert f"({name}, 1000 classes)" in capsys.readouterr().out
        entries = ckpt.read_checkpoint(output + ".ckpt")
        assert ckpt.checkpoint_meta(entries)["arch"] == name
        weights = {k: v.asnumpy() for k, v in entries.items() if not k.startswith("meta.")}
    else:
        weights = load_torchvision_weights(state_dict_arrays(model), name)

    images = np.random.default_rng(1).normal(size=(2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    got = mindspore_vgg(name, weights)(ms.Tensor(images)).asnumpy()
    assert expected.std() > 0.5  # logits big enough for the bound to mean something
    np.testing.assert_allclose(got, expected, rtol=0, atol=LOGIT_TOLERANCE)
    assert (got.argmax(1) == expected.argmax(1)).all()

    # At 32x32 torchvision's adaptive pool upsamples 1x1 to 7x7, so only the features agree.
    small = images[:, :, :32, :32].copy()
    with torch.no_grad():
        expected = torch.flatten(model.features(torch.from_numpy(small)), 1).numpy()
    features = {k: v for k, v in weights.items() if k.startswith("features.")}
    got = mindspore_vgg(name, features, image_size=(32, 32), include_top=False)(ms.Tensor(small))
    np.testing.assert_allclose(got.asnumpy(), expected, rtol=0, atol=LOGIT_TOLERANCE)


@pytest.mark.parametrize("name", vgg.MODEL_NAMES)
def test_mapping_names_and_shapes_fit_every_variant(name):
    """Every converted feature tensor lands on a network parameter of the same shape."""
    state = {k: np.zeros(shape, np.float32) for k, shape in torch_shapes(name).items()}
    converted = load_torchvision_weights(state, name)
    from mindspore.nn.utils import no_init_parameters

    with no_init_parameters():
        net = mindspore_hub_conf.create_network(name, image_size=(32, 32), include_top=False)
    params = {p.name: tuple(p.shape) for p in net.get_parameters()}
    features = {k: v.shape for k, v in converted.items() if k.startswith("features.")}
    assert features == params
    assert converted["classifier.0.weight"].shape == (4096, 25088)
    assert not any("num_batches_tracked" in k or "running" in k for k in converted)


def torch_shapes(name):
    """Shapes of torchvision's state dict, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = build_torchvision_vgg(name)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_batchnorm_statistics_carry_over_under_mindspore_names():
    model = torchvision_vgg("vgg11_bn")
    state = state_dict_arrays(model)
    converted = load_torchvision_weights(state, "vgg11_bn")
    for torch_name, ms_name in [("weight", "gamma"), ("bias", "beta"),
                                ("running_mean", "moving_mean"),
                                ("running_var", "moving_variance")]:
        np.testing.assert_array_equal(converted[f"features.1.{ms_name}"],
                                      state[f"features.1.{torch_name}"])
    np.testing.assert_array_equal(converted["features.0.weight"], state["features.0.weight"])
    np.testing.assert_array_equal(converted["classifier.6.bias"], state["classifier.6.bias"])
    assert len(converted) == len(state) - 8  # one num_batches_tracked per BatchNorm


# ---------------------------------------------------------------- evaluation transform

def torchvision_eval_transform(image):
    """torchvision's standard ImageNet evaluation transform, spelled out with PIL and torch:
    Resize(256) (bilinear, short side), CenterCrop(224), ToTensor, Normalize."""
    from PIL import Image

    width, height = image.size
    if width <= height:
        size = (256, int(256 * height / width))
    else:
        size = (int(256 * width / height), 256)
    image = image.resize(size, Image.BILINEAR)
    top = int(round((size[1] - 224) / 2.0))
    left = int(round((size[0] - 224) / 2.0))
    image = image.crop((left, top, left + 224, top + 224))
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((tensor - mean) / std).numpy()


def write_jpeg(path, width, height, seed):
    """A smooth pattern with noise: resize filters that differ show up in it."""
    from PIL import Image

    rows, cols = np.mgrid[0:height, 0:width]
    pattern = np.stack([np.sin(cols / (9 + 4 * c)) * np.cos(rows / (13 + 3 * c))
                        for c in range(3)], -1)
    noise = np.random.default_rng(seed).normal(0, 10, (height, width, 3))
    pixels = np.clip(128 + 100 * pattern + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, "JPEG", quality=90)


def test_imagenet_eval_transform_matches_torchvision(tmp_path):
    from PIL import Image

    from src.dataset import create_dataset
    from src.infer_runner import imagenet_loader

    folder = tmp_path / "validation_preprocess" / "only_class"
    folder.mkdir(parents=True)
    sizes = [(500, 375), (300, 400), (640, 480)]
    paths = [str(folder / f"img{i}.jpg") for i in range(len(sizes))]
    for i, (path, (width, height)) in enumerate(zip(paths, sizes)):
        write_jpeg(path, width, height, seed=i)
    expected = []
    for path in paths:
        with Image.open(path) as image:
            expected.append(torchvision_eval_transform(image.convert("RGB")))

    data = create_dataset("imagenet2012", str(tmp_path), batch_size=len(paths), training=False,
                          image_size=(224, 224), num_classes=1, num_parallel_workers=1)
    (batch, _), = list(data.create_tuple_iterator(output_numpy=True))
    diff = np.abs(batch - np.stack(expected)).max()
    assert diff <= TRANSFORM_TOLERANCE, (
        f"src/dataset.py eval pipeline differs from torchvision's eval transform by {diff:.4f} "
        "(its resize is not Pillow's antialiased bilinear)")
    load = imagenet_loader((1, 3, 224, 224))  # predict.py and the inference runner
    for path, want in zip(paths, expected):
        np.testing.assert_allclose(load(path)[0], want, rtol=0, atol=TRANSFORM_TOLERANCE)


# ---------------------------------------------------------------- refusals

def run_converter(argv, capsys):
    """convert_torchvision.py as the shell runs it: (exit code, stderr lines)."""
    with pytest.raises(SystemExit) as exit_info:
        run_entry(lambda: convert_torchvision.main(argv), argv)
    return exit_info.value.code, capsys.readouterr().err.strip().splitlines()


def tiny_state(name, num_classes=1000):
    """The names of a torchvision state dict with 1-sized tensors of the right rank: enough for
    the variant checks, which run before any shape is compared."""
    state = {k: torch.zeros((1,) * len(shape)) for k, shape in torch_shapes(name).items()}
    state["classifier.6.weight"] = torch.zeros(num_classes, 1)
    return state


def test_wrong_arch_is_one_line_naming_the_right_one(tmp_path, capsys):
    pth = str(tmp_path / "vgg11.pth")
    torch.save(tiny_state("vgg11"), pth)
    code, lines = run_converter([f"--pth={pth}", "--arch=vgg16_bn",
                                 f"--output={tmp_path / 'out.ckpt'}"], capsys)
    assert code == 1 and len(lines) == 1
    assert "holds vgg11 weights, not --arch=vgg16_bn" in lines[0]
    assert not (tmp_path / "out.ckpt").exists()


@pytest.mark.parametrize("content, message", [
    ([1, 2, 3], "holds a list, not a state dict"),
    ({"fc.weight": torch.zeros(3, 4)}, "not a torchvision or timm VGG state dict"),
    ({"features.0.weight": torch.zeros(64, 3, 3, 3), "classifier.6.weight": torch.zeros(10, 4096)},
     "1 convolutions"),
])
def test_not_a_vgg_state_dict_is_one_line(tmp_path, capsys, content, message):
    pth = str(tmp_path / "bad.pth")
    torch.save(content, pth)
    code, lines = run_converter([f"--pth={pth}", f"--output={tmp_path / 'out.ckpt'}"], capsys)
    assert code == 1 and len(lines) == 1 and message in lines[0]


def test_misshapen_and_extra_tensors_are_named():
    state = {k: np.zeros(shape, np.float32) for k, shape in torch_shapes("vgg11").items()}
    bad_shape = dict(state, **{"features.3.weight": np.zeros((128, 64, 5, 5), np.float32)})
    with pytest.raises(UserError, match=r"features\.3\.weight has shape \(128, 64, 5, 5\)"):
        load_torchvision_weights(bad_shape, "vgg11")
    extra = dict(state, **{"classifier.9.weight": np.zeros(3, np.float32)})
    with pytest.raises(UserError, match=r"unexpected classifier\.9\.weight"):
        load_torchvision_weights(extra, "vgg11")
    del state["features.0.bias"]
    with pytest.raises(UserError, match=r"missing features\.0\.bias"):
        load_torchvision_weights(state, "vgg11")


def test_pickle_that_would_run_code_is_refused(tmp_path, capsys):
    marker = tmp_path / "MARKER"
    pth = str(tmp_path / "evil.pth")
    torch.save({"features.0.weight": RunsCode(marker)}, pth)
    code, lines = run_converter([f"--pth={pth}", f"--output={tmp_path / 'out.ckpt'}"], capsys)
    assert code == 1 and len(lines) == 1
    assert "refused by torch.load(weights_only=True)" in lines[0]
    assert not marker.exists()
    assert not (tmp_path / "out.ckpt").exists()


def test_not_a_torch_file_is_one_line(tmp_path, capsys):
    pth = tmp_path / "text.pth"
    pth.write_text("not a checkpoint\n")
    code, lines = run_converter([f"--pth={pth}", f"--output={tmp_path / 'out.ckpt'}"], capsys)
    assert code == 1 and len(lines) == 1 and "refused by torch.load" in lines[0]


def test_wrapped_state_dict_and_class_count_check(tmp_path, capsys):
    """{'state_dict': ...} as training scripts save it is unwrapped; --num_classes is checked."""
    pth = str(tmp_path / "wrapped.pth")
    torch.save({"state_dict": tiny_state("vgg13_bn", num_classes=10)}, pth)
    code, lines = run_converter([f"--pth={pth}", "--arch=vgg13_bn", "--num_classes=1000",
                                 f"--output={tmp_path / 'x.ckpt'}"], capsys)
    assert code == 1 and len(lines) == 1
    assert "10-class classifier, not --num_classes=1000" in lines[0]
    assert not (tmp_path / "x.ckpt").exists()


# ---------------------------------------------------------------- timm layout, .safetensors

def timm_layout(model):
    """The state dict a timm VGG of the same weights holds: the first two classifier layers as
    7x7 and 1x1 convolutions (`pre_logits.fc1/fc2`), the last as `head.fc`."""
    state = dict(model.state_dict())
    fc1, fc2 = state.pop("classifier.0.weight"), state.pop("classifier.3.weight")
    state["pre_logits.fc1.weight"] = fc1.reshape(fc1.shape[0], 512, 7, 7)
    state["pre_logits.fc2.weight"] = fc2.reshape(*fc2.shape, 1, 1)
    for old, new in (("classifier.0", "pre_logits.fc1"), ("classifier.3", "pre_logits.fc2"),
                     ("classifier.6", "head.fc")):
        for kind in ("weight", "bias"):
            if f"{old}.{kind}" in state:
                state[f"{new}.{kind}"] = state.pop(f"{old}.{kind}")
    return state


def test_timm_safetensors_convert_to_the_torchvision_checkpoint(tmp_path, capsys):
    """A timm-layout .safetensors of the same weights gives exactly the checkpoint of the
    torchvision .pth, and timm's 7x7 convolution head computes what the dense layer does."""
    from safetensors.torch import save_file

    model = torchvision_vgg("vgg11_bn", seed=3)
    timm_state = timm_layout(model)
    features = torch.randn(2, 512, 7, 7)
    with torch.no_grad():
        as_conv = torch.nn.functional.conv2d(features, timm_state["pre_logits.fc1.weight"],
                                             timm_state["pre_logits.fc1.bias"]).flatten(1)
        np.testing.assert_allclose(as_conv.numpy(), model.classifier[0](features.flatten(1)),
                                   rtol=0, atol=1e-4)
    pth, safetensors = str(tmp_path / "tv.pth"), str(tmp_path / "timm.safetensors")
    torch.save(model.state_dict(), pth)
    save_file({k: v.contiguous() for k, v in timm_state.items()}, safetensors)
    del model, timm_state
    convert_torchvision.main([f"--pth={pth}", f"--output={tmp_path / 'tv.ckpt'}"])
    convert_torchvision.main([f"--weights={safetensors}", "--arch=vgg11_bn",
                              f"--output={tmp_path / 'timm.ckpt'}"])
    assert "timm.safetensors (vgg11_bn, 1000 classes)" in capsys.readouterr().out
    want = {k: v.asnumpy() for k, v in ckpt.read_checkpoint(str(tmp_path / "tv.ckpt")).items()
            if not k.startswith("meta.")}
    got = {k: v.asnumpy() for k, v in ckpt.read_checkpoint(str(tmp_path / "timm.ckpt")).items()
           if not k.startswith("meta.")}
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_safetensors_without_vgg_names_is_one_line(tmp_path, capsys):
    from safetensors.torch import save_file

    path = str(tmp_path / "other.safetensors")
    save_file({"encoder.weight": torch.zeros(2, 2)}, path)
    code, lines = run_converter([f"--weights={path}", f"--output={tmp_path / 'x.ckpt'}"], capsys)
    assert code == 1 and len(lines) == 1
    assert "not a torchvision or timm VGG state dict" in lines[0] and "encoder.weight" in lines[0]


def test_safetensors_named_like_a_torch_file_is_read_without_torch_load(tmp_path, capsys):
    """Read by content: the variant check speaks, not torch.load's refusal."""
    from safetensors.torch import save_file

    path = str(tmp_path / "pytorch_model.bin")
    save_file({k: v.contiguous() for k, v in tiny_state("vgg11").items()}, path)
    code, lines = run_converter([f"--weights={path}", "--arch=vgg13",
                                 f"--output={tmp_path / 'x.ckpt'}"], capsys)
    assert code == 1 and len(lines) == 1 and "holds vgg11 weights, not --arch=vgg13" in lines[0]
