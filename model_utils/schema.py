"""Every config key the programs understand, in one table: type, help text, allowed values and
range. model_utils/config.py validates against it; the help and choices parts of the repository
YAMLs are generated from it (`python -m model_utils.sync_yaml`)."""
from collections.abc import Callable
from dataclasses import dataclass


# Range rules: each takes a typed value and says what is wrong with it, or returns None.
def at_least_1(value):
    return None if value >= 1 else "it must be at least 1"


def not_negative(value):
    return None if value >= 0 else "it must not be negative"


def positive(value):
    return None if value > 0 else "it must be > 0"


def fraction(value):
    return None if 0 <= value < 1 else "it must be in [0, 1)"


def unit_interval(value):
    return None if 0 < value <= 1 else "it must be in (0, 1]"


def probability(value):
    return None if 0 <= value <= 1 else "it must be in [0, 1]"


def smoothing_factor(value):
    return not_negative(value) or (None if value < 1 else "it must be < 1")


def vgg_image_size(size):
    fits = len(size) == 2 and all(s >= 32 and s % 32 == 0 for s in size)
    return None if fits else ("VGG needs two values, each a multiple of 32 "
                              "(e.g. 32,32 or 224,224)")


def increasing(values):
    return None if list(values) == sorted(values) else "it must be in increasing order"


@dataclass(frozen=True)
class Key:
    """One config key. `item` is the element type of a list key; `old_names` are names the
    key had before, still accepted (YAML, saved configs, command line) and read as `name`."""
    name: str
    type: type
    help: str
    choices: tuple = ()
    check: Callable | None = None
    item: type = str
    old_names: tuple = ()


