"""The VGG layer table and sizes of src/vgg.py, read from its source as plain data.

src/vgg.py is the one place they are written, but importing it imports MindSpore, which the
PyTorch peer (benchmarks/torch_vgg.py) must not: the GPU machine has no MindSpore, and the
PyTorch workers' memory and oneDNN settings are measured without it.
"""
import ast
import functools
import os

VGG_SOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "src", "vgg.py")


@functools.cache
def vgg_constants(path=VGG_SOURCE):
    """{name: value} of the module-level literal assignments of src/vgg.py (LAYER_TABLE,
    FEATURE_STRIDE, HIDDEN, ...)."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), path)
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name):
            try:
                constants[node.targets[0].id] = ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError):
                pass  # not a literal (a builder, a derived tuple): not data
    missing = {"LAYER_TABLE", "FEATURE_STRIDE", "HIDDEN"} - set(constants)
    if missing:
        raise ValueError(f"{path}: no literal {', '.join(sorted(missing))} found")
    return constants


def layer_table():
    """{"vgg11": [64, "M", ...], ...}: output channels of each 3x3 convolution, "M" a max-pool."""
    return vgg_constants()["LAYER_TABLE"]
