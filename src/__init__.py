"""VGG for MindSpore: networks, data, training and inference helpers."""
import os

# oneDNN picks a reference (about 60x slower) NCHW convolution when AVX-512 is allowed on
# this stack; capping the ISA at AVX2 selects its im2col+GEMM kernel instead. It must be set
# before MindSpore first runs oneDNN, and a user's own choice is respected.
ISA_CHOSEN_BY_USER = "ONEDNN_MAX_CPU_ISA" in os.environ
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