KEYS = (
    # ModelArts
    Key("enable_modelarts", bool,
        "Run as a ModelArts job: copy data_url in and outputs to train_url (needs moxing)"),
    Key("data_url", str, "ModelArts: OBS path of the dataset"),
    Key("train_url", str, "ModelArts: OBS path that receives the outputs"),
    Key("checkpoint_url", str, "ModelArts: OBS path of a checkpoint to copy to load_path"),
    Key("data_path", str, "ModelArts: local folder the dataset is copied to"),
    Key("output_path", str, "ModelArts: local folder whose content is copied to train_url"),
    Key("load_path", str, "ModelArts: local folder the checkpoint_url content is copied to"),
    Key("need_modelarts_dataset_unzip", bool,
        "ModelArts: unzip <modelarts_dataset_unzip_name>.zip in data_path once per node"),
    Key("modelarts_dataset_unzip_name", str,
        "ModelArts: name (without .zip) of the dataset archive"),

    # device and runtime
    Key("device_target", str, "Device to run on", choices=("Ascend", "GPU", "CPU")),
    Key("device_id", int, "Device index on this machine (ignored when a launcher assigns one)",
        check=not_negative),
    Key("context_mode", str, "graph (compiled, fast) or pynative (eager, for debugging)",
        choices=("graph", "pynative")),
    Key("enable_profiling", bool,
        "Profile 10 training steps (after the compiling step and one warm-up step) with "
        "MindSpore's profiler into <run folder>/profile"),
    Key("seed", int, "Random seed for weights, data order and augmentation"),
    Key("debug", bool,
        "Print full Python tracebacks instead of one-line errors (also --debug=True or "
        "VGG_DEBUG=1)"),

    # network
    Key("arch", str, "VGG depth", choices=("vgg11", "vgg13", "vgg16", "vgg19")),
    Key("num_classes", int, "Number of classes of the classifier", check=at_least_1),
    Key("batch_norm", bool, "BatchNorm after every convolution (vgg16_bn when True)"),
    Key("ghost_batch_size", int,
        "Ghost batch normalisation in training: each run of this many consecutive images of a "
        "device's batch is normalised with its own mean and variance (a regulariser; the "
        "moving statistics, inference and checkpoints are unchanged); in training it must "
        "divide batch_size; 0: the whole batch", check=not_negative),
    Key("pad_mode", str, "Convolution padding mode", choices=("same", "pad")),
    Key("padding", int, "Convolution padding when pad_mode is 'pad' (1 keeps the size)",
        check=not_negative),
    Key("has_bias", bool, "Convolutions carry a bias"),
    Key("initialize_mode", str, "Weight initialiser of convolutions and dense layers",
        choices=("XavierUniform", "KaimingNormal")),
    Key("identity_init", bool,
        "Partial identity (Dirac) start for the convolutions: after initialize_mode's draw, "
        "the first min(in, out) filters of each pass their own input channel through "
        "unchanged, so a layer with as many outputs as inputs starts as the identity "
        "(stem_whitening and pre_trained weights replace it where they apply)"),
    Key("head", str,
        "Classifier head: mlp (upstream and torchvision: dense 4096, dense 4096, dense to the "
        "classes); linear (one dense layer from the flattened features to the classes, the "
        "usual head on 32x32 CIFAR-10 images, where the features are 512 values; has_dropout "
        "does not apply, and torchvision weights give only its features)",
        choices=("mlp", "linear")),
    Key("logit_scale", float,
        "Constant factor on the network's logits (1: none), e.g. 0.125 as in the fast "
        "CIFAR-10 recipes: the loss sees softer logits, so the head must grow its weights to "
        "reach the same confidence; part of the network, so evaluation and exported models "
        "apply it too; the top-1 of given weights is unchanged", check=positive),
    Key("activation", str,
        "Activation after every convolution (+ BatchNorm) and hidden dense layer: relu; gelu "
        "(the exact, erf GELU); both run in the native CPU chains; no parameters, so weights "
        "load either way (but were trained for one)",
        choices=("relu", "gelu")),
    Key("has_dropout", bool, "Dropout (p=0.5) in the classifier during training"),
    Key("image_size", list,
        "Network input height,width (multiples of 32); images are resized to it",
        check=vgg_image_size, item=int),
    Key("native_kernels", str,
        "CPU graph mode through the project's native oneDNN kernels (convolution, "
        "BatchNorm+activation, pooling, optimizer): auto (when built), on, off; the environment "
        "variable VGG_NATIVE_KERNELS=0 turns them off (old key name: fast_conv)",
        choices=("auto", "on", "off"), old_names=("fast_conv",)),
    Key("cpu_precision", str,
        "CPU compute precision: float32; bfloat16 (convolutions, BatchNorm+activation, "
        "pooling and dense layers computed in bfloat16 by the native oneDNN kernels on "
        "AVX512-BF16/AMX; weights, optimizer state, BatchNorm statistics and loss stay float32, "
        "checkpoints are unchanged, no loss scale is needed); auto: bfloat16 where the CPU has "
        "AVX512-BF16 or AMX-BF16 and the native kernels run, else float32. Where bfloat16 cannot "
        "run, float32 is used and one log line says why (amp_level applies to GPU/Ascend only)",
        choices=("float32", "bfloat16", "auto")),

    # optimisation
    Key("lr", float,
        "Peak learning rate of the multistep, cosine_annealing, cosine and linear schedules",
        check=not_negative),
    Key("lr_init", float, "Learning rate at the start of warmup (quadratic/step schedule)",
        check=not_negative),
    Key("lr_max", float, "Peak learning rate after warmup (quadratic/step schedule)",
        check=not_negative),
    Key("lr_epochs", list,
        "Epochs at which the multistep (exponential) schedule multiplies the rate by lr_gamma",
        check=increasing, item=int),
    Key("lr_scheduler", str,
        "quadratic (upstream: step): warmup lr_init->lr_max, then lr_max*(1-progress)^2; "
        "multistep (upstream: exponential): warmup to lr, then x lr_gamma at each of lr_epochs; "
        "cosine_annealing: warmup to lr, then cosine per epoch over T_max epochs; "
        "cosine / linear: warmup to lr, then a per-step cosine / straight line down to eta_min "
        "at the end of the run (for short runs)",
        choices=("step", "quadratic", "exponential", "multistep", "cosine_annealing", "cosine",
                 "linear")),
    Key("lr_gamma", float, "Factor of the multistep (exponential) schedule at each of lr_epochs"),
    Key("eta_min", float,
        "Final learning rate of the cosine_annealing, cosine and linear schedules",
        check=not_negative),
    Key("T_max", int,
        "Length in epochs of the cosine_annealing decay (cosine and linear span the whole run)",
        check=at_least_1),
    Key("warmup_epochs", int,
        "Epochs of linear warmup (a YAML value above max_epoch is cut to max_epoch with a "
        "warning)",
        check=not_negative),
    Key("warmup_steps", int,
        "cosine/linear: warmup in optimizer steps instead of warmup_epochs (0: unset; not with "
        "warmup_fraction)",
        check=not_negative),
    Key("warmup_fraction", float,
        "cosine/linear: warmup as a fraction of the run's steps, in [0, 1), instead of "
        "warmup_epochs (0: unset; not with warmup_steps)",
        check=fraction),
    Key("batch_size", int, "Images per step and device", check=at_least_1),
    Key("max_epoch", int, "Number of training epochs", check=at_least_1),
    Key("momentum", float, "SGD momentum", check=not_negative),
    Key("nesterov", bool, "Nesterov momentum (on CPU in the native optimizer kernel too)"),
    Key("weight_decay", float,
        "Weight decay of convolution and dense weights (not BatchNorm, not biases)",
        check=not_negative),
    Key("loss_scale", float,
        "Loss scale (fixed value, or initial value when loss_scale_type is dynamic)",
        check=positive),
    Key("loss_scale_type", str, "fixed or dynamic loss scaling", choices=("fixed", "dynamic")),
    Key("amp_level", str, "Mixed precision level (O0: float32; O2/O3: float16 on GPU/Ascend)",
        choices=("O0", "O2", "O3")),
    Key("label_smooth", bool, "Use label smoothing"),
    Key("label_smooth_factor", float, "Label smoothing factor", check=smoothing_factor),

    # training toolbox
    Key("clip_grad_norm", float,
        "Clip the global L2 norm of all gradients (after loss-scale unscaling and averaging "
        "over devices and accumulation steps) to this value (0: off)",
        check=not_negative),
    Key("accumulate_steps", int,
        "Batches whose gradients are summed into one optimizer step: global batch = "
        "batch_size x accumulate_steps x devices; the schedule counts optimizer steps",
        check=at_least_1),
    Key("ema_decay", float,
        "Exponential moving average of the weights (BatchNorm statistics included) with this "
        "decay per optimizer step, e.g. 0.999; evaluated, saved as ema.* and <arch>-ema.ckpt "
        "(0: off)",
        check=fraction),
    Key("ema_warmup", bool,
        "Ramp the EMA decay up as min(ema_decay, (1 + n) / (10 + n)) after n updates"),
    Key("lookahead_steps", int,
        "Lookahead: every this many optimizer steps of an epoch, and at the end of each epoch, "
        "slow weights move lookahead_alpha of the way to the trained weights, which then "
        "restart from them; saved as lookahead.* (0: off)",
        check=not_negative),
    Key("lookahead_alpha", float,
        "Lookahead: fraction of the way the slow weights move at each synchronisation",
        check=unit_interval),
    Key("stem_whitening", int,
        "Set the first convolution from the covariance of the 3x3 patches of this many "
        "training images (the first ones in file order): eigenvectors scaled to whiten, with "
        "both signs, the largest first, in as many filters as it has (54 of VGG's 64); the "
        "convolution is then frozen (0: off)",
        check=not_negative),
    Key("freeze_bn_scale", bool,
        "Training: keep every BatchNorm scale (gamma) at its start value (1, or pre_trained's) "
        "instead of training it, as the fast CIFAR-10 recipes do; needs batch_norm"),
    Key("bn_bias_lr_scale", float,
        "Training: learning-rate factor of the BatchNorm shifts (beta), which carry no weight "
        "decay; e.g. 16 or 64 together with freeze_bn_scale (1: the rate of the rest)",
        check=positive),
    Key("mixup_alpha", float, "Mixup: Beta(alpha, alpha) mixing of batch pairs (0: off)",
        check=not_negative),
    Key("cutmix_alpha", float, "CutMix: Beta(alpha, alpha) box pasting between batch pairs "
        "(0: off)", check=not_negative),
    Key("mix_prob", float, "Probability that a batch is mixed when mixup or CutMix is on",
        check=probability),
    Key("mix_switch_prob", float,
        "Probability of CutMix instead of mixup when both are on", check=probability),

    # data
    Key("dataset", str, "Dataset layout", choices=("cifar10", "imagenet2012")),
    Key("data_dir", str,
        "Dataset root (CIFAR-10: holds cifar-10-batches-bin/ and cifar-10-verify-bin/; "
        "ImageNet: a folder of class sub-folders, or one holding ilsvrc/ and "
        "validation_preprocess/)"),
    Key("data_list", str,
        "ImageNet text mode: file of 'relative/path.jpg label' lines under data_dir"),
    Key("eval_data_dir", str, "Evaluation data for eval_interval (defaults to data_dir)"),
    Key("num_workers", int, "Data loading workers (0: from the number of cores)",
        check=not_negative),
    Key("skip_corrupt", bool, "Skip and count corrupt images instead of stopping"),
    Key("auto_augment", str,
        "Training augmentation policy after crop and flip: none, randaugment (2 ops, "
        "magnitude 9), trivialaugment (TrivialAugmentWide) or autoaugment (the dataset's "
        "policy)",
        choices=("none", "randaugment", "trivialaugment", "autoaugment")),
    Key("random_erasing", float,
        "Probability of erasing one random rectangle of a training image (0: off)",
        check=probability),
    Key("crop_padding", int,
        "CIFAR-10 training: pixels of padding on each side before the random 32x32 crop "
        "(0: no crop, flip only)", check=not_negative),
    Key("crop_padding_mode", str,
        "CIFAR-10 training: what fills the crop_padding border: zero (black, upstream's) or "
        "reflect (the image mirrored at its edge, as eval_tta_shift's shifted views are)",
        choices=("zero", "reflect")),
    Key("alternate_flip", bool,
        "CIFAR-10 training: mirror a fixed random half of the images in even epochs and the "
        "other half in odd epochs, instead of each image at random (every image is seen both "
        "ways over two epochs)"),
    Key("no_aug_epochs", int,
        "The last this many epochs train on the images as they are, flip only: no random crop "
        "(CIFAR-10), auto_augment, random_erasing, mixup or CutMix (ImageNet keeps its random "
        "resized crop); 0: augment to the end", check=not_negative),

    # distributed
    Key("is_distributed", bool, "Data-parallel training over all launched processes"),
    Key("is_save_on_master", bool, "Only rank 0 writes checkpoints"),
    Key("sync_bn", bool,
        "BatchNorm statistics over all devices of a distributed job (GPU/Ascend; not on CPU)"),

    # checkpoints, resume, logging
    Key("pre_trained", str,
        "Checkpoint to start from (train) or to evaluate (eval: file or folder)"),
    Key("reinit_classifier", bool,
        "Fine-tuning: re-create the last classifier layer when its shape differs, and the "
        "whole classifier when the checkpoint has the other head"),
    Key("freeze_features", bool, "Fine-tuning: keep the convolutional feature extractor fixed"),
    Key("features_lr_scale", float, "Fine-tuning: learning-rate factor of the feature extractor"),
    Key("ckpt_path", str, "Folder that receives the run folders (checkpoints, logs, metrics)"),
    Key("ckpt_interval", int, "Save a checkpoint every this many epochs (and at the end)",
        check=at_least_1),
    Key("keep_checkpoint_max", int, "Number of newest checkpoints kept", check=at_least_1),
    Key("resume", str, "Checkpoint to resume from, or 'auto' for the newest in the run folder"),
    Key("log_interval", int, "Steps between progress lines", check=at_least_1),
    Key("eval_interval", int, "Evaluate every this many epochs during training (0: never)",
        check=not_negative),
    Key("eval_flip_tta", bool,
        "Evaluation: average the softmax of each image and its horizontal flip"),
    Key("eval_tta_shift", int,
        "Evaluation: also score each image moved by this many pixels down-right and up-left "
        "(reflected border), weights 1/2 as is and 1/4 per shift, each with its flip when "
        "eval_flip_tta is on (0: off)", check=not_negative),
    Key("eval_shift_in_training", bool,
        "Evaluation during training also scores the eval_tta_shift views (False: only eval.py "
        "does; the per-epoch evaluations keep to flip TTA and take about a third of the time)"),

    # export and inference
    Key("ckpt_file", str, "Export: checkpoint to export"),
    Key("file_name", str, "Export: output file name (without extension)"),
    Key("file_format", str, "Export: file format", choices=("MINDIR", "AIR", "ONNX")),
    Key("export_batch_size", int, "Export: batch size of the exported graph", check=at_least_1),
    Key("result_path", str, "Inference: folder of preprocessed inputs and results"),
    Key("label_path", str, "Inference: label file written by preprocess.py"),
)

SCHEMA = {key.name: key for key in KEYS}
OLD_NAMES = {old: key.name for key in KEYS for old in key.old_names}
