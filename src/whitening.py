"""Patch-whitening stem: the first convolution's filters set from the statistics of the
training images and kept fixed, so that the layers above start from decorrelated inputs.

The filters are the eigenvectors of the covariance of the k x k input patches (k the
convolution's kernel, C x k x k values per patch), each divided by the square root of its
eigenvalue (plus eps) and used with both signs (so that a ReLU after the convolution keeps
both halves), the largest eigenvalues first. A first convolution with more output channels
than 2 x C x k x k keeps its initial values in the rest; one with fewer keeps the leading
eigenvectors. A BatchNorm after the convolution rescales each channel, so what the stem gives
is decorrelated channels ordered by variance.
"""
import numpy as np

CHUNK_IMAGES = 256  # images per step of the covariance sum (bounds the patch matrix)


def patch_covariance(images, kernel):
    """(mean, covariance) of every kernel x kernel patch (no padding) of float images
    (N, C, H, W), each patch flattened in (C, kh, kw) order, as a conv weight is."""
    count, channels = images.shape[:2]
    size = channels * kernel * kernel
    total, outer, patches = np.zeros(size), np.zeros((size, size)), 0
    for start in range(0, count, CHUNK_IMAGES):
        chunk = np.asarray(images[start:start + CHUNK_IMAGES], np.float64)
        windows = np.lib.stride_tricks.sliding_window_view(chunk, (kernel, kernel), axis=(2, 3))
        rows = windows.transpose(0, 2, 3, 1, 4, 5).reshape(-1, size)  # (N*oh*ow, C*k*k)
        total += rows.sum(axis=0)
        outer += rows.T @ rows
        patches += len(rows)
    mean = total / patches
    return mean, outer / patches - np.outer(mean, mean)


def whitening_filters(images, kernel=3, out_channels=None, eps=5e-4):
    """Conv weights (F, C, kernel, kernel), float32: eigenvector / sqrt(eigenvalue + eps) in
    pairs (+v, -v) from the largest eigenvalue down; F = 2 x C x kernel x kernel, or
    out_channels when that is smaller."""
    channels = images.shape[1]
    _, covariance = patch_covariance(images, kernel)
    values, vectors = np.linalg.eigh(covariance)  # ascending
    order = np.argsort(values)[::-1]
    scaled = vectors[:, order] / np.sqrt(np.maximum(values[order], 0) + eps)
    filters = np.stack([scaled.T, -scaled.T], axis=1).reshape(-1, channels, kernel, kernel)
    if out_channels is not None:
        filters = filters[:out_channels]
    return filters.astype(np.float32)


def first_convolution(net):
    """The network's first convolution cell (features.0 in the VGG layout)."""
    return net.features[0]


def apply_patch_whitening(net, images):
    """Sets the first convolution's leading filters from `images` (N, C, H, W, normalised as
    the network sees them) and freezes its weight. Returns the number of filters set."""
    import mindspore as ms

    conv = first_convolution(net)
    weight = conv.weight
    out_channels, _, kernel, _ = weight.shape
    filters = whitening_filters(images, kernel, out_channels)
    values = weight.asnumpy().copy()
    values[:len(filters)] = filters
    weight.set_data(ms.Tensor(values, weight.dtype))
    weight.requires_grad = False
    return len(filters)
