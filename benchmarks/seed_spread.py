"""How far one recipe's held-out accuracy moves with the seed, from cpu_recipe.py's result files.

    python benchmarks/seed_spread.py --out benchmarks/results/cifar10_cpu_10ep_seeds.json \
        [--same=--activation=gelu] [--target 0.90] RESULT.json [RESULT.json ...]

Each RESULT.json is one run of benchmarks/cpu_recipe.py. The runs must be of one recipe: the
same epochs, training and held-out images, and the same training overrides once `--seed=N` is
left out (--same names an override that is the config's own value, so that a run that spelled
it out still counts as the config as it stands). Writes, for each evaluation (eval.py's score,
with its shifted views, and flip TTA alone, the score after the last epoch), the per-seed
values, their mean, sample standard deviation and standard error of the mean, and how many
runs reach --target.
"""
import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cpu_recipe  # noqa: E402  (path set just above; puts the repository on sys.path too)
import machine  # noqa: E402

CONFIG = os.path.join(machine.REPO_ROOT, cpu_recipe.CONFIG)  # the config the runs trained with


class SpreadError(Exception):
    pass


def config_seed(path=CONFIG):
    """The seed a run without --seed=N used: the config's own `seed`."""
    from model_utils.config import load_yaml

    return int(load_yaml(path)[0]["seed"])


def seed_and_recipe(result, same, default_seed):
    """(seed, the recipe's overrides without the seed and without those in `same`). The seed is
    the one the result recorded (cpu_recipe.py writes it from the run's config.yaml); results
    written before it did take it from a --seed=N override, else from `default_seed`."""
    override, rest = None, []
    for item in result.get("overrides", []):
        if item.startswith("--seed="):
            override = int(item.split("=", 1)[1])
        elif item not in same:
            rest.append(item)
    recorded = result.get("seed")
    if None not in (recorded, override) and recorded != override:
        raise SpreadError(f"recorded seed {recorded} is not the --seed={override} of its "
                          "overrides")
    seed = next(s for s in (recorded, override, default_seed) if s is not None)
    return int(seed), tuple(sorted(rest))


def spread(values, target):
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"values": values, "n": len(values), "mean": round(mean, 5), "stdev": round(sd, 5),
            "standard_error": round(sd / len(values) ** 0.5, 5), "min": min(values),
            "max": max(values), "at_or_above_target": sum(v >= target for v in values)}


def summarise(paths, same=(), target=0.90):
    """The spread of the runs in `paths` (see the module docstring)."""
    runs, recipe, shape = [], None, None
    default_seed = config_seed()
    for path in paths:
        try:
            with open(path, encoding="utf-8") as handle:
                result = json.load(handle)
            run_shape = (result["epochs"], result["train_images"], result["holdout_images"])
            shifts, flip = result["holdout_top1"], result["holdout_top1_after_each_epoch"][-1]
        except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
            raise SpreadError(f"{path}: not a cpu_recipe.py result ({err})") from None
        try:
            seed, run_recipe = seed_and_recipe(result, same, default_seed)
        except SpreadError as err:
            raise SpreadError(f"{path}: {err}") from None
        if recipe is None:
            recipe, shape = run_recipe, run_shape
        elif run_recipe != recipe:
            raise SpreadError(f"{path}: another recipe than {paths[0]} (overrides "
                              f"{list(run_recipe)} against {list(recipe)})")
        elif run_shape != shape:
            raise SpreadError(f"{path}: another run length than {paths[0]} (epochs, training "
                              f"and held-out images {run_shape} against {shape})")
        if any(seed == other["seed"] for other in runs):
            raise SpreadError(f"{path}: seed {seed} is there twice")
        runs.append({"file": os.path.basename(path), "seed": seed, "shifts": shifts, "flip": flip})
    if not runs:
        raise SpreadError("no result files given")
    runs.sort(key=lambda r: r["seed"])
    return {"what": "one recipe over several seeds: held-out top-1 of cpu_recipe.py runs",
            "epochs": shape[0], "train_images": shape[1], "holdout_images": shape[2],
            "overrides_besides_seed": list(recipe), "same_as_config": list(same),
            "target": target, "runs": runs,
            "eval_py_with_shifts": spread([r["shifts"] for r in runs], target),
            "flip_tta": spread([r["flip"] for r in runs], target)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+")
    parser.add_argument("--out", required=True)
    parser.add_argument("--same", action="append", default=[])
    parser.add_argument("--target", type=float, default=0.90)
    args = parser.parse_args(argv)
    try:
        summary = summarise(args.results, tuple(args.same), args.target)
    except SpreadError as err:
        print(f"seed_spread.py: {err}", file=sys.stderr)
        return 2
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=1)
        handle.write("\n")
    for name in ("eval_py_with_shifts", "flip_tta"):
        s = summary[name]
        print(f"{name}: {s['n']} seeds, mean {s['mean']:.2%}, sd {s['stdev']:.2%}, "
              f"se {s['standard_error']:.2%}, {s['min']:.2%}-{s['max']:.2%}, "
              f"{s['at_or_above_target']} at or above {args.target:.0%}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
