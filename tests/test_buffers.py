"""``fastnewton.buffers.Recycler``: an array is handed out again only once nothing else refers to it."""
import copy
import pickle

import numpy as np

from fastnewton.buffers import Recycler


def test_an_array_no_longer_referenced_is_handed_out_again():
    recycler = Recycler()
    first = recycler.empty(5)
    address = first.ctypes.data
    del first
    again = recycler.empty(5)
    assert again.ctypes.data == address and again.shape == (5,) and again.dtype == np.float64


def test_an_array_still_referenced_directly_or_through_a_view_is_not_handed_out():
    recycler = Recycler()
    held = recycler.empty((4, 3))
    view = recycler.empty((4, 3))[:, 1:]
    other = recycler.empty((4, 3))
    assert len({held.ctypes.data, view.base.ctypes.data, other.ctypes.data}) == 3
    held[:] = 1.0
    view[:] = 2.0
    del other
    recycler.empty((4, 3))[:] = 7.0
    assert np.all(held == 1.0) and np.all(view == 2.0)


def test_shapes_are_kept_apart_and_integers_of_any_kind_are_shapes():
    recycler = Recycler()
    vector = recycler.empty(np.int64(6))
    assert vector.shape == (6,)
    del vector
    assert recycler.empty((6, 1)).shape == (6, 1)
    assert recycler.empty(6).shape == (6,)


def test_a_copy_or_a_pickle_holds_no_arrays():
    recycler = Recycler()
    recycler.empty(3)
    for other in (copy.copy(recycler), copy.deepcopy(recycler), pickle.loads(pickle.dumps(recycler))):
        assert isinstance(other, Recycler) and other._arrays == {}
