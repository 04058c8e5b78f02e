"""The EMA of a training run (ema_decay): the averages (src/ema.py) updated after each
optimizer step, resumed with the training checkpoint that holds them, written alone beside
it as <arch>-ema.ckpt, and swapped into the network to be evaluated; and the slow weights of
Lookahead (lookahead_steps, src/lookahead.py), which the checkpoint holds beside them."""


def ema_from_config(config, net):
    """A WeightEMA of net when ema_decay is set, else None."""
    if not config.get("ema_decay", 0.0):
        return None
    from src.ema import WeightEMA

    return WeightEMA(net, config.ema_decay, config.get("ema_warmup", False))


def lookahead_from_config(config, net):
    """A Lookahead of net's trainable parameters when lookahead_steps is set, else None."""
    if not config.get("lookahead_steps", 0):
        return None
    from src.lookahead import Lookahead

    return Lookahead(net, config.lookahead_steps, config.get("lookahead_alpha", 0.5))


def training_state(train_step, ema, lookahead=None):
    """The cell a training checkpoint holds: the train step (network, optimizer, loss scale,
    accumulated gradients) and, with EMA, the averages (``ema.*``), with Lookahead, the slow
    weights (``lookahead.*``)."""
    if ema is None and lookahead is None:
        return train_step
    from mindspore import nn

    state = nn.Cell(auto_prefix=False)
    state.train_step = train_step
    if ema is not None:
        state.ema = ema
    if lookahead is not None:
        state.lookahead = lookahead
    return state


class TrainingEMA:
    """The averaged weights beside the raw ones; every method is a no-op (or says there is
    nothing) when ema_decay is 0, so the loop need not ask."""

    def __init__(self, config, net):
        self.averages = ema_from_config(config, net)  # a WeightEMA, or None

    @property
    def on(self):
        return self.averages is not None

    def update(self):
        """Fold the weights of the optimizer step just taken into the averages."""
        if self.on:
            self.averages()

    def save(self, checkpoints, position):
        """The averages alone under the network's names (<arch>-ema.ckpt), for eval.py and
        export.py; checkpoints: a TrainingCheckpoints."""
        if self.on:
            checkpoints.save_weights(self.averages.weights_only(), "ema", position)

    def evaluate(self, count):
        """count() run with the averages in the network (the raw weights back afterwards,
        bit for bit)."""
        with self.averages.applied():
            return count()

    def chosen_weights(self, net):
        """The weights a best checkpoint holds: the averages when on, else net's own."""
        return self.averages.weights_only() if self.on else net
