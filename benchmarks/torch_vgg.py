"""PyTorch eager VGG with this repository's architecture, the peer of the benchmark.

Same layout and parameter names as torchvision's ``vgg*_bn`` (``features.N``,
``classifier.0/3/6``), but with this repository's head: no adaptive average pooling, so the
first dense layer takes ``512 * (H / 32) * (W / 32)`` inputs (512 at 32x32, 25088 at
224x224, where it matches torchvision). Convolutions carry no bias by default, as in
``cifar10_config.yaml`` (``has_bias: False``); BatchNorm uses eps 1e-5 and running-average
momentum 0.1 (MindSpore's momentum 0.9). The optimiser mirrors ``src/trainer.py``: momentum
SGD with weight decay on convolution and dense weights only (not BatchNorm, not biases).
On a GPU the train step can run in mixed precision the usual PyTorch way (``torch.autocast``
to float16 with a ``torch.amp.GradScaler``); on a CPU in bfloat16 the usual way too
(``torch.autocast("cpu", dtype=torch.bfloat16)``, no scaler: bfloat16 has float32's range).

Only ``torch`` is needed (torchvision is not, nor MindSpore): the layer table is read from
``src/vgg.py``'s source (benchmarks/vgg_table.py), not imported.
"""
import contextlib

import torch
from torch import nn
from vgg_table import vgg_constants

# src/vgg.py's table and sizes, read as data (importing it would import MindSpore)
LAYER_TABLE = vgg_constants()["LAYER_TABLE"]
FEATURE_STRIDE = vgg_constants()["FEATURE_STRIDE"]
HIDDEN = vgg_constants()["HIDDEN"]


def make_layers(layer_cfg, batch_norm=True, has_bias=False):
    layers, in_channels = [], 3
    for item in layer_cfg:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(in_channels, item, kernel_size=3, padding=1, bias=has_bias))
        if batch_norm:
            layers.append(nn.BatchNorm2d(item, eps=1e-5, momentum=0.1))
        layers.append(nn.ReLU(inplace=True))
        in_channels = item
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """features -> flatten -> Linear/ReLU/Dropout x2 -> Linear (no average pooling)."""

    def __init__(self, arch="vgg16", num_classes=10, batch_norm=True, image_size=(32, 32),
                 dropout=True, has_bias=False):
        super().__init__()
        height, width = image_size
        if height % FEATURE_STRIDE or width % FEATURE_STRIDE:
            raise ValueError(f"image_size must be multiples of {FEATURE_STRIDE}, got {image_size}")
        self.features = make_layers(LAYER_TABLE[arch], batch_norm, has_bias)
        flat = 512 * (height // FEATURE_STRIDE) * (width // FEATURE_STRIDE)
        self.classifier = nn.Sequential(
            nn.Linear(flat, HIDDEN), nn.ReLU(inplace=True),
            nn.Dropout(0.5) if dropout else nn.Identity(),
            nn.Linear(HIDDEN, HIDDEN), nn.ReLU(inplace=True),
            nn.Dropout(0.5) if dropout else nn.Identity(),
            nn.Linear(HIDDEN, num_classes),
        )
        for module in self.modules():  # XavierUniform, as initialize_mode in the config
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def vgg16_bn(num_classes=10, image_size=(32, 32), dropout=True, has_bias=False):
    return VGG("vgg16", num_classes, True, tuple(image_size), dropout, has_bias)


def make_optimizer(net, lr=0.01, momentum=0.9, weight_decay=5e-4):
    """Momentum SGD; weight decay on weights of rank > 1 only, as src/trainer.py does."""
    decayed = [p for p in net.parameters() if p.requires_grad and p.dim() > 1]
    plain = [p for p in net.parameters() if p.requires_grad and p.dim() <= 1]
    return torch.optim.SGD([{"params": decayed, "weight_decay": weight_decay},
                            {"params": plain, "weight_decay": 0.0}],
                           lr=lr, momentum=momentum)


def bf16_autocast(device_type, enabled):
    """torch.autocast to bfloat16 on `device_type` when enabled, else a context that does
    nothing (the float32 path stays exactly as without it)."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


def make_train_step(net, optimizer, device=None, amp=False, label_smoothing=0.0, bf16=False):
    """A function (images, labels) -> loss value doing one forward/backward/update.

    With `device` the batch is copied there first (non-blocking from pinned memory), as a
    training loop feeds host batches; with `amp` the forward runs under float16 autocast and
    the loss is scaled by a dynamic GradScaler; with `bf16` the forward and the loss run under
    bfloat16 autocast (no scaler)."""
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    if amp:
        return _amp_train_step(net, optimizer, loss_fn, torch.device(device or "cuda"))
    device_type = torch.device(device or "cpu").type

    def step(images, labels):
        if device is not None:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with bf16_autocast(device_type, bf16):
            loss = loss_fn(net(images), labels)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def _amp_train_step(net, optimizer, loss_fn, device):
    scaler = torch.amp.GradScaler(device.type)

    def step(images, labels):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16):
            loss = loss_fn(net(images), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return float(loss.detach())

    return step


def make_forward(net, device=None, amp=False, bf16=False):
    """A function images -> logits (float32, on the host) for inference: no_grad, the batch
    copied to `device`, float16 autocast with `amp`, bfloat16 autocast with `bf16`."""
    device = torch.device(device or "cpu")
    dtype = torch.bfloat16 if bf16 else torch.float16

    def forward(images):
        with torch.no_grad(), torch.autocast(device_type=device.type, dtype=dtype,
                                             enabled=amp or bf16):
            logits = net(images.to(device, non_blocking=True))
        return logits.float().cpu()

    return forward
