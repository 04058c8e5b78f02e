"""Top-k counting, the one ranking that eval.py, ONNX evaluation, postprocess.py and predict.py
share: the k highest scores, ties going to the lower class index, k capped at the class count."""
import numpy as np

from src.evaluation import EvalCounts, count_hits, top_k_indices, topk_correct

# rows: a clear winner; a tie for first (classes 1 and 2); all equal; label 6 sixth of 7
LOGITS = np.array([[0, 5, 1, 2, 3, 4, 0.5],
                   [0, 9, 9, 1, 2, 3, 4],
                   [1, 1, 1, 1, 1, 1, 1],
                   [6, 5, 4, 3, 2, 1, 0]], np.float32)


def test_ties_go_to_the_lower_class_index():
    assert top_k_indices(LOGITS, 3).tolist() == [[1, 5, 4], [1, 2, 6], [0, 1, 2], [0, 1, 2]]
    assert top_k_indices(LOGITS[0], 2).tolist() == [1, 5]  # one image's scores (predict.py)
    assert top_k_indices(LOGITS[:, :2], 5).shape == (4, 2)  # k capped at the class count


def test_counts_follow_the_ranking():
    # label ranks 0, 1 (the tie goes to class 1), 5 (all equal: classes 0-4 first) and 5
    labels = np.array([1, 2, 5, 5])
    assert count_hits(LOGITS, labels) == (1, 2)
    assert topk_correct(LOGITS, labels, 1) == 1 and topk_correct(LOGITS, labels, 5) == 2
    assert topk_correct(LOGITS, labels, 6) == 4
    # 3 classes: "top-5" is top-3, every label is in it
    assert count_hits(LOGITS[:, :3], np.array([1, 2, 0, 2])) == (2, 4)


def test_per_class_counts():
    counts = EvalCounts()
    logits = np.array([[3, 1, 0], [0, 2, 1], [0, 3, 1], [1, 0, 0]], np.float32)
    counts.add_batch(logits, np.array([0, 1, 2, 2]))
    assert (counts.top1, counts.total) == (2, 4)
    assert counts.class_total.tolist() == [1, 1, 2]
    assert counts.class_top1.tolist() == [1, 1, 0]


def test_in_training_evaluation_leaves_out_the_shifted_views_only_when_asked(monkeypatch):
    """eval_shift_in_training=False: the per-epoch evaluations score flip TTA alone, while
    eval.py's options (tta_options) keep the configured shift; True passes the shift on."""
    from model_utils.config import Config
    from src import training_eval
    from src.evaluation import tta_options

    seen = []

    def fake_evaluate(net, dataset, **options):
        seen.append(options)
        return EvalCounts()

    monkeypatch.setattr(training_eval, "evaluate", fake_evaluate)
    for in_training in (True, False):
        config = Config({"eval_flip_tta": True, "eval_tta_shift": 2,
                         "eval_shift_in_training": in_training})
        evaluator = training_eval.TrainingEvaluator(config, None, lambda: None, 1, None, None,
                                                    None)
        evaluator._counts()
        assert tta_options(config) == {"flip_tta": True, "tta_shift": 2}
    assert seen == [{"flip_tta": True, "tta_shift": 2}, {"flip_tta": True, "tta_shift": 0}]
