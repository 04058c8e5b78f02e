"""Evaluate a checkpoint, a folder of checkpoints or an exported ONNX model:
python eval.py --config_path=cifar10_config.yaml --data_dir=DATA --pre_trained=CKPT_OR_DIR_OR_ONNX

CIFAR-10 prints `result: {'acc': ...}`; ImageNet prints the upstream `after allreduce eval:`
lines for top-1 and top-5. With --is_distributed=1 (msrun, scripts/run_eval.sh) every rank
evaluates its shard and the counts are summed, so the numbers equal a single-process run.
A folder is evaluated checkpoint by checkpoint in epoch order and the best one is named.
"""
import os

from model_utils.entry import run_with_config
from src import checkpoint as ckpt
from src.class_names import find_class_names, read_class_names
from src.cli import run_entry
from src.errors import UserError
from src.evaluation import allreduce_counts, evaluate, tta_options
from src.factory import build_dataset, build_network, model_name
from src.progress import setup_logger
from src.runtime import setup_runtime


def checkpoints_to_evaluate(path):
    """One checkpoint, or a folder's: `<prefix>-<epoch>_<step>.ckpt` in epoch order, then any
    other .ckpt files (such as `<prefix>-best.ckpt`) by name."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise UserError(f"pre_trained: {path} is neither a checkpoint file nor a folder")
    numbered = ckpt.list_checkpoints(path)
    others = sorted(os.path.join(path, name) for name in os.listdir(path)
                    if name.endswith(".ckpt") and not name.startswith(".")
                    and os.path.join(path, name) not in numbered)
    found = numbered + others
    if not found:
        raise UserError(f"pre_trained: folder {path} holds no .ckpt files")
    return found


def check_arch(entries, path, config):
    """A clearer message than missing parameters when the checkpoint names its variant."""
    stored = ckpt.checkpoint_meta(entries).get("arch")
    wanted = model_name(config)
    if stored and stored != wanted:
        raise UserError(f"checkpoint {path} holds {stored}, but the config builds {wanted}; "
                        "set --arch and --batch_norm to match the checkpoint")


def result_lines(config, counts, source):
    """The upstream result line(s) of one evaluation."""
    if config.dataset == "cifar10":
        lines = [f"result: {dict(acc=counts.acc)} ckpt={source}"]
    else:
        lines = [f"after allreduce eval: top1_correct={counts.top1}, tot={counts.total}, "
                 f"acc={100 * counts.acc:.2f}%",
                 f"after allreduce eval: top5_correct={counts.top5}, tot={counts.total}, "
                 f"acc={100 * counts.acc5:.2f}%"]
    return lines


def throughput_line(counts, runtime):
    where = f" on rank {runtime.rank} of {runtime.group_size}" if runtime.group_size > 1 else ""
    return (f"eval speed{where}: {counts.total} images in {counts.seconds:.2f} s, "
            f"{counts.images_per_second:.1f} images/s")


def warm_up(net, dataset):
    """Compile the graph for the first batch shape so that throughput is inference time."""
    import mindspore as ms

    net.set_train(False)
    for image, _ in dataset.create_tuple_iterator(num_epochs=1):
        net(ms.Tensor(image))
        break


def evaluate_checkpoints(config, runtime, paths):
    """[(path, counts)] for every checkpoint, counts summed over ranks."""
    net = build_network(config, runtime.device_target)
    results = []
    for index, path in enumerate(paths):
        entries = ckpt.read_checkpoint(path)
        check_arch(entries, path, config)
        ckpt.load_weights(net, entries, path)
        del entries
        dataset = build_dataset(config, training=False, runtime=runtime)
        if index == 0:
            warm_up(net, dataset)
            dataset = build_dataset(config, training=False, runtime=runtime)
        local = evaluate(net, dataset, **tta_options(config))
        counts = allreduce_counts(local, runtime.group_size)
        results.append((path, counts))
        report(config, runtime, counts, local, path, class_names_for(config, path))
    return results


def evaluate_onnx_file(config, runtime, path):
    from src.onnx_eval import evaluate_onnx, load_onnx_model

    model = load_onnx_model(path, config.image_size)
    local = evaluate_onnx(model, build_dataset(config, training=False, runtime=runtime),
                          **tta_options(config))
    counts = allreduce_counts(local, runtime.group_size)
    report(config, runtime, counts, local, path, class_names_for(config, path))
    return [(path, counts)]


def class_lines(counts, names):
    """Top-1 accuracy per class, by name."""
    width = max(len(name) for name in names)
    return [f"  {name:<{width}}  {hits / total:.4f} ({hits}/{total})" if total else
            f"  {name:<{width}}  no images"
            for name, hits, total in zip(names, counts.class_top1, counts.class_total)]


def report(config, runtime, counts, local, source, names=None):
    if runtime.is_master:
        for line in result_lines(config, counts, source):
            print(line, flush=True)
        if names:
            print("top-1 accuracy per class:", flush=True)
            for line in class_lines(counts, names):
                print(line, flush=True)
    print(throughput_line(local, runtime), flush=True)


def class_names_for(config, source):
    """Names from class_names.json beside the checkpoint (or one folder up), if any."""
    path = find_class_names(source)
    return read_class_names(path, config.num_classes) if path else None


def run_eval(config):
    if not config.pre_trained:
        raise UserError("pre_trained: eval.py needs --pre_trained=PATH, a checkpoint file, "
                        "a folder of checkpoints or an exported .onnx model")
    source = os.path.abspath(config.pre_trained)
    if not os.path.exists(source):
        raise UserError(f"pre_trained: {source} does not exist")
    runtime = setup_runtime(config.device_target, config.device_id, config.context_mode,
                            config.is_distributed, seed=config.seed)
    setup_logger(None, runtime.rank)  # rank 0's console: the precision line, warnings
    if source.lower().endswith(".onnx"):
        return evaluate_onnx_file(config, runtime, source)
    results = evaluate_checkpoints(config, runtime, checkpoints_to_evaluate(source))
    if len(results) > 1 and runtime.is_master:
        # the earliest of equally good checkpoints: the others add training, not accuracy
        best_path, best = max(results, key=lambda item: item[1].acc)
        print(f"best: {best_path} (top-1 acc {best.acc:.4f}, top-5 acc {best.acc5:.4f}, "
              f"{len(results)} checkpoints evaluated)", flush=True)
    return results


def main():
    run_with_config(run_eval)


if __name__ == "__main__":
    run_entry(main)
