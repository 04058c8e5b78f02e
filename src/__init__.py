"""VGG for MindSpore: networks, data, training and inference helpers."""
