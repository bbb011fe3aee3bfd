import numpy as np
import pytest

from skelact.layouts import LAYOUTS, Layout, get_layout


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_layout_is_a_tree_rooted_at_the_centre(name):
    lay = get_layout(name)
    v = lay.num_joints
    assert len(lay.edges) == v - 1
    assert all(0 <= a < v and 0 <= b < v for edge in lay.edges for a, b in [edge])
    assert lay.parents[lay.center] == lay.center
    for joint in range(v):  # walking up the parents reaches the centre in fewer than V steps
        j, steps = joint, 0
        while j != lay.center:
            j, steps = lay.parents[j], steps + 1
            assert steps < v
    # connected: a traversal over the undirected edges visits every joint
    nbrs = {j: set() for j in range(v)}
    for a, b in lay.edges:
        nbrs[a].add(b)
        nbrs[b].add(a)
    seen, todo = {lay.center}, [lay.center]
    while todo:
        for n in nbrs[todo.pop()] - seen:
            seen.add(n)
            todo.append(n)
    assert seen == set(range(v))
    assert lay.channels == 3


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_bone_pairs_and_mirror(name):
    lay = get_layout(name)
    pairs = lay.bone_pairs
    assert len(pairs) == lay.num_joints
    assert [v for v, _ in pairs] == list(range(lay.num_joints))
    assert dict(pairs)[lay.center] == lay.center
    assert {(c, p) for c, p in pairs if c != p} == set(lay.edges)
    perm = lay.mirror_permutation()
    assert sorted(perm) == list(range(lay.num_joints))
    np.testing.assert_array_equal(perm[perm], np.arange(lay.num_joints))
    for a, b in lay.left_right:
        assert perm[a] == b and perm[b] == a
        assert lay.joint_names[a].replace("left", "right") == lay.joint_names[b]


def test_published_facts():
    assert get_layout("ntu25").num_joints == 25 and get_layout("ntu25").center == 20
    assert get_layout("ucla20").num_joints == 20 and get_layout("ucla20").center == 2
    assert get_layout("coco17").num_joints == 17 and get_layout("openpose18").num_joints == 18
    # NTU 1-based edge (23, 8): left thumb hangs off the left hand
    assert (22, 7) in get_layout("ntu25").edges
    assert get_layout("ucla20").index("hip_center") == 0
    lay = get_layout("ntu25")
    assert get_layout(lay) is lay


def _make(**kw):
    base = dict(name="t", joint_names=("a", "b", "c"), edges=((1, 0), (2, 1)), center=0, left_right=())
    return Layout(**{**base, **kw})


def test_small_valid_layout():
    lay = _make(left_right=((1, 2),))
    assert lay.parents == (0, 0, 1)
    np.testing.assert_array_equal(lay.mirror_permutation(), [0, 2, 1])


@pytest.mark.parametrize("kw, match", [
    (dict(edges=((1, 0),)), "tree"),                        # joint 2 unreachable
    (dict(edges=((1, 0), (2, 1), (1, 2))), "two parents"),  # too many edges
    (dict(edges=((1, 0), (2, 3))), "out of range"),
    (dict(edges=((1, 2), (2, 1))), "cycle"),                # cycle that never reaches the root
    (dict(edges=((0, 1), (2, 1))), "root"),                 # the centre given a parent
    (dict(center=5), "centre"),
    (dict(joint_names=("a", "a", "c")), "duplicate"),
    (dict(left_right=((1, 1),)), "left/right"),
    (dict(left_right=((1, 9),)), "left/right"),
])
def test_bad_layouts_rejected(kw, match):
    with pytest.raises(ValueError, match=match):
        _make(**kw)


def test_unknown_layout_name():
    from skelact.errors import SkelactError
    with pytest.raises(SkelactError, match="unknown layout"):
        get_layout("nope")
