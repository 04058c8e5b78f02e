"""compare_runs.py: the per-epoch table and plot of several runs' metrics.csv, with runs of
other lengths and batch sizes lined up by epoch, and one-line refusals of bad inputs."""
import pytest

from src.errors import UserError
from src.progress import MetricsCSV
from tests.helpers import run_python


def write_run(folder, steps_per_epoch, top1, ema=None, log_every=2, first_epoch=1):
    """A metrics.csv as train.py writes it: loss/lr rows every `log_every` steps and at each
    epoch's end, then that epoch's evaluation row; from `first_epoch` on (a run resumed into
    a new folder)."""
    folder.mkdir(parents=True)
    metrics = MetricsCSV(str(folder / "metrics.csv"))
    for epoch, acc in enumerate(top1, start=first_epoch):
        end = epoch * steps_per_epoch
        for step in [*range(end - steps_per_epoch + log_every, end, log_every), end]:
            metrics.add(epoch=epoch, global_step=step, loss=2.0 / step, lr=0.01 * step,
                        images_per_sec=10.0)
        row = {"eval_top1": acc, "eval_top5": 1.0}
        if ema:
            row["ema_top1"] = ema[epoch - first_epoch]
        metrics.add(epoch=epoch, global_step=end, **row)
    return folder


def plotted_figure(tmp_path, monkeypatch, n_runs):
    """The matplotlib figure plot_runs draws for runs r0..r{n_runs-1}, caught as it closes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from src.run_compare import load_runs, plot_runs

    folders = [str(write_run(tmp_path / f"r{i}", 4, [0.5, 0.6 + i / 100])) for i in range(n_runs)]
    closed = []
    monkeypatch.setattr(plt, "close", closed.append)
    plot_runs(load_runs(folders), str(tmp_path / "cmp.png"))
    return closed[0]


def test_table_lines_up_epochs_of_runs_of_other_lengths(tmp_path):
    import compare_runs

    short = write_run(tmp_path / "short", 4, [0.5, 0.625])
    long = write_run(tmp_path / "long", 10, [0.25, 0.5, 0.75], ema=[0.3, 0.55, 0.8])
    out = tmp_path / "plots" / "cmp.png"
    runs = compare_runs.main([str(short), f"big={long / 'metrics.csv'}", f"--out={out}"])
    assert [run.label for run in runs] == ["short", "big"]
    assert runs[0].top1() == {1: 50.0, 2: 62.5}
    assert runs[1].top1(ema=True) == pytest.approx({1: 30.0, 2: 55.0, 3: 80.0})
    # steps become epochs with each run's own epoch length
    assert [runs[0].epoch_position(r) for r in runs[0].train][:3] == [0.5, 1.0, 1.5]
    assert runs[1].epoch_position(runs[1].train[-1]) == 3.0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from src.run_compare import accuracy_table

    lines = accuracy_table(runs).splitlines()
    assert lines[0] == "| epoch | short | big |"
    assert lines[2:] == ["| 1 | 50.00 | 25.00 |", "| 2 | 62.50 | 50.00 |",
                         "| 3 |  | 75.00 |", "| best | 62.50 (epoch 2) | 75.00 (epoch 3) |"]


@pytest.mark.parametrize("evaluated", [True, False])
def test_run_resumed_into_a_new_folder_keeps_its_epochs(tmp_path, evaluated):
    from src.run_compare import load_runs

    folder = write_run(tmp_path / "resumed", 10, [0.5, 0.6], first_epoch=2)
    if not evaluated:  # loss rows only: the epoch length from the end of epoch 2
        text = (folder / "metrics.csv").read_text().splitlines()
        kept = [r for r in text if r.split(",")[2]]  # rows with a loss: no evaluation rows
        (folder / "metrics.csv").write_text("\n".join(kept) + "\n")
    run = load_runs([str(folder)])[0]
    assert run.steps_per_epoch == 10
    assert [run.epoch_position(r) for r in run.train][:2] == [1.2, 1.4]
    assert run.epoch_position(run.train[-1]) == 3.0


def test_run_still_in_its_first_epoch_spans_one_epoch(tmp_path):
    from src.run_compare import load_runs

    folder = tmp_path / "fresh"
    folder.mkdir()
    metrics = MetricsCSV(str(folder / "metrics.csv"))
    for step in (5, 10, 15):
        metrics.add(epoch=1, global_step=step, loss=1.0, lr=0.1)
    run = load_runs([str(folder)])[0]
    assert run.top1() == {}
    assert [run.epoch_position(r) for r in run.train] == pytest.approx([1 / 3, 2 / 3, 1.0])


def test_refusals_name_the_culprit(tmp_path):
    from src.run_compare import load_runs

    with pytest.raises(UserError, match="no such metrics file"):
        load_runs([str(tmp_path / "missing")])
    other = tmp_path / "other.csv"
    other.write_text("epoch,step,accuracy\n1,10,0.5\n")
    with pytest.raises(UserError, match="other.csv: not a metrics.csv.*no column 'global_step'"):
        load_runs([str(other)])
    run = write_run(tmp_path / "a", 2, [0.5])
    with pytest.raises(UserError, match="label 'a' is given twice"):
        load_runs([str(run), f"a={run}"])
    broken = write_run(tmp_path / "b", 2, [0.5])
    (broken / "metrics.csv").write_text(
        "epoch,global_step,loss,lr,images_per_sec,eval_top1\n1,two,0.5,0.1,1,\n")
    with pytest.raises(UserError, match="unreadable metrics.csv"):
        load_runs([str(broken)])
    (broken / "metrics.csv").write_text(
        "epoch,global_step,loss,lr,images_per_sec,eval_top1\n1,2,0.5,0.1,1,,7\n")
    with pytest.raises(UserError, match="a row of epoch 1 has more fields than the header"):
        load_runs([str(broken)])


def test_plot_format_is_checked_before_any_work(tmp_path, capsys):
    import compare_runs

    with pytest.raises(UserError, match=r"out: .*table.txt must end in .png"):
        compare_runs.main([str(tmp_path / "missing"), f"--out={tmp_path / 'table.txt'}"])
    assert capsys.readouterr().out == ""


def test_command_line_error_is_one_line_and_exit_1(tmp_path):
    result = run_python("compare_runs.py", str(tmp_path / "nowhere"), "--out", tmp_path / "x.png")
    assert result.returncode == 1
    missing = tmp_path / "nowhere"
    assert result.stderr.strip().splitlines() == [
        f"error: {missing}: no such metrics file (give a run folder or its metrics.csv)"]
    assert not (tmp_path / "x.png").exists()


def test_more_than_ten_runs_stay_distinguishable_in_the_plot(tmp_path, monkeypatch):
    """matplotlib has ten colours: the eleventh run on must differ by marker and dashes."""
    top1, loss, _ = plotted_figure(tmp_path, monkeypatch, 12).axes
    styles = {(line.get_color(), line.get_marker(), line.get_linestyle()) for line in top1.lines}
    assert len(top1.lines) == len(styles) == 12
    assert len({(line.get_color(), line.get_linestyle()) for line in loss.lines}) == 12


def test_one_legend_beside_the_panels_names_each_run_once(tmp_path, monkeypatch):
    """Twenty runs' legends inside the panels hid the curves: one legend, outside the panels."""
    fig = plotted_figure(tmp_path, monkeypatch, 20)
    assert all(axis.get_legend() is None for axis in fig.axes)
    (legend,) = fig.legends
    assert [text.get_text() for text in legend.get_texts()] == [f"r{i}" for i in range(20)]
    fig.canvas.draw()
    right_of_panels = max(axis.get_window_extent().x1 for axis in fig.axes)
    assert legend.get_window_extent().x0 >= right_of_panels
