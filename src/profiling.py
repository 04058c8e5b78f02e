"""enable_profiling: MindSpore's profiler over a bounded window of training steps, stepped by
the batches the training loop takes from its datasets."""
import contextlib
import os

# Steps recorded, after the first (graph-compiling) step and one warm-up step.
PROFILE_STEPS = 10

ACTIVITIES = {"CPU": ("CPU",), "GPU": ("CPU", "GPU"), "Ascend": ("CPU", "NPU")}


def profile_window(steps):
    """(skip_first, warmup, active) for a run of `steps` steps: skip the compiling first step
    and warm up for one when the run is long enough, then record up to PROFILE_STEPS."""
    skip = 1 if steps >= 3 else 0
    warmup = 1 if steps - skip >= 2 else 0
    return skip, warmup, min(PROFILE_STEPS, steps - skip - warmup)


class SteppedDataset:
    """A dataset whose tuple iterator calls on_step() once per batch, after the batch has been
    used: when the loop asks for the next one, or when the epoch ends."""

    def __init__(self, dataset, on_step):
        self._dataset = dataset
        self._on_step = on_step

    def __getattr__(self, name):
        return getattr(self._dataset, name)

    def create_tuple_iterator(self, *args, **kwargs):
        used = False
        for row in self._dataset.create_tuple_iterator(*args, **kwargs):
            if used:
                self._on_step()
            used = True
            yield row
        if used:
            self._on_step()


class StepProfiler:
    """`wrap` the training datasets, then run the training loop inside `recording(steps)`; the
    profile goes to <folder>/rank<rank>_<pid>_<time>_ascend_ms (MindSpore's layout, on every
    device).
    """

    def __init__(self, folder, rank, device_target, log):
        self.folder, self.rank, self.device_target, self.log = folder, rank, device_target, log
        self._profile = None

    def wrap(self, dataset):
        return SteppedDataset(dataset, self.step)

    def step(self):
        if self._profile is not None:
            self._profile.step()

    @contextlib.contextmanager
    def recording(self, steps):
        """Profiles the window profile_window(steps) of the `steps` steps run inside."""
        if steps < 1:
            yield
            return
        self._profile = self._start(*profile_window(steps))
        try:
            yield
        finally:
            self._profile.stop()
            self._profile = None
            self._report()

    def _start(self, skip, warmup, active):
        from mindspore import profiler

        self.log.info("profiling steps %d-%d of this run into %s", skip + warmup + 1,
                      skip + warmup + active, self.folder)
        return profiler.profile(
            activities=[profiler.ProfilerActivity[a] for a in ACTIVITIES[self.device_target]],
            schedule=profiler.schedule(wait=0, warmup=warmup, active=active, repeat=1,
                                       skip_first=skip),
            on_trace_ready=profiler.tensorboard_trace_handler(self.folder,
                                                              worker_name=f"rank{self.rank}"))

    def _report(self):
        written = self.written()
        if written:
            self.log.info("profile written to %s", written[-1])
        else:
            self.log.info("the profiler wrote nothing to %s (see MindSpore's messages above)",
                          self.folder)

    def written(self):
        """This rank's profile folders, oldest first."""
        if not os.path.isdir(self.folder):
            return []
        names = sorted(n for n in os.listdir(self.folder)
                       if n.startswith(f"rank{self.rank}_") and n.endswith("_ascend_ms"))
        return [os.path.join(self.folder, n) for n in names]
