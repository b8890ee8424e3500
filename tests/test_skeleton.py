import numpy as np

from pipeline.pose.skeleton import COCO17_NAMES, OP18_NAMES, coco17_to_op18


def test_coco_to_op18_maps_by_name_and_synthesises_neck():
    xy = np.array([[10 * i + 1, 5 * i + 2] for i in range(17)], float)
    score = np.linspace(0.5, 0.9, 17)
    x, y, s = coco17_to_op18(xy, score)
    for op, name in enumerate(OP18_NAMES):
        if name == "neck":
            continue
        c = COCO17_NAMES.index(name)
        assert (x[op], y[op]) == (xy[c, 0], xy[c, 1]), name
    ls, rs = COCO17_NAMES.index("left_shoulder"), COCO17_NAMES.index("right_shoulder")
    assert x[1] == round((xy[ls, 0] + xy[rs, 0]) / 2) and y[1] == round((xy[ls, 1] + xy[rs, 1]) / 2)
    assert s[1] == min(score[ls], score[rs])
    assert OP18_NAMES[2] == "right_shoulder" and x[2] == xy[rs, 0]


def test_missing_shoulder_means_no_neck_and_minus_one():
    xy = np.full((17, 2), 50.0)
    score = np.ones(17)
    score[COCO17_NAMES.index("left_shoulder")] = 0
    x, y, s = coco17_to_op18(xy, score)
    assert x[1] == -1 and y[1] == -1 and s[1] == 0
    assert x[5] == -1 and (x[[0, 2, 3]] == 50).all()
